//! Kafka client plumbing shared by every command: the rdkafka `ClientConfig` derived from
//! [`Settings`](crate::config::Settings), the error classification every caller uses to
//! decide between retrying, aborting the transaction and stopping (with the one "topic does
//! not exist" error), and [`read`], the bounded reads of a topic up to its end.
//!
//! Delivery guarantee: none by itself; this module only builds clients. Offsets are never
//! auto-committed by clients made here (`enable.auto.commit=false`): the processor commits
//! them only inside its transactions, and tools such as `tail` need no group at all.

pub mod codec;
pub mod read;
pub mod schema_rules;
pub mod schemas;
pub mod topics;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

use crate::config::Settings;
use crate::error::ErrorClass;

/// What a client is for; each role gets the defaults it needs before pass-through properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// A consumer that reads only committed records and never commits offsets itself.
    Consumer,
    /// An idempotent producer (the transactional id is added by the caller).
    Producer,
}

/// Builds the client configuration for `role`: the tool's defaults first, then every
/// `kafka.properties` entry so an operator can override any of them (SASL, TLS, timeouts).
pub fn client_config(settings: &Settings, role: Role) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &settings.kafka.bootstrap_servers);
    let suffix = match role {
        Role::Admin => "admin",
        Role::Consumer => "consumer",
        Role::Producer => "producer",
    };
    cfg.set("client.id", format!("{}-{}", settings.kafka.client_id, suffix));
    match role {
        Role::Admin => {}
        Role::Consumer => {
            cfg.set("isolation.level", "read_committed");
            // Offsets move only inside transactions (processor) or not at all (tools).
            cfg.set("enable.auto.commit", "false");
            cfg.set("enable.auto.offset.store", "false");
            cfg.set("enable.partition.eof", "false");
        }
        Role::Producer => {
            cfg.set("enable.idempotence", "true");
            cfg.set("acks", "all");
            cfg.set("linger.ms", "5");
            // The Java clients' key hashing, so records keyed alike (a job's ticks) land on
            // the same partition whichever client — ours or an external tick producer —
            // wrote them. Pass-through properties below can still override it.
            cfg.set("partitioner", "murmur2_random");
        }
    }
    for (k, v) in &settings.kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// A Kafka failure at a module edge, with the class that tells the caller what to do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    /// librdkafka refused a property: a configuration mistake, named.
    #[error("invalid Kafka client configuration: {0} (check kafka.properties / SJ_KAFKA_PROP_*)")]
    Config(String),
    #[error("kafka {operation}: {source}")]
    Kafka { operation: &'static str, source: KafkaError },
    /// The broker rejected the client's credentials.
    #[error("kafka authentication failed: {0} (check sasl.mechanism, sasl.username and sasl.password in kafka.properties / SJ_KAFKA_PROP_*)")]
    Authentication(String),
    /// The TLS handshake with a broker failed: most often its certificate did not verify
    /// (unknown CA, a host name it was not issued for), which no retry fixes.
    #[error("kafka TLS handshake failed: {0} (check security.protocol and ssl.ca.location in kafka.properties / SJ_KAFKA_PROP_*)")]
    Tls(String),
    /// A topic a command needs is not in the cluster (or has no partitions). `hint` is what
    /// the command suggests: [`RUN_TOPICS_APPLY`] for the tool's own topics; `tail` and
    /// `replay` take the topic from the operator (it may be a typo, or not ours), so they
    /// suggest less.
    #[error("topic `{topic}` does not exist{hint}")]
    NoSuchTopic { topic: String, hint: &'static str },
    /// A blocking librdkafka call did not return within its own timeout plus a grace period
    /// (librdkafka does not always hold it); the transactional producer is given up: a running
    /// processor replaces it and redoes the transaction, one starting up stops with this error.
    #[error("kafka {operation}: no answer from librdkafka within {after:?}; the transactional producer is given up")]
    Stuck { operation: &'static str, after: std::time::Duration },
    /// A commit got no answer within its watch: whether it committed is unknown, so redoing
    /// its records in this process could emit them twice.
    #[error("kafka commit transaction: no answer from librdkafka within {after:?}; whether it committed is unknown, so this process stops and its successor resumes from the committed offsets")]
    CommitUnknown { after: std::time::Duration },
    /// This many producers given up as stuck are still blocked in librdkafka (each holds a
    /// thread): the process stops for its supervisor to start a fresh one.
    #[error("{0} transactional producers given up as stuck are still blocked in librdkafka; stopping so that a fresh process takes over")]
    TooManyStuck(usize),
    /// The thread that makes the producer's blocking calls could not be started.
    #[error("cannot start the transaction thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The fix for a missing topic of the tool's own: `topics apply` creates every one.
pub const RUN_TOPICS_APPLY: &str = " (run `scheduled-jobs topics apply`)";

impl KafkaClientError {
    pub fn kafka(operation: &'static str, source: KafkaError) -> Self {
        KafkaClientError::Kafka { operation, source }
    }

    /// [`KafkaClientError::NoSuchTopic`] for one of the tool's own topics.
    pub fn no_such_topic(topic: impl Into<String>) -> Self {
        KafkaClientError::NoSuchTopic { topic: topic.into(), hint: RUN_TOPICS_APPLY }
    }

    /// A missing topic is fatal here; a caller that knows better (the tick producer while a
    /// restarting broker loads its logs) re-classes it.
    pub fn class(&self) -> ErrorClass {
        match self {
            KafkaClientError::Config(_)
            | KafkaClientError::Authentication(_)
            | KafkaClientError::Tls(_)
            | KafkaClientError::NoSuchTopic { .. }
            | KafkaClientError::TooManyStuck(_)
            | KafkaClientError::CommitUnknown { .. }
            | KafkaClientError::Thread(_) => ErrorClass::Fatal,
            KafkaClientError::Stuck { .. } => ErrorClass::Retry,
            KafkaClientError::Kafka { source, .. } => classify(source),
        }
    }
}

/// Classes an rdkafka error: transaction errors carry librdkafka's own verdict; transport
/// and broker-side transient codes are retried; everything else is fatal for the caller.
pub fn classify(e: &KafkaError) -> ErrorClass {
    if let Some(rd) = e.rdkafka_error_code() {
        if matches!(
            rd,
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        ) {
            return ErrorClass::Fatal;
        }
    }
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => ErrorClass::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => ErrorClass::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => ErrorClass::Retry,
        _ => match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::ConcurrentTransactions
                | RDKafkaErrorCode::RebalanceInProgress
                // A delivery that outlived message.timeout.ms (a partition leaderless through
                // a broker failover): the transaction is aborted and redone.
                | RDKafkaErrorCode::MessageTimedOut
                // Deliveries librdkafka purged because their transaction failed (an abortable
                // error while a broker restarts; seen in the long fault profile, 2026-12-01):
                // the same. Should the producer itself be unusable, the abort says so.
                | RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight,
            ) => ErrorClass::Retry,
            _ => ErrorClass::Fatal,
        },
    }
}

