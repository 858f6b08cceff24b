//! Typed, layered configuration: built-in defaults for the local stack, then an optional
//! TOML file, then `SJ_*` environment variables (highest precedence).
//!
//! Nested settings use `__` in environment names (`SJ_KAFKA__BOOTSTRAP_SERVERS` sets
//! `kafka.bootstrap_servers`). Any librdkafka client property passes through, either in the
//! file's `[kafka.properties]` table or as `SJ_KAFKA_PROP_<NAME>` where `_` stands for `.`
//! (`SJ_KAFKA_PROP_SASL_MECHANISM=SCRAM-SHA-512` sets `sasl.mechanism`). Secrets are held in
//! [`SecretString`] and client properties that look secret are redacted by [`Settings::redacted`],
//! so neither `config show` nor an error message ever prints them.
//!
//! Validation happens here, at start-up, so a bad value fails fast with the setting's name
//! instead of surfacing later as a connection error deep inside a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the tool reads.
pub const ENV_PREFIX: &str = "SJ_";
/// Prefix of environment variables that pass a librdkafka property through.
pub const KAFKA_PROP_ENV_PREFIX: &str = "SJ_KAFKA_PROP_";
/// Configuration file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "scheduled-jobs.toml";
/// `scheduler.time_zone` unless configured: the seed's times are the shop's local times in
/// Seoul (stock-sync's 02:00 is when traffic is lowest there; "yesterday" is Seoul's), see
/// docs/decisions/2026-11-29-default-time-zone.md.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Seoul";

/// A setting that is missing or has a value the tool cannot use. Always fatal: the process
/// stops before touching Kafka, the registry or the databases.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid setting `{setting}`: {message}")]
    Invalid { setting: String, message: String },
}

impl ConfigError {
    fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { setting: setting.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub registry: RegistrySettings,
    pub redis: RedisSettings,
    pub postgres: PostgresSettings,
    pub topics: TopicsSettings,
    pub schemas: SchemasSettings,
    pub scheduler: SchedulerSettings,
    pub processor: ProcessorSettings,
    pub metrics: MetricsSettings,
    pub console: ConsoleSettings,
    /// Per-job settings, keyed by job name with `_` for `-` (`order_expiration`), so they
    /// can be set from the environment (`SJ_JOBS__ORDER_EXPIRATION__BATCH_SIZE=500`).
    pub jobs: BTreeMap<String, JobSettings>,
}

/// The tick producer (`scheduled-jobs tick`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// IANA time zone the cron schedules (and "yesterday") are read in; default
    /// [`DEFAULT_TIME_ZONE`], the seed's.
    pub time_zone: String,
    /// Name of this producer instance, written into each tick (diagnostics only).
    pub producer_id: String,
}

