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
Settings come from built-in defaults (the addresses of the local stack of scripts/services.sh, and\n\
no topic overlay: each topic file's replication), then the TOML file\n\
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
    /// More log lines on stderr: -v one level more (info for `demo`, debug otherwise), -vv
    /// another. RUST_LOG, when set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
    /// schedule, read in scheduler.time_zone (default Asia/Seoul, the seed's zone), catching
    /// up fire times missed while it was down. Safe to run two side by side.
    Tick,
    /// Publish a manual tick for a job now (or for --at), or one per fire time of its schedule
    /// in a range (--from/--to: a backfill). A disabled job (the noop test job unless
    /// jobs.noop.enabled = true) is refused.
    Trigger {
        /// Job name, e.g. order-expiration.
        job: String,
        /// Scheduled time of the tick (RFC 3339); default now.
        #[arg(long, value_name = "INSTANT", conflicts_with_all = ["from", "to"])]
        at: Option<String>,
        /// Backfill: one tick per fire time of the job's schedule from this instant (RFC 3339,
        /// included) to --to (included), at most 1,000. Periods the run ledger already records
        /// are listed and not run again unless --force.
        #[arg(long, value_name = "INSTANT", requires = "to")]
        from: Option<String>,
        /// End of the backfill range (RFC 3339, included).
        #[arg(long, value_name = "INSTANT", requires = "from")]
        to: Option<String>,
        /// With --from/--to: list the fire times, their periods and what is recorded; publish
        /// nothing.
        #[arg(long, requires = "from")]
        dry_run: bool,
        /// With --from/--to: run the periods already recorded again too (new attempts).
        #[arg(long, requires = "from")]
        force: bool,
        /// A job parameter; repeatable. Every job accepts force=true (run a recorded period
        /// again); a parameter the job does not accept, or a bad value, is refused.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Follow the run: a progress bar of chunks applied / planned, then its result (a
        /// backfill: each run in turn, a line per period). Exit status 0 if it succeeded (or
        /// was skipped), 1 if it (any of them) failed or timed out.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (e.g. 90s, 10m); a backfill gives each run
        /// this long.
        #[arg(long, value_name = "DURATION", default_value = "10m", requires = "wait")]
        timeout: String,
    },
    /// Serve the operator console: web pages of the schedules (cron, time zone, paused or not,
    /// the next five fire times, the last run, a red mark when a fire time was missed or the
    /// last success is too old), the runs (newest first, filtered by job, outcome and time
    /// range) and each run's chunks, events and records, the dead letters decoded, and
    /// consumer-group lag with a chart; and actions (trigger, pause, resume, re-run a period)
    /// when console.password is set (HTTP basic authentication as console.username). Until
    /// SIGTERM/Ctrl-C. With console.in_run = true, `run` serves it too.
    Console {
        /// ip:port to serve on, instead of console.listen (default 127.0.0.1:9470).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run history.
    Runs {
        #[command(subcommand)]
        action: RunsAction,
    },
    /// Pause a job: its ticks are answered with a SKIPPED run result (with who paused it and
    /// why) and no run is recorded, so the skipped periods can run later. Takes effect at the
    /// next tick on every processor instance.
    Pause {
        /// Job name, e.g. stock-sync.
        job: String,
        /// Why, for the run results and `runs list`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused job.
    Resume {
        /// Job name.
        job: String,
    },
    /// Move a consumer group's offsets so its records are consumed again. Refused while the
    /// group has active members. Runs already recorded are not redone (see the printed
    /// explanation).
    Replay {
        /// Consumer group; default the processor's (processor.group_id).
        #[arg(long)]
        group: Option<String>,
        /// Topic, as named in topics/ (the prefix is added); default the tick topic.
        #[arg(long, default_value = "scheduler.tick")]
        topic: String,
        /// The offset to move every partition to (clamped to what it holds).
        #[arg(long, value_name = "N", conflicts_with = "to_time", required_unless_present = "to_time")]
        to_offset: Option<i64>,
        /// The first record at or after this instant (RFC 3339) or this long ago (e.g. 2h).
        #[arg(long, value_name = "TIME")]
        to_time: Option<String>,
        /// Show what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
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
    /// Create missing topics, grow partitions, align configs; report drift and partitions
    /// with fewer in-sync replicas than replicas. Idempotent. Refuses, before changing
    /// anything, to shrink a topic, to create one with more replicas than brokers are up, and
    /// on a cluster of three or more brokers a replication factor of 1, below the topic file's
    /// (an overlay such as topics/overrides/single-broker.toml) or below min.insync.replicas.
    Apply {
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Apply replication 1, or below the topic file's or min.insync.replicas, on a cluster of
        /// three or more brokers anyway.
        #[arg(long)]
        allow_low_replication: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemasAction {
    /// Check every schema, then (if all are compatible) set BACKWARD and register them.
    Register,
    /// Check every schema against the registry and the evolution rules (every enum has a
    /// default symbol, every field a doc, a field new since the registered version a default);
    /// register nothing. Fails on any incompatibility or broken rule, naming file and field.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// Recent runs, newest first: job, period, time zone, trigger, outcome, duration and
    /// counts (from the committed run results; runs planned but not finished show as RUNNING).
    List {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Runs started since this long ago (e.g. 24h, 7d) or this instant (RFC 3339).
        #[arg(long, default_value = "24h", value_name = "TIME")]
        since: String,
        /// At most this many rows (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Apply pending migrations (safe to run again).
    Migrate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective settings as TOML, secrets redacted; the first line names the
    /// time zone schedules are read in. The noop test job is shown only when enabled.
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

/// `--since`/`--to-time`: a duration ago (`24h`, `7d`, `90m`) or an RFC 3339 instant.
fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("`{s}` is neither a duration (24h, 7d) nor an RFC 3339 instant: {e}"))?;
    let d = chrono::TimeDelta::from_std(d).map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?;
    Ok(chrono::Utc::now() - d)
}

/// A configured job's wire name, or a usage error listing the known ones.
fn known_job(settings: &Settings, job: &str) -> anyhow::Result<String> {
    if settings.job(job).is_some() {
        Ok(job.to_string())
    } else {
        let known: Vec<String> = settings.listed_jobs().map(|(k, _)| k.replace('_', "-")).collect();
        Err(anyhow::anyhow!("unknown job `{job}` (configured jobs: {})", known.join(", ")))
    }
}

/// The log filter when RUST_LOG is not set: `info` for every command but `demo`, whose
/// output is its run summaries (`warn`, so problems still show); each `-v` one level more.
/// The clients' own chatter stays at `warn` until `-vv` beyond that.
fn default_filter(command: &Command, verbose: u8) -> String {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base = if matches!(command, Command::Demo { .. }) { 1 } else { 2 };
    let level = LEVELS[(base + usize::from(verbose)).min(LEVELS.len() - 1)];
    let clients = if verbose >= 2 { level } else { "warn" };
    format!("{level},rdkafka={clients},sqlx={clients}")
}

/// Whether text logs may carry ANSI colour codes: only on a terminal, and not when the
/// `NO_COLOR` convention (<https://no-color.org>: set and not empty) asks for none.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

pub fn init_tracing(cli: &Cli) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(&cli.command, cli.verbose)));
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The line `main` ends a failed command with, on stderr: `error: …` as text, or under
/// `--log-format json` one JSON object shaped like the log lines (timestamp, level, target,
/// fields), whose fields carry the message, each cause of the error chain (outermost
/// first) and the exit status — so a log pipeline parses every line it is given.
pub fn fatal_line(format: LogFormat, failure: &Failure) -> String {
    match format {
        LogFormat::Text => format!("error: {:#}", failure.error),
        LogFormat::Json => serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "fields": {
                "message": format!("{:#}", failure.error),
                "chain": failure.error.chain().map(ToString::to_string).collect::<Vec<_>>(),
                "exit_code": failure.code,
            },
            "target": "scheduled_jobs",
        })
        .to_string(),
    }
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let settings = Settings::load(cli.config.as_deref()).map_err(anyhow::Error::from)?;
    crate::kafka::check_properties(&settings).map_err(anyhow::Error::from)?;
    match cli.command {
        Command::Config { action: ConfigAction::Show } => print!("{}", settings.redacted()),
        Command::Config { action: ConfigAction::Check } => {}
        Command::Topics { action: TopicsAction::Apply { dry_run, allow_low_replication } } => {
            let specs = crate::kafka::topics::configured_specs(&settings).map_err(anyhow::Error::from)?;
            let options = crate::kafka::topics::ApplyOptions { dry_run, allow_low_replication };
            let report = crate::kafka::topics::apply_with(&settings, &specs, options).await.map_err(anyhow::Error::from)?;
            print!("{report}");
        }
        Command::Schemas { action } => {
            let specs = crate::kafka::topics::configured_specs(&settings).map_err(anyhow::Error::from)?;
            let schemas = crate::kafka::schemas::load(&settings.schemas.dir, &specs).map_err(anyhow::Error::from)?;
            let registry = crate::kafka::schemas::Registry::new(&settings).map_err(anyhow::Error::from)?;
            match action {
                SchemasAction::Register => {
                    for o in crate::kafka::schemas::register(&registry, &schemas).await.map_err(anyhow::Error::from)? {
                        println!("{o}");
                    }
                }
                SchemasAction::Check => {
                    let outcomes = crate::kafka::schemas::check(&registry, &schemas).await.map_err(anyhow::Error::from)?;
                    for o in &outcomes {
                        println!("{o}");
                    }
                    let broken = crate::kafka::schemas::rules(&registry, &schemas).await.map_err(anyhow::Error::from)?;
                    for v in &broken {
                        println!("BREAKS RULE {v}");
                    }
                    let bad = outcomes
                        .iter()
                        .filter(|o| matches!(o.status, crate::kafka::schemas::Status::Incompatible { .. }))
                        .count();
                    let mut problems = Vec::new();
                    if bad > 0 {
                        problems.push(format!("{bad} subject(s) not BACKWARD compatible"));
                    }
                    if !broken.is_empty() {
                        problems.push(format!(
                            "{} schema evolution rule(s) broken (docs/decisions/2026-11-29-schema-evolution.md)",
                            broken.len()
                        ));
                    }
                    if !problems.is_empty() {
                        return Err(anyhow::anyhow!("{}", problems.join("; ")).into());
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
            let shutdown = crate::runtime::shutdown::signal();
            tokio::pin!(shutdown);
            // A broker, coordinator or database that is (re)starting is waited for; a
            // configuration or authorisation problem ends the command at once.
            let mut backoff = crate::runtime::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
            // The endpoint is up while the processor waits for its dependencies: /healthz
            // answers, /readyz says what it is waiting for.
            let metrics = crate::runtime::metrics::Metrics::new();
            let _endpoint = crate::runtime::metrics::start(&settings, &metrics, true).await.map_err(|e| Failure { code: 2, error: e.into() })?;
            // The console alongside (`console.in_run`): up at once, like the endpoint; it
            // stops with the command.
            let _console = if settings.console.in_run {
                let tz = settings.time_zone().map_err(|e| Failure { code: 2, error: e.into() })?;
                let listener = crate::ops::console::bind(&settings.console.listen).await.map_err(|e| Failure { code: 2, error: e.into() })?;
                let pool = crate::db::connect_lazy(&settings.postgres);
                let served = crate::ops::console::serve(listener, settings.clone(), tz, pool, std::future::pending());
                Some(crate::ops::console::Background(tokio::spawn(async move {
                    if let Err(e) = served.await {
                        tracing::error!(error = %e, "console stopped");
                    }
                })))
            } else {
                None
            };
            let start = || async {
                let pool = crate::db::connect_processor(&settings.postgres).await.map_err(crate::runtime::processor::ProcessorError::from)?;
                crate::runtime::processor::Processor::new(settings.clone(), crate::jobs::Registry::builtin(), pool).await
            };
            let waiting = |e: &crate::runtime::processor::ProcessorError, wait: Duration| {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "processor cannot start yet; retrying");
                metrics.set_ready(Err(format!("cannot start yet: {e}")));
            };
            let started = crate::runtime::retry::until_ok(&mut backoff, shutdown.as_mut(), start, crate::runtime::processor::ProcessorError::class, waiting)
                .await
                .map_err(anyhow::Error::from)?;
            let Some(processor) = started else { return Ok(()) };
            tracing::info!(instance = %processor.instance(), group = %settings.processor.group_id, "processor started");
            processor.with_metrics(metrics).run(shutdown).await.map_err(anyhow::Error::from)?;
        }
        Command::Demo { fast } => {
            crate::ops::demo::run(settings, fast, crate::runtime::shutdown::signal()).await.map_err(anyhow::Error::from)?;
        }
        Command::Tick => {
            let metrics = crate::runtime::metrics::Metrics::new();
            let _endpoint = crate::runtime::metrics::start(&settings, &metrics, false).await.map_err(|e| Failure { code: 2, error: e.into() })?;
            crate::runtime::tick::run_producer(&settings, &metrics, crate::runtime::shutdown::signal()).await.map_err(anyhow::Error::from)?;
        }
        Command::Runs { action: RunsAction::List { job, since, limit } } => {
            let since = parse_since(&since).map_err(|error| Failure { code: 2, error })?;
            let job = job.map(|j| known_job(&settings, &j)).transpose().map_err(|error| Failure { code: 2, error })?;
            let mut rows = crate::ops::history::recent_runs(&settings, since, job.as_deref()).await.map_err(anyhow::Error::from)?;
            rows.truncate(limit);
            let tz = settings.time_zone().map_err(anyhow::Error::from)?;
            if rows.is_empty() {
                println!("no runs since {}", since.with_timezone(&tz).to_rfc3339());
            } else {
                print!("{}", crate::ops::history::render(&rows, tz));
            }
        }
        Command::Console { listen } => {
            let tz = settings.time_zone().map_err(|e| Failure { code: 2, error: e.into() })?;
            let pool = crate::db::connect(&settings.postgres).await.map_err(anyhow::Error::from)?;
            let listen = listen.unwrap_or_else(|| settings.console.listen.clone());
            let listener = crate::ops::console::bind(&listen).await.map_err(|e| Failure { code: 2, error: e.into() })?;
            crate::ops::console::serve(listener, settings.clone(), tz, pool, crate::runtime::shutdown::signal())
                .await
                .map_err(|e| Failure { code: 2, error: e.into() })?;
        }
        Command::Pause { job, reason } => {
            let job = known_job(&settings, &job).map_err(|error| Failure { code: 2, error })?;
            let pool = crate::db::connect(&settings.postgres).await.map_err(anyhow::Error::from)?;
            if crate::runtime::control::pause(&pool, &job, &crate::runtime::control::operator(), reason.as_deref()).await.context("pause")? {
                println!("paused {job}: its ticks are skipped (recorded as SKIPPED, not as runs) until `scheduled-jobs resume {job}`");
            } else {
                let p = crate::runtime::control::paused(&pool, &job).await.context("pause")?;
                println!("{job} was already paused{}", p.map(|p| format!(" ({})", p.message())).unwrap_or_default());
            }
        }
        Command::Resume { job } => {
            let job = known_job(&settings, &job).map_err(|error| Failure { code: 2, error })?;
            let pool = crate::db::connect(&settings.postgres).await.map_err(anyhow::Error::from)?;
            match crate::runtime::control::resume(&pool, &job).await.context("resume")? {
                Some(p) => println!(
                    "resumed {job} (paused by {} since {}); ticks skipped meanwhile: `scheduled-jobs runs list --job {job}` (outcome SKIPPED), run one with `trigger {job} --at <fire time>`",
                    p.paused_by,
                    p.paused_at.to_rfc3339()
                ),
                None => println!("{job} was not paused"),
            }
        }
        Command::Replay { group, topic, to_offset, to_time, dry_run } => {
            let target = match (to_offset, to_time) {
                (Some(o), _) => crate::ops::replay::Target::Offset(o),
                (None, Some(t)) => crate::ops::replay::Target::Time(parse_since(&t).map_err(|error| Failure { code: 2, error })?),
                (None, None) => return Err(Failure { code: 2, error: anyhow::anyhow!("give --to-offset or --to-time") }),
            };
            let group = group.unwrap_or_else(|| settings.processor.group_id.clone());
            let topic = format!("{}{}", settings.topics.prefix, topic);
            let (s, g, t) = (settings.clone(), group.clone(), topic.clone());
            let moves = tokio::task::spawn_blocking(move || crate::ops::replay::replay(&s, &g, &t, target, dry_run))
                .await
                .context("replay task")?
                .map_err(anyhow::Error::from)?;
            print!("{}", crate::ops::replay::render(&group, &topic, &moves, dry_run));
            println!("{}", crate::ops::replay::EXPLANATION);
        }
        Command::Trigger { job, at, from, to, dry_run, force, params, wait, timeout } => {
            let instant = |flag: &str, a: &str| {
                chrono::DateTime::parse_from_rfc3339(a)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| Failure { code: 2, error: anyhow::anyhow!("{flag} `{a}` is not an RFC 3339 instant: {e}") })
            };
            let mut map = std::collections::BTreeMap::new();
            for p in &params {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| Failure { code: 2, error: anyhow::anyhow!("--param `{p}` is not KEY=VALUE") })?;
                map.insert(k.to_string(), v.to_string());
            }
            let timeout = humantime::parse_duration(&timeout)
                .map_err(|e| Failure { code: 2, error: anyhow::anyhow!("--timeout `{timeout}`: {e}") })?;
            if let (Some(from), Some(to)) = (&from, &to) {
                return backfill(&settings, &job, instant("--from", from)?, instant("--to", to)?, map, dry_run, force, wait.then_some(timeout)).await;
            }
            let at = at
                .map(|a| {
                    chrono::DateTime::parse_from_rfc3339(&a)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| anyhow::anyhow!("--at `{a}` is not an RFC 3339 instant: {e}"))
                })
                .transpose()
                .map_err(|error| Failure { code: 2, error })?;
            let tick = crate::runtime::tick::trigger(&settings, &job, at, map).await.map_err(|e| {
                // Naming a job that does not exist (or is disabled), or a parameter it does not
                // accept, is a usage error.
                let code = match e {
                    crate::runtime::tick::TickError::UnknownJob { .. }
                    | crate::runtime::tick::TickError::JobDisabled { .. }
                    | crate::runtime::tick::TickError::InvalidTick(_) => 2,
                    _ => 1,
                };
                Failure { code, error: e.into() }
            })?;
            println!("published tick {} for {} at {}", tick.tick_id, tick.job, tick.scheduled_at.to_rfc3339());
            if wait {
                let result = crate::ops::follow::follow(&settings, &tick, timeout, crate::runtime::shutdown::signal()).await.map_err(anyhow::Error::from)?;
                println!("{}", crate::ops::follow::describe(&result));
                if !result.ok() {
                    return Err(Failure { code: 1, error: anyhow::anyhow!("run of {} ended {}", tick.job, result.outcome_name()) });
                }
            }
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
            let opts = crate::ops::tail::TailOptions { topic, from_beginning, max_messages, idle_timeout };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            crate::ops::tail::tail(&settings, &opts, &mut out).await.context("tail").map_err(Failure::from)?;
            out.flush().ok();
        }
    }
    Ok(())
}