/// Creates a client of type `T`, turning librdkafka's property errors into [`KafkaClientError::Config`].
pub fn create<T: FromClientConfig>(cfg: &ClientConfig) -> Result<T, KafkaClientError> {
    cfg.create().map_err(creation_error)
}

/// [`create`], for a client with a context of its own.
pub fn create_with_context<C: ClientContext, T: FromClientConfigAndContext<C>>(cfg: &ClientConfig, context: C) -> Result<T, KafkaClientError> {
    cfg.create_with_context(context).map_err(creation_error)
}

fn creation_error(e: KafkaError) -> KafkaClientError {
    match e {
        KafkaError::ClientConfig(_, ref desc, ref key, _) => KafkaClientError::Config(format!("property `{key}`: {desc}")),
        other => KafkaClientError::kafka("create client", other),
    }
}

/// The context of the start-up metadata client: keeps librdkafka's text of the last client
/// error, which rdkafka hands only to the context (the error a poll returns keeps just the
/// code, e.g. "SSL", not "certificate verify failed"), and logs it as rdkafka's default does.
#[derive(Default)]
struct LastErrorContext {
    last: std::sync::Mutex<Option<String>>,
}

impl ClientContext for LastErrorContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
        if let Ok(mut last) = self.last.lock() {
            *last = Some(format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for LastErrorContext {}

impl LastErrorContext {
    /// The text of the error just polled, or `fallback`'s.
    fn reason(&self, fallback: &KafkaError) -> String {
        self.last.lock().ok().and_then(|mut l| l.take()).unwrap_or_else(|| fallback.to_string())
    }
}

pub fn admin(settings: &Settings) -> Result<AdminClient<DefaultClientContext>, KafkaClientError> {
    create(&client_config(settings, Role::Admin))
}

pub fn admin_options(timeout: Duration) -> AdminOptions {
    AdminOptions::new().request_timeout(Some(timeout)).operation_timeout(Some(timeout))
}

/// Cluster metadata for all topics (or one), waiting up to `timeout` for a broker. Rejected
/// credentials are reported as [`KafkaClientError::Authentication`] and a failed TLS
/// handshake as [`KafkaClientError::Tls`] (both fatal), not as the transport failure the
/// request itself ends with. `run`, `tick`, `trigger`, `topics apply` and `tail` start with it.
pub fn metadata(settings: &Settings, topic: Option<&str>, timeout: Duration) -> Result<Metadata, KafkaClientError> {
    let consumer: BaseConsumer<LastErrorContext> =
        client_config(settings, Role::Admin).create_with_context(LastErrorContext::default()).map_err(creation_error)?;
    consumer.fetch_metadata(topic, timeout).map_err(|e| {
        // The reason arrives only as error events on the client's queue (one per distinct
        // failure; a TLS failure may first show as a transport failure).
        for _ in 0..20 {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Err(ev))
                    if matches!(
                        ev.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
                    ) =>
                {
                    return KafkaClientError::Authentication(consumer.context().reason(&ev));
                }
                // librdkafka's own text names the cause ("SSL handshake failed: ... certificate
                // verify failed: broker certificate could not be verified, verify that
                // ssl.ca.location is correctly configured ...").
                Some(Err(ev)) if ev.rdkafka_error_code() == Some(RDKafkaErrorCode::SSL) => {
                    return KafkaClientError::Tls(consumer.context().reason(&ev));
                }
                Some(_) => {}
                None => break,
            }
        }
        KafkaClientError::kafka("fetch metadata", e)
    })
}