/// The processor (`scheduled-jobs run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorSettings {
    /// Consumer group of all processor instances.
    pub group_id: String,
    /// Prefix of each instance's `transactional.id` (the instance id is appended).
    pub transactional_id_prefix: String,
    /// Stable id of this instance (e.g. the pod name); empty: host name + the lowest slot free
    /// on this host (`runtime::instance`), so a restart on the same host fences its predecessor.
    pub instance_id: String,
    /// Ticks scheduled further than this in the future are dead letters (impossible values).
    pub max_future_secs: u64,
    /// Kafka transaction timeout (`transaction.timeout.ms`): how long one transaction may stay
    /// open (begin, send the records of the records it groups, commit; their effects and
    /// preparation come before it begins).
    /// Also how long readers of a partition wait, at worst, behind the open transaction of an
    /// instance frozen or killed without a successor (plus the broker's abort scan, 10 s by
    /// default).
    pub transaction_timeout_ms: u64,
    /// How often the instance holding partition 0 of the tick topic accounts for the fire
    /// times of every scheduled job (records MISSED the ones no tick came for).
    pub accounting_interval_ms: u64,
    /// How many of a batch's next work items have their effects (SQL, Redis) started while
    /// the current one is applied, each on a connection of its own; 0: one chunk at a time.
    /// Kafka still sees every record in order. More overlaps more round trips of small chunks
    /// and holds more connections (keep it below `postgres.max_connections`).
    pub effects_ahead: u32,
    /// At most this many consumed records share one Kafka transaction. Records prepared while
    /// the previous transaction commits go together in the next one (each with its own
    /// offset; a failure redoes them all), so the per-transaction cost is shared when records
    /// come fast and nothing waits when they are rare. A transaction never carries more than
    /// 10,000 records (a record alone above that goes alone). 1: one transaction per record.
    pub records_per_transaction: u32,
    /// How long a transaction may wait to begin for records of the same batch still being
    /// prepared, so that they share it (within `records_per_transaction` and 10,000 records).
    /// A record that comes alone, or the last of its batch, never waits. Each transaction
    /// costs the broker and the commit round trips the same whatever it carries, so chunks
    /// that take a little longer than a commit each (order-expiration at batch 1,000) share
    /// a few transactions instead of one each. 0: never wait.
    pub transaction_linger_ms: u64,
    /// A run planned as one chunk is applied in its tick's own transaction (one hop from tick
    /// to run result instead of two or three); its chunk is recorded in PostgreSQL first, so a
    /// retry of the tick applies the same chunk. Runs of more chunks, and runs of jobs with
    /// `overlap = buffer_one | buffer_all`, always go through the work-items topic. false:
    /// every run does.
    pub inline_one_chunk_runs: bool,
    /// How long the group consumer may hold no assignment (since it joined, or since its
    /// partitions were revoked) before the processor joins again with a new consumer. With
    /// static membership (`instance_id`), librdkafka's consumer can stay out of the group for
    /// good after a session timeout (confluentinc/librdkafka#3437; seen in the long fault
    /// profile). An empty assignment counts as one. 0: never.
    pub assignment_wait_ms: u64,
    /// How long the processor may handle the records of one poll before it polls the group
    /// consumer again. A rebalance waits for every member to poll (the eager protocol revokes
    /// in the poll), so this bounds how long a busy member keeps the whole group without
    /// partitions — plus, at worst, one record's handling, the records whose effects were
    /// already running ahead (`effects_ahead`: they ran meanwhile, and stopping them would
    /// waste their work) and the commit of what was handled. Records left when it runs out are
    /// committed up to there and the rest are sought back and consumed again after the poll;
    /// a poll takes about as many records as the recent time per record lets fit, so that is
    /// rare. 0: a poll takes up to 256 records and handles them all.
    pub batch_budget_ms: u64,
}

/// The HTTP endpoint of `run` and `tick`: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// `host:port` to serve on; empty: no endpoint. Port 0 picks a free port (logged).
    pub listen: String,
    /// Consumer groups whose lag to export, as comma-separated `group:topic` pairs (topic
    /// names as in topics/; the prefix is added), e.g.
    /// `analytics:daily.statistics,notification:order.expiration.notification`; each
    /// instance exports the same whole-group lag (`consumer_group_lag`, read with max). The
    /// processor's own group is always exported, per partition by the instance holding it
    /// (`consumer_partition_lag`, read with sum).
    pub downstream_groups: String,
    /// How often the processor measures consumer-group lag.
    pub lag_interval_secs: u64,
}

/// The operator console (`scheduled-jobs console`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// `ip:port` to serve on; loopback by default.
    pub listen: String,
    /// The user name of HTTP basic authentication, and who the console's actions are logged
    /// and recorded as (`<username> (console)`).
    pub username: String,
    /// The password of HTTP basic authentication. Unset: the pages are readable without
    /// logging in and every action is refused.
    #[serde(serialize_with = "serialize_secret_opt")]
    pub password: Option<SecretString>,
    /// Also serve the console from `run` (a processor), on `listen`, for a deployment that
    /// wants one process less. Off by default: one console per processor fleet is enough.
    pub in_run: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings { listen: "127.0.0.1:9470".into(), username: "operator".into(), password: None, in_run: false }
    }
}

pub use crate::jobs::settings::{CatchUp, JobSettings, Overlap};

/// Every job of [`crate::jobs::catalog`] with the defaults it declares, keyed by settings key.
pub fn default_jobs() -> BTreeMap<String, JobSettings> {
    crate::jobs::catalog().iter().map(|j| (job_key(j.name()), j.defaults())).collect()
}

/// Whether the job of settings key `key` is off unless a configuration enables it: a test
/// job such as `noop`, not part of a production configuration.
pub fn off_by_default(key: &str) -> bool {
    crate::jobs::catalog().iter().any(|j| job_key(j.name()) == key && !j.defaults().enabled)
}

/// Job name (`order-expiration`) to settings key (`order_expiration`).
pub fn job_key(job: &str) -> String {
    job.replace('-', "_")
}

