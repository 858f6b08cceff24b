//! The command line: one subcommand per operation, each a thin call into the library.
//! Exit status: 0 success, 1 the operation failed, 2 bad configuration or usage.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{ConfigError, Settings};

#[derive(Debug, Parser)]
#[command(name = "scheduled-jobs", version, about = "Kafka-native, exactly-once runner for periodic e-commerce jobs")]
#[command(long_about = "Kafka-native, exactly-once runner for the periodic background jobs of an e-commerce platform.\n\n\
Settings come from built-in defaults (the local stack of scripts/services.sh), then the TOML file\n\
(--config, or ./scheduled-jobs.toml if present), then SJ_* environment variables:\n\
SJ_<SECTION>__<KEY> (e.g. SJ_KAFKA__BOOTSTRAP_SERVERS) and SJ_KAFKA_PROP_<NAME> for any\n\
librdkafka property (underscores become dots). `config show` prints the result, secrets redacted.")]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "SJ_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "SJ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or align the Kafka topics defined in topics/ (never shrinks).
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Register or check the Avro schemas of avro/ in the Schema Registry (BACKWARD).
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// PostgreSQL schema.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Print a topic's committed records as JSON lines (read_committed, Avro decoded).
    Tail {
        /// Topic to read.
        topic: String,
        /// Start at the oldest record instead of only new ones.
        #[arg(long)]
        from_beginning: bool,
        /// Exit after printing this many records.
        #[arg(long, value_name = "N")]
        max_messages: Option<u64>,
        /// Exit when no record arrives for this many seconds.
        #[arg(long, value_name = "SECONDS")]
        idle_timeout: Option<f64>,
    },
    /// Run the processor: consume ticks and work items in the consumer group and run the
    /// jobs exactly once, until SIGTERM/Ctrl-C (the record in hand is finished or aborted,
    /// then the group is left; with processor.instance_id set, static membership keeps the
    /// partitions for the 10 s session so a restart takes them straight back).
    Run,
    /// Run the tick producer: publish a tick for every fire time of every enabled job's
    /// schedule, catching up fire times missed while it was down. Safe to run two side by side.
    Tick,
    /// Publish a manual tick for a job now (or for --at).
    Trigger {
        /// Job name, e.g. order-expiration.
        job: String,
        /// Scheduled time of the tick (RFC 3339); default now.
        #[arg(long, value_name = "INSTANT")]
        at: Option<String>,
        /// A job parameter; repeatable.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Local demo: apply topics, register schemas, migrate, load demo data, then run a tick
    /// producer and a processor in the foreground until Ctrl-C.
    Demo {
        /// Accelerated schedules (order-expiration every 20 s with a 60 s payment timeout,
        /// stock-sync every minute, daily-statistics every 2 minutes).
        #[arg(long)]
        fast: bool,
    },
    /// Inspect the effective configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create missing topics, grow partitions, align configs; report drift. Idempotent.
    Apply {
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemasAction {
    /// Check every schema, then (if all are compatible) set BACKWARD and register them.
    Register,
    /// Check every schema against the registry; register nothing. Fails on any incompatibility.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Apply pending migrations (safe to run again).
    Migrate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective settings as TOML, secrets redacted.
    Show,
    /// Load and validate the settings, print nothing on success.
    Check,
}

/// A failure with the exit status it deserves.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = if error.downcast_ref::<ConfigError>().is_some() { 2 } else { 1 };
        Failure { code, error }
    }
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let settings = Settings::load(cli.config.as_deref()).map_err(anyhow::Error::from)?;
    crate::kafka::check_properties(&settings).map_err(anyhow::Error::from)?;
    match cli.command {
        Command::Config { action: ConfigAction::Show } => print!("{}", settings.redacted()),
        Command::Config { action: ConfigAction::Check } => {}
        Command::Topics { action: TopicsAction::Apply { dry_run } } => {
            let specs = crate::topics::configured_specs(&settings).map_err(anyhow::Error::from)?;
            let report = crate::topics::apply(&settings, &specs, dry_run).await.map_err(anyhow::Error::from)?;
            print!("{report}");
        }
        Command::Schemas { action } => {
            let specs = crate::topics::configured_specs(&settings).map_err(anyhow::Error::from)?;
            let schemas = crate::schemas::load(&settings.schemas.dir, &specs).map_err(anyhow::Error::from)?;
            let registry = crate::schemas::Registry::new(&settings).map_err(anyhow::Error::from)?;
            match action {
                SchemasAction::Register => {
                    for o in crate::schemas::register(&registry, &schemas).await.map_err(anyhow::Error::from)? {
                        println!("{o}");
                    }
                }
                SchemasAction::Check => {
                    let outcomes = crate::schemas::check(&registry, &schemas).await.map_err(anyhow::Error::from)?;
                    for o in &outcomes {
                        println!("{o}");
                    }
                    let bad = outcomes
                        .iter()
                        .filter(|o| matches!(o.status, crate::schemas::Status::Incompatible { .. }))
                        .count();
                    if bad > 0 {
                        return Err(anyhow::anyhow!("{bad} subject(s) not BACKWARD compatible").into());
                    }
                }
            }
        }
        Command::Db { action: DbAction::Migrate } => {
            let pool = crate::db::connect(&settings.postgres).await.map_err(anyhow::Error::from)?;
            let applied = crate::db::migrate(&pool).await.map_err(anyhow::Error::from)?;
            println!("applied {applied} migration(s); {} known", crate::db::MIGRATOR.iter().count());
        }
        Command::Run => {
            let shutdown = crate::shutdown::signal();
            tokio::pin!(shutdown);
            // A broker, coordinator or database that is (re)starting is waited for; a
            // configuration or authorisation problem ends the command at once.
            let mut backoff = Duration::from_millis(500);
            let processor = loop {
                let started = async {
                    let pool = crate::db::connect(&settings.postgres).await.map_err(crate::processor::ProcessorError::from)?;
                    crate::processor::Processor::new(settings.clone(), crate::jobs::Registry::builtin(), pool).await
                };
                let started = tokio::select! {
                    r = started => r,
                    _ = &mut shutdown => return Ok(()),
                };
                match started {
                    Ok(p) => break p,
                    Err(e) if e.class() == crate::error::ErrorClass::Retry => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "processor cannot start yet; retrying");
                        tokio::select! {
                            _ = &mut shutdown => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => return Err(anyhow::Error::from(e).into()),
                }
            };
            tracing::info!(instance = %settings.instance_id(), group = %settings.processor.group_id, "processor started");
            processor.run(shutdown).await.map_err(anyhow::Error::from)?;
        }
        Command::Demo { fast } => {
            crate::demo::run(settings, fast, crate::shutdown::signal()).await.map_err(anyhow::Error::from)?;
        }
        Command::Tick => {
            crate::tick::run_producer(&settings, crate::shutdown::signal()).await.map_err(anyhow::Error::from)?;
        }
        Command::Trigger { job, at, params } => {
            let at = at
                .map(|a| {
                    chrono::DateTime::parse_from_rfc3339(&a)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| anyhow::anyhow!("--at `{a}` is not an RFC 3339 instant: {e}"))
                })
                .transpose()
                .map_err(|error| Failure { code: 2, error })?;
            let mut map = std::collections::BTreeMap::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| Failure { code: 2, error: anyhow::anyhow!("--param `{p}` is not KEY=VALUE") })?;
                map.insert(k.to_string(), v.to_string());
            }
            let tick = crate::tick::trigger(&settings, &job, at, map).await.map_err(|e| {
                // Naming a job that does not exist (or is disabled) is a usage error.
                let code = match e {
                    crate::tick::TickError::UnknownJob { .. } | crate::tick::TickError::JobDisabled { .. } => 2,
                    _ => 1,
                };
                Failure { code, error: e.into() }
            })?;
            println!("published tick {} for {} at {}", tick.tick_id, tick.job, tick.scheduled_at.to_rfc3339());
        }
        Command::Tail { topic, from_beginning, max_messages, idle_timeout } => {
            let idle_timeout = idle_timeout
                .map(|s| {
                    if s.is_finite() && s > 0.0 {
                        Ok(Duration::from_secs_f64(s))
                    } else {
                        Err(anyhow::anyhow!("--idle-timeout must be a positive number of seconds, got {s}"))
                    }
                })
                .transpose()
                .map_err(|error| Failure { code: 2, error })?;
            let opts = crate::tail::TailOptions { topic, from_beginning, max_messages, idle_timeout };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            crate::tail::tail(&settings, &opts, &mut out).await.context("tail").map_err(Failure::from)?;
            out.flush().ok();
        }
    }
    Ok(())
}