/// The partition ids of `topic` as `client` sees them; empty if it does not exist (or is
/// unavailable), for the caller to name.
pub fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaClientError> {
    let md = client.fetch_metadata(Some(topic), timeout).map_err(|e| KafkaClientError::kafka("fetch metadata", e))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default())
}

/// [`partitions_of`], naming a missing topic: [`KafkaClientError::NoSuchTopic`] with `hint`.
pub fn existing_partitions<C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
    hint: &'static str,
) -> Result<Vec<i32>, KafkaClientError> {
    let partitions = partitions_of(client, topic, timeout)?;
    if partitions.is_empty() {
        return Err(KafkaClientError::NoSuchTopic { topic: topic.to_string(), hint });
    }
    Ok(partitions)
}

/// Lets librdkafka judge every pass-through property once at start-up, so a typo fails fast
/// naming `kafka.properties.<name>` instead of at the first connection.
pub fn check_properties(settings: &Settings) -> Result<(), crate::config::ConfigError> {
    match client_config(settings, Role::Consumer).set("group.id", "scheduled-jobs-config-check").create::<BaseConsumer>() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(_, desc, key, _)) => Err(crate::config::ConfigError::Invalid {
            setting: format!("kafka.properties.{key}"),
            message: desc,
        }),
        Err(e) => Err(crate::config::ConfigError::Invalid { setting: "kafka.properties".into(), message: e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery that failed with its transaction is redone after the reset path's abort; a
    /// producer that is fenced or unusable stops the process.
    #[test]
    fn failed_deliveries_are_retried_and_a_fenced_producer_is_fatal() {
        for code in [RDKafkaErrorCode::MessageTimedOut, RDKafkaErrorCode::PurgeQueue, RDKafkaErrorCode::PurgeInflight] {
            assert_eq!(classify(&KafkaError::MessageProduction(code)), ErrorClass::Retry, "{code:?}");
        }
        for code in [RDKafkaErrorCode::ProducerFenced, RDKafkaErrorCode::Fenced, RDKafkaErrorCode::Fatal] {
            assert_eq!(classify(&KafkaError::MessageProduction(code)), ErrorClass::Fatal, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)), ErrorClass::Fatal);
    }
}