pub use crate::wire::Topic;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers` of every client.
    pub bootstrap_servers: String,
    /// `client.id` prefix; each client appends its role.
    pub client_id: String,
    /// Any librdkafka property, applied after the tool's own (so it can override them).
    pub properties: BTreeMap<String, String>,
    /// How long `tick` keeps retrying at start-up when the broker reports the tick topic
    /// unknown before failing: a restarting broker does so until it has loaded its logs.
    pub missing_topic_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Base URL of the Confluent-compatible API (Apicurio: `.../apis/ccompat/v7`), no trailing slash.
    pub url: String,
    pub username: Option<String>,
    #[serde(serialize_with = "serialize_secret_opt")]
    pub password: Option<SecretString>,
    /// Request timeout in milliseconds.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    #[serde(serialize_with = "serialize_secret_opt")]
    pub password: Option<SecretString>,
    /// `rediss://` (TLS) instead of `redis://`; the server's certificate is verified, host
    /// name included, against the system's CAs or `ca_file`.
    pub tls: bool,
    /// PEM file of the CA certificate(s) that issued the server's certificate, trusted instead
    /// of the system's store (a private CA). Needs `tls`.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    #[serde(serialize_with = "serialize_secret")]
    pub password: SecretString,
    pub database: String,
    /// libpq `sslmode`: disable, allow, prefer, require, verify-ca, verify-full.
    pub sslmode: String,
    /// libpq `sslrootcert`: PEM file of the CA certificate(s) the server's certificate is
    /// checked against under verify-ca / verify-full (otherwise the system's store).
    pub sslrootcert: Option<PathBuf>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsSettings {
    /// Folder holding one `<topic>.toml` per topic.
    pub dir: PathBuf,
    /// Overlay applied to every topic, e.g. `topics/overrides/single-broker.toml` (one replica)
    /// for the single local broker, which selects it explicitly (`scripts/services.sh env`).
    /// None by default (an empty path also means none): production gets each topic file's
    /// replication.
    pub overrides: Option<PathBuf>,
    /// Prepended to every topic name (and so to every subject): isolates environments
    /// sharing a cluster, and each test from the others.
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasSettings {
    /// Folder holding the `.avsc` files that `topics/*.toml` name.
    pub dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            redis: RedisSettings::default(),
            postgres: PostgresSettings::default(),
            topics: TopicsSettings::default(),
            schemas: SchemasSettings::default(),
            scheduler: SchedulerSettings::default(),
            processor: ProcessorSettings::default(),
            metrics: MetricsSettings::default(),
            console: ConsoleSettings::default(),
            jobs: default_jobs(),
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "scheduled-jobs".into(),
            properties: BTreeMap::new(),
            missing_topic_grace_secs: 120,
        }
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            url: "http://127.0.0.1:8081/apis/ccompat/v7".into(),
            username: None,
            password: None,
            timeout_ms: 10_000,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings { host: "127.0.0.1".into(), port: 6379, db: 0, username: None, password: None, tls: false, ca_file: None }
    }
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "scheduled_jobs".into(),
            password: SecretString::from("scheduled_jobs"),
            database: "scheduled_jobs".into(),
            sslmode: "prefer".into(),
            sslrootcert: None,
            max_connections: 10,
        }
    }
}

impl Default for TopicsSettings {
    fn default() -> Self {
        TopicsSettings {
            dir: "topics".into(),
            overrides: None,
            prefix: String::new(),
        }
    }
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings { time_zone: DEFAULT_TIME_ZONE.into(), producer_id: String::new() }
    }
}

impl MetricsSettings {
    /// `downstream_groups` as (group, topic) pairs.
    pub fn downstream_pairs(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out = Vec::new();
        for pair in self.downstream_groups.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once(':') {
                Some((g, t)) if !g.trim().is_empty() && !t.trim().is_empty() => out.push((g.trim().to_string(), t.trim().to_string())),
                _ => {
                    return Err(ConfigError::invalid(
                        "metrics.downstream_groups",
                        format!("`{pair}` is not group:topic (e.g. analytics:daily.statistics)"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { listen: String::new(), downstream_groups: String::new(), lag_interval_secs: 15 }
    }
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            group_id: "scheduled-jobs-processor".into(),
            transactional_id_prefix: "scheduled-jobs".into(),
            instance_id: String::new(),
            max_future_secs: 86_400,
            transaction_timeout_ms: 30_000,
            accounting_interval_ms: 15_000,
            effects_ahead: 2,
            records_per_transaction: 100,
            transaction_linger_ms: 100,
            inline_one_chunk_runs: true,
            assignment_wait_ms: 120_000,
            batch_budget_ms: 2_000,
        }
    }
}

impl Default for SchemasSettings {
    fn default() -> Self {
        SchemasSettings { dir: "avro".into() }
    }
}

// Serializing exposes secrets: figment layers the defaults through serde. Anything meant for
// human eyes goes through `Settings::redacted`, which blanks them first.
fn serialize_secret<S: serde::Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}

fn serialize_secret_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v.expose_secret()),
        None => s.serialize_none(),
    }
}