/// `trigger <job> --from T1 --to T2`: see [`crate::ops::backfill`].
#[allow(clippy::too_many_arguments)]
async fn backfill(
    settings: &Settings,
    job: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    params: std::collections::BTreeMap<String, String>,
    dry_run: bool,
    force: bool,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    use crate::ops::backfill;
    let usage = |e: backfill::BackfillError| Failure { code: if e.is_usage() { 2 } else { 1 }, error: e.into() };
    let times = backfill::fire_times(settings, job, from, to).map_err(usage)?;
    let plan = backfill::plan(settings, job, &times, &params, force).await.map_err(usage)?;
    for p in &plan {
        println!("{}", backfill::describe(p, force));
    }
    let mut ticks: Vec<_> = plan.iter().filter(|p| p.publish(force)).map(|p| p.tick.clone()).collect();
    let recorded = plan.iter().filter(|p| p.recorded.is_some()).count();
    if dry_run {
        println!("dry run: {} fire time(s), {} would be published, {recorded} already recorded", plan.len(), ticks.len());
        return Ok(());
    }
    crate::runtime::tick::publish_manual(settings, &mut ticks).await.map_err(|e| Failure { code: 1, error: e.into() })?;
    println!("published {} tick(s) of {job} for {} fire time(s) ({recorded} already recorded)", ticks.len(), plan.len());
    let Some(timeout) = wait else { return Ok(()) };
    let mut failed = Vec::new();
    for (i, tick) in ticks.iter().enumerate() {
        // The progress over the periods is in the label of each run's own progress.
        let label = format!("{job} [{}/{}]", i + 1, ticks.len());
        let result = crate::ops::follow::follow_as(settings, tick, &label, timeout, crate::runtime::shutdown::signal())
            .await
            .map_err(|e| Failure { code: 1, error: e.into() })?;
        println!("[{}/{}] {}: {}", i + 1, ticks.len(), tick.scheduled_at.to_rfc3339(), crate::ops::follow::describe(&result));
        if !result.ok() {
            failed.push(format!("{} {}", tick.scheduled_at.to_rfc3339(), result.outcome_name()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure { code: 1, error: anyhow::anyhow!("{} of {} backfilled run(s) did not succeed: {}", failed.len(), ticks.len(), failed.join(", ")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_logs_warnings_by_default_and_more_with_each_v() {
        let demo = Command::Demo { fast: true };
        assert_eq!(default_filter(&demo, 0), "warn,rdkafka=warn,sqlx=warn");
        assert_eq!(default_filter(&demo, 1), "info,rdkafka=warn,sqlx=warn");
        assert_eq!(default_filter(&Command::Run, 0), "info,rdkafka=warn,sqlx=warn");
        assert_eq!(default_filter(&Command::Run, 2), "trace,rdkafka=trace,sqlx=trace");
        assert_eq!(default_filter(&Command::Run, 9), "trace,rdkafka=trace,sqlx=trace");
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_under_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(OsStr::new("1"))));
        // An empty NO_COLOR does not opt out (no-color.org).
        assert!(colour(true, Some(OsStr::new(""))));
    }

    #[test]
    fn the_fatal_line_under_json_is_one_object_with_the_chain() {
        let error = anyhow::anyhow!("connection refused").context("cannot reach the broker");
        let line = fatal_line(LogFormat::Json, &Failure { code: 1, error });
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "cannot reach the broker: connection refused");
        assert_eq!(v["fields"]["chain"], serde_json::json!(["cannot reach the broker", "connection refused"]));
        let error = anyhow::anyhow!("bad");
        assert_eq!(fatal_line(LogFormat::Text, &Failure { code: 2, error }), "error: bad");
    }
}
