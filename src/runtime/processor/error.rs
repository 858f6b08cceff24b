//! What can stop a step, classed (retry / abort / fatal) so the processor decides uniformly.

use super::ledger;
use crate::kafka::codec::CodecError;
use crate::error::ErrorClass;
use crate::jobs::JobError;
use crate::kafka::KafkaClientError;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis refused the configured credentials: waiting will not help.
    #[error("redis authentication failed: {0} (check redis.username / redis.password)")]
    RedisAuth(#[source] redis::RedisError),
    /// Redis' TLS certificate did not verify: waiting will not help.
    #[error("redis TLS handshake failed: the server's certificate did not verify (check redis.ca_file and redis.host)")]
    RedisTls(#[source] redis::RedisError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("job `{job}`: {source}")]
    Job { job: String, source: JobError },
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<sqlx::Error> for ProcessorError {
    fn from(e: sqlx::Error) -> Self {
        ProcessorError::Db(crate::db::DbError::Query(e))
    }
}

impl ProcessorError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProcessorError::Kafka(e) => e.class(),
            ProcessorError::Codec(e) => e.class(),
            ProcessorError::Ledger(ledger::LedgerError::Timeout(_)) => ErrorClass::Retry,
            ProcessorError::Ledger(ledger::LedgerError::Kafka(e)) => e.class(),
            ProcessorError::Db(e) => e.class(),
            ProcessorError::Redis(_) | ProcessorError::Task(_) => ErrorClass::Retry,
            ProcessorError::RedisAuth(_) | ProcessorError::RedisTls(_) | ProcessorError::Config(_) => ErrorClass::Fatal,
            ProcessorError::Job { source, .. } => source.class(),
        }
    }
}