/// What is printed in place of a secret.
pub const REDACTED: &str = "********";

/// Whether a librdkafka property holds a secret (passwords, keys, JAAS configs, tokens).
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "key.pem", "credentials"].iter().any(|s| n.contains(s))
}

impl Settings {
    /// Loads defaults ← file ← environment, then validates. `file` of `None` reads
    /// [`DEFAULT_CONFIG_FILE`] if it exists; an explicit file must exist.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// [`Settings::load`] with the environment given explicitly, so tests need not mutate
    /// the process environment.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::File { path: path.into(), message: "no such file".into() });
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        // Only variables with a `__` nest into sections: the flat `SJ_KAFKA_PORT`-style
        // variables belong to scripts/services.sh and must not be read as settings.
        let nested: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !k.starts_with(KAFKA_PROP_ENV_PREFIX) && k.contains("__"))
            .cloned()
            .collect();
        for (key, value) in nested {
            let path = key[ENV_PREFIX.len()..].to_ascii_lowercase().replace("__", ".");
            figment = figment.merge(Serialized::default(&path, value));
        }
        // Lossy: environment values are strings, and `"6543"` must still fill a port.
        let mut settings: Settings = figment.extract_lossy().map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        for (key, value) in env.iter().filter(|(k, _)| k.starts_with(KAFKA_PROP_ENV_PREFIX)) {
            let prop = key[KAFKA_PROP_ENV_PREFIX.len()..].to_ascii_lowercase().replace('_', ".");
            settings.kafka.properties.insert(prop, value.clone());
        }
        // An empty path (e.g. `SJ_TOPICS__OVERRIDES=""`) switches the overlay off.
        if settings.topics.overrides.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            settings.topics.overrides = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work. Kafka properties are checked by librdkafka
    /// itself when the first client is built (see `kafka::client_config`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.bootstrap_servers", "must name at least one host:port"));
        }
        for server in self.kafka.bootstrap_servers.split(',') {
            let server = server.trim();
            let ok = server.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::invalid(
                    "kafka.bootstrap_servers",
                    format!("`{server}` is not host:port"),
                ));
            }
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "metrics.listen",
                format!("`{}` is not an ip:port address (e.g. 0.0.0.0:9464)", self.metrics.listen),
            ));
        }
        self.metrics.downstream_pairs()?;
        if self.metrics.lag_interval_secs == 0 {
            return Err(ConfigError::invalid("metrics.lag_interval_secs", "must be at least 1"));
        }
        if self.kafka.client_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.client_id", "must not be empty"));
        }
        let url = reqwest::Url::parse(&self.registry.url)
            .map_err(|e| ConfigError::invalid("registry.url", format!("`{}` is not a URL: {e}", self.registry.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid("registry.url", "must be an http:// or https:// URL"));
        }
        if self.registry.url.ends_with('/') {
            return Err(ConfigError::invalid("registry.url", "must not end with `/` (paths are appended to it)"));
        }
        if self.registry.password.is_some() && self.registry.username.is_none() {
            return Err(ConfigError::invalid("registry.username", "is required when registry.password is set"));
        }
        if self.registry.timeout_ms == 0 {
            return Err(ConfigError::invalid("registry.timeout_ms", "must be greater than 0"));
        }
        if self.redis.port == 0 {
            return Err(ConfigError::invalid("redis.port", "must be between 1 and 65535"));
        }
        if let Some(ca) = &self.redis.ca_file {
            if !self.redis.tls {
                return Err(ConfigError::invalid("redis.ca_file", "is only used with redis.tls = true"));
            }
            readable_file("redis.ca_file", ca)?;
        }
        if self.postgres.port == 0 {
            return Err(ConfigError::invalid("postgres.port", "must be between 1 and 65535"));
        }
        if let Some(ca) = &self.postgres.sslrootcert {
            readable_file("postgres.sslrootcert", ca)?;
        }
        if !matches!(
            self.postgres.sslmode.as_str(),
            "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
        ) {
            return Err(ConfigError::invalid(
                "postgres.sslmode",
                format!(
                    "`{}` is not one of disable, allow, prefer, require, verify-ca, verify-full",
                    self.postgres.sslmode
                ),
            ));
        }
        if self.postgres.max_connections == 0 {
            return Err(ConfigError::invalid("postgres.max_connections", "must be greater than 0"));
        }
        self.time_zone()?;
        if self.processor.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("processor.group_id", "must not be empty"));
        }
        if self.processor.transaction_timeout_ms < 1000 {
            return Err(ConfigError::invalid("processor.transaction_timeout_ms", "must be at least 1000"));
        }
        if self.processor.accounting_interval_ms < 100 {
            return Err(ConfigError::invalid("processor.accounting_interval_ms", "must be at least 100"));
        }
        if !(1..=10_000).contains(&self.processor.records_per_transaction) {
            return Err(ConfigError::invalid("processor.records_per_transaction", "must be between 1 and 10000 (1: one transaction per record)"));
        }
        if self.processor.transaction_linger_ms > 5_000 {
            return Err(ConfigError::invalid("processor.transaction_linger_ms", "must be at most 5000 (0: never wait)"));
        }
        if self.processor.effects_ahead >= self.postgres.max_connections {
            return Err(ConfigError::invalid(
                "processor.effects_ahead",
                format!(
                    "{} chunks' effects ahead need as many PostgreSQL connections besides the current chunk's and the bookkeeping: lower it below postgres.max_connections = {}",
                    self.processor.effects_ahead, self.postgres.max_connections
                ),
            ));
        }
        let catalog = crate::jobs::catalog();
        for (key, job) in &self.jobs {
            let setting = |field: &str| format!("jobs.{key}.{field}");
            let Some(declared) = catalog.iter().find(|j| job_key(j.name()) == *key) else {
                let known: Vec<String> = catalog.iter().map(|j| job_key(j.name())).collect();
                return Err(ConfigError::invalid(format!("jobs.{key}"), format!("no such job (known: {})", known.join(", "))));
            };
            declared.check(job).map_err(|message| ConfigError::invalid(format!("jobs.{key}"), message))?;
            if !job.schedule.trim().is_empty() {
                crate::schedule::Schedule::parse(&job.schedule, self.time_zone()?)
                    .map_err(|e| ConfigError::invalid(setting("schedule"), e.to_string()))?;
            }
            if job.timeout_secs == 0 {
                return Err(ConfigError::invalid(setting("timeout_secs"), "must be greater than 0"));
            }
            if job.batch_size == 0 {
                return Err(ConfigError::invalid(setting("batch_size"), "must be greater than 0"));
            }
            if job.max_catch_up == 0 {
                return Err(ConfigError::invalid(setting("max_catch_up"), "must be at least 1"));
            }
            if job.missed_after_secs == 0 {
                return Err(ConfigError::invalid(setting("missed_after_secs"), "must be at least 1"));
            }
            if job.jitter_secs >= job.missed_after_secs {
                return Err(ConfigError::invalid(
                    setting("jitter_secs"),
                    format!(
                        "{} must be below jobs.{key}.missed_after_secs ({}): a tick published that late would already be recorded MISSED",
                        job.jitter_secs, job.missed_after_secs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The configured time zone.
    pub fn time_zone(&self) -> Result<chrono_tz::Tz, ConfigError> {
        self.scheduler.time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
            ConfigError::invalid(
                "scheduler.time_zone",
                format!("`{}` is not an IANA time zone (e.g. UTC, Asia/Seoul)", self.scheduler.time_zone),
            )
        })
    }

    /// The full name of `topic` (with `topics.prefix`).
    pub fn topic(&self, topic: Topic) -> String {
        format!("{}{}", self.topics.prefix, topic.base_name())
    }

    /// The jobs of this configuration, by settings key: all but the test jobs that are off by
    /// default and not enabled ([`off_by_default`]). What `config show` and the job lists of
    /// error messages show.
    pub fn listed_jobs(&self) -> impl Iterator<Item = (&String, &JobSettings)> {
        self.jobs.iter().filter(|(key, job)| job.enabled || !off_by_default(key))
    }

    /// A line saying which time zone the schedules and "yesterday" are read in, and where it
    /// comes from (for `config show` and the demo).
    pub fn time_zone_line(&self) -> String {
        let origin = if self.scheduler.time_zone == DEFAULT_TIME_ZONE {
            "the default, the seed's zone".to_string()
        } else {
            format!("configured; the default is {DEFAULT_TIME_ZONE}, the seed's zone")
        };
        format!("time zone: {} (scheduler.time_zone, {origin}): cron schedules and daily-statistics' \"yesterday\" are read in it", self.scheduler.time_zone)
    }

    /// Settings of `job` (by job name, e.g. `order-expiration`), if it is configured.
    pub fn job(&self, job: &str) -> Option<&JobSettings> {
        self.jobs.get(&job_key(job))
    }

    /// The settings as TOML with every secret replaced by [`REDACTED`], only the
    /// [`Settings::listed_jobs`], and a first comment line naming the time zone.
    pub fn redacted(&self) -> String {
        let mut shown = self.clone();
        shown.jobs = self.listed_jobs().map(|(key, job)| (key.clone(), job.clone())).collect();
        let blank = |p: &mut Option<SecretString>| {
            if p.is_some() {
                *p = Some(SecretString::from(REDACTED));
            }
        };
        blank(&mut shown.registry.password);
        blank(&mut shown.redis.password);
        blank(&mut shown.console.password);
        shown.postgres.password = SecretString::from(REDACTED);
        for (k, v) in shown.kafka.properties.iter_mut() {
            if is_secret_property(k) {
                *v = REDACTED.into();
            }
        }
        match toml::to_string_pretty(&shown) {
            Ok(t) => format!("# {}\n{t}", self.time_zone_line()),
            Err(e) => format!("# cannot render settings: {e}\n"),
        }
    }

    /// The Redis connection URL (holds the password: never log it). User name and password
    /// are percent-encoded, so any character (`@`, `:`, `/`, `%`) reaches the server as given.
    pub fn redis_url(&self) -> SecretString {
        let r = &self.redis;
        let scheme = if r.tls { "rediss" } else { "redis" };
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let auth = match (&r.username, &r.password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p.expose_secret())),
            (None, Some(p)) => format!(":{}@", enc(p.expose_secret())),
            (Some(u), None) => format!("{}@", enc(u)),
            (None, None) => String::new(),
        };
        SecretString::from(format!("{scheme}://{auth}{}:{}/{}", r.host, r.port, r.db))
    }

    /// A Redis client for [`Settings::redis_url`], trusting `redis.ca_file` when set. Only
    /// builds the client; nothing connects yet.
    pub fn redis_client(&self) -> Result<redis::Client, ConfigError> {
        let url = self.redis_url();
        let built = match &self.redis.ca_file {
            Some(ca) if self.redis.tls => {
                let root_cert = std::fs::read(ca)
                    .map_err(|e| ConfigError::invalid("redis.ca_file", format!("cannot read {}: {e}", ca.display())))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(url.expose_secret(), certs)
            }
            _ => redis::Client::open(url.expose_secret()),
        };
        // The crate's messages about a URL never include the password.
        built.map_err(|e| ConfigError::invalid(if self.redis.ca_file.is_some() { "redis.ca_file" } else { "redis" }, e.to_string()))
    }
}

/// A file named by `setting` must be readable now, not at the first connection.
fn readable_file(setting: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::invalid(setting, format!("cannot read {}: {e}", path.display())))
}

/// Figment names the offending key in its error; keep that but drop its internal profile prefix.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let mut msg = err.kind.to_string();
            if let Some(meta) = &err.metadata {
                if let Some(src) = &meta.source {
                    msg = format!("{msg} (from {src})");
                } else {
                    msg = format!("{msg} (from {})", meta.name);
                }
            }
            if key.is_empty() {
                msg
            } else {
                format!("setting `{key}`: {msg}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_fit_the_local_stack() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.postgres.port, 5432);
        assert_eq!(s.redis.port, 6379);
        assert_eq!(s.postgres.password.expose_secret(), "scheduled_jobs", "defaults survive layering unredacted");
    }

    #[test]
    fn built_in_defaults_take_each_topic_files_replication_and_the_overlay_is_opt_in() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.topics.overrides, None, "no overlay unless the local stack selects one");
        let specs = crate::kafka::topics::configured_specs(&s).unwrap();
        assert!(
            specs.iter().all(|t| t.replication_factor == 3 && t.configs["min.insync.replicas"] == "2"),
            "production gets the topic files' replication 3 / min.insync.replicas=2: {specs:?}"
        );
        let local = Settings::load_from(None, env(&[("SJ_TOPICS__OVERRIDES", "topics/overrides/single-broker.toml")])).unwrap();
        let specs = crate::kafka::topics::configured_specs(&local).unwrap();
        assert!(specs.iter().all(|t| t.replication_factor == 1 && t.file_replication_factor == 3), "{specs:?}");
        let cleared = Settings::load_from(None, env(&[("SJ_TOPICS__OVERRIDES", "")])).unwrap();
        assert_eq!(cleared.topics.overrides, None);
    }

    #[test]
    fn environment_overrides_nested_settings_and_ignores_flat_script_variables() {
        let s = Settings::load_from(
            None,
            env(&[("SJ_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9094"), ("SJ_KAFKA_PORT", "1"), ("SJ_POSTGRES__PORT", "6543")]),
        )
        .unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "10.0.0.1:9094");
        assert_eq!(s.postgres.port, 6543);
    }

    #[test]
    fn kafka_properties_pass_through_from_environment() {
        let s = Settings::load_from(
            None,
            env(&[("SJ_KAFKA_PROP_SASL_MECHANISM", "SCRAM-SHA-512"), ("SJ_KAFKA_PROP_SASL_PASSWORD", "hunter2")]),
        )
        .unwrap();
        assert_eq!(s.kafka.properties["sasl.mechanism"], "SCRAM-SHA-512");
        let shown = s.redacted();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(r#""sasl.password" = "********""#), "{shown}");
    }

    #[test]
    fn records_per_transaction_outside_its_range_is_refused_by_name() {
        for bad in ["0", "10001"] {
            let e = Settings::load_from(None, env(&[("SJ_PROCESSOR__RECORDS_PER_TRANSACTION", bad)])).unwrap_err().to_string();
            assert!(e.contains("processor.records_per_transaction") && e.contains("between 1 and 10000"), "{bad}: {e}");
        }
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!((s.processor.records_per_transaction, s.processor.effects_ahead), (100, 2));
    }

    #[test]
    fn a_transaction_linger_above_five_seconds_is_refused_by_name() {
        let e = Settings::load_from(None, env(&[("SJ_PROCESSOR__TRANSACTION_LINGER_MS", "5001")])).unwrap_err().to_string();
        assert!(e.contains("processor.transaction_linger_ms") && e.contains("at most 5000"), "{e}");
        let s = Settings::load_from(None, env(&[("SJ_PROCESSOR__TRANSACTION_LINGER_MS", "0")])).unwrap();
        assert_eq!(s.processor.transaction_linger_ms, 0);
        assert_eq!(Settings::load_from(None, env(&[])).unwrap().processor.transaction_linger_ms, 100);
    }

    #[test]
    fn secrets_never_render() {
        let s = Settings::load_from(None, env(&[("SJ_POSTGRES__PASSWORD", "s3cr3t-pg"), ("SJ_REDIS__PASSWORD", "s3cr3t-redis")]))
            .unwrap();
        let shown = s.redacted();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    /// A password holding URL delimiters reaches Redis as given: the URL percent-encodes it
    /// and the client decodes it back (what the crate will send in AUTH).
    #[test]
    fn redis_credentials_are_percent_encoded_in_the_url() {
        let password = "p@ss:w/rd%?#[]";
        let s = Settings::load_from(
            None,
            env(&[("SJ_REDIS__USERNAME", "app:user@x"), ("SJ_REDIS__PASSWORD", password), ("SJ_REDIS__TLS", "true")]),
        )
        .unwrap();
        let url = s.redis_url();
        assert!(url.expose_secret().starts_with("rediss://app%3Auser%40x:p%40ss%3Aw%2Frd"), "{}", url.expose_secret());
        assert!(url.expose_secret().ends_with("@127.0.0.1:6379/0"), "{}", url.expose_secret());
        let info = redis::IntoConnectionInfo::into_connection_info(url.expose_secret()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("app:user@x"));
        assert_eq!(info.redis_settings().password(), Some(password));
        assert!(matches!(info.addr(), redis::ConnectionAddr::TcpTls { host, port: 6379, .. } if host == "127.0.0.1"), "{:?}", info.addr());
    }

    #[test]
    fn tls_trust_files_must_be_readable_and_fit_their_setting() {
        let e = Settings::load_from(None, env(&[("SJ_REDIS__TLS", "true"), ("SJ_REDIS__CA_FILE", "/nonexistent/ca.crt")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.ca_file") && e.contains("/nonexistent/ca.crt"), "{e}");
        let e = Settings::load_from(None, env(&[("SJ_REDIS__CA_FILE", "/etc/hostname")])).unwrap_err().to_string();
        assert!(e.contains("redis.ca_file") && e.contains("redis.tls"), "{e}");
        let e = Settings::load_from(None, env(&[("SJ_POSTGRES__SSLROOTCERT", "/nonexistent/root.crt")])).unwrap_err().to_string();
        assert!(e.contains("postgres.sslrootcert"), "{e}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = Settings::load_from(None, env(&[("SJ_POSTGRES__PORT", "not-a-port")])).unwrap_err().to_string();
        assert!(e.contains("postgres.port"), "{e}");
        let e = Settings::load_from(None, env(&[("SJ_KAFKA__BOOTSTRAP_SERVERS", "nohost")])).unwrap_err().to_string();
        assert!(e.contains("kafka.bootstrap_servers"), "{e}");
        let e = Settings::load_from(None, env(&[("SJ_POSTGRES__SSLMODE", "sometimes")])).unwrap_err().to_string();
        assert!(e.contains("postgres.sslmode"), "{e}");
        let e = Settings::load_from(None, env(&[("SJ_KAFKA__BOOTSTRAP_SERVRES", "x:1")])).unwrap_err().to_string();
        assert!(e.contains("bootstrap_servres"), "{e}");
    }

    /// The seed's times are Seoul's: that is the zone unless one is configured, and
    /// `config show` says so on its first line.
    #[test]
    fn the_time_zone_is_the_seeds_unless_configured_and_shown() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.time_zone().unwrap(), chrono_tz::Asia::Seoul);
        let first = s.redacted().lines().next().unwrap_or_default().to_string();
        assert!(first.starts_with("# time zone: Asia/Seoul (scheduler.time_zone, the default"), "{first}");
        let s = Settings::load_from(None, env(&[("SJ_SCHEDULER__TIME_ZONE", "UTC")])).unwrap();
        assert_eq!(s.time_zone().unwrap(), chrono_tz::UTC, "an explicit setting wins");
        let shown = s.redacted();
        assert!(shown.starts_with("# time zone: UTC (scheduler.time_zone, configured"), "{shown}");
        assert!(shown.contains("time_zone = \"UTC\""), "{shown}");
        toml::from_str::<toml::Table>(&shown).expect("config show stays valid TOML");
    }

    /// `noop` is a test job: configured (so it can be enabled) but off, and not shown until
    /// a configuration enables it.
    #[test]
    fn the_noop_test_job_is_off_and_unlisted_unless_enabled() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert!(!s.job("noop").unwrap().enabled);
        assert!(s.listed_jobs().all(|(k, _)| k != "noop"));
        assert!(!s.redacted().contains("[jobs.noop]"), "{}", s.redacted());
        assert!(s.redacted().contains("[jobs.stock_sync]"));
        let s = Settings::load_from(None, env(&[("SJ_JOBS__NOOP__ENABLED", "true")])).unwrap();
        let noop = s.job("noop").unwrap();
        assert!(noop.enabled);
        assert_eq!(noop.timeout_secs, 60, "enabling keeps the job's other defaults");
        assert!(s.listed_jobs().any(|(k, _)| k == "noop"));
        assert!(s.redacted().contains("[jobs.noop]"));
        let mut s = Settings::load_from(None, env(&[("SJ_JOBS__STOCK_SYNC__ENABLED", "false")])).unwrap();
        assert!(s.redacted().contains("[jobs.stock_sync]"), "a production job stays listed when disabled");
        s.jobs.get_mut("noop").unwrap().enabled = false;
        assert_eq!(s.listed_jobs().count(), crate::jobs::catalog().len() - 1);
    }

    #[test]
    fn jobs_come_from_the_catalog_with_their_own_options() {
        let s = Settings::load_from(None, env(&[("SJ_JOBS__STOCK_SYNC__CONFIRM_DELAY_MS", "50")])).unwrap();
        assert_eq!(s.jobs.len(), crate::jobs::catalog().len());
        assert_eq!(s.job("order-expiration").unwrap().schedule, "0 */10 * * * *");
        let o: crate::jobs::stock_sync::Options = s.job("stock-sync").unwrap().options().unwrap();
        assert_eq!((o.confirm_delay_ms, o.urgent_after_mismatches), (50, 10), "set one option, kept the other's default");
        let e = Settings::load_from(None, env(&[("SJ_JOBS__STOCK_SYNC__CONFIRM_DELAY", "50")])).unwrap_err().to_string();
        assert!(e.contains("jobs.stock_sync") && e.contains("confirm_delay"), "{e}");
        let e = Settings::load_from(None, env(&[("SJ_JOBS__NOOP__CONFIRM_DELAY_MS", "50")])).unwrap_err().to_string();
        assert!(e.contains("jobs.noop") && e.contains("confirm_delay_ms"), "an option of another job: {e}");
        let e = Settings::load_from(None, env(&[("SJ_JOBS__ORDER_EXPIRY__BATCH_SIZE", "5")])).unwrap_err().to_string();
        assert!(e.contains("jobs.order_expiry") && e.contains("no such job"), "{e}");
    }
}
