//! Metrics and health of one process (`run` or `tick`), served over HTTP at `/metrics`
//! (Prometheus/OpenMetrics text), `/healthz` (the process answers) and `/readyz` (it is doing
//! its work: connected, and its last step succeeded).
//!
//! Delivery guarantee: none of its own — the numbers describe what *this* process committed.
//! The processor records a transaction's samples only once its commit succeeded, so a counter
//! never counts work that was aborted and redone; summed over instances, the job counters equal
//! the counts of the run results. Counters restart at zero with the process (Prometheus'
//! `rate()`/`increase()` handle resets).
//!
//! Lag adds up the same way: the processor group's lag is exported per partition, only by the
//! instance the partition is assigned to (a partition it loses is removed at once), so `sum()`
//! over instances is the group's lag; a downstream group's lag is measured whole by every
//! instance alike, so it is read with `max()`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::{self, Role};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on metrics.listen `{addr}`: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("metrics endpoint failed: {0}")]
    Serve(std::io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobOutcome {
    job: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobCounter {
    job: String,
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobTrigger {
    job: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupTopic {
    group: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupPartition {
    group: String,
    topic: String,
    partition: i32,
}

/// The processor group's partitions assigned to this instance, as its consumer last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub group: String,
    /// (topic, partition) pairs.
    pub partitions: BTreeSet<(String, i32)>,
}

/// One thing a committed transaction did, recorded by [`Metrics::record`].
#[derive(Debug, Clone)]
pub enum Sample {
    /// A consumed record was handled (kind: `tick` or `work-item`).
    Handled { kind: &'static str },
    /// A chunk was applied (outcome: `applied`, `failed`, `timed_out`) with its job counters.
    Chunk { job: String, outcome: &'static str, counts: BTreeMap<String, i64>, seconds: f64 },
    /// Job counters added when a run is finalized (e.g. stock-sync's alert totals).
    Counts { job: String, counts: BTreeMap<String, i64> },
    /// A run ended with a run result.
    Run { job: String, outcome: String, seconds: f64 },
    /// Records written to an output topic.
    Emitted { topic: String, count: u64 },
    /// A record went to the dead-letter topic.
    DeadLetter { reason: String },
    /// A scheduled run was planned this long after its fire time.
    TickDelay { job: String, seconds: f64 },
    /// A fire time of the job's schedule was recorded MISSED.
    MissedFireTime { job: String },
    /// A run of the job succeeded; `at`: when it finished (Unix seconds).
    Succeeded { job: String, at: f64 },
    /// The job's current failure streak after a run ended (0 after a success).
    Streak { job: String, failures: i64 },
}

struct Inner {
    registry: Registry,
    ready: AtomicBool,
    /// `ready` as a series, for alerting on an instance that stays unready.
    ready_gauge: Gauge,
    not_ready_because: Mutex<String>,
    handled: Family<KindLabels, Counter>,
    transactions: Family<KindLabels, Counter>,
    runs: Family<JobOutcome, Counter>,
    run_seconds: Family<JobLabels, Histogram>,
    chunks: Family<JobOutcome, Counter>,
    chunk_seconds: Family<JobLabels, Histogram>,
    tick_delay: Family<JobLabels, Histogram>,
    job_counts: Family<JobCounter, Counter>,
    emitted: Family<TopicLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    producer_replacements: Family<ReasonLabels, Counter>,
    consumer_replacements: Family<ReasonLabels, Counter>,
    ticks_published: Family<JobTrigger, Counter>,
    tick_failures: Counter,
    last_fire_time: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    missed_fire_times: Family<JobLabels, Counter>,
    last_success: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    failure_streak: Family<JobLabels, Gauge>,
    lag: Family<GroupTopic, Gauge>,
    partition_lag: Family<GroupPartition, Gauge>,
    /// What `partition_lag` may hold: `None` until a processor reports its assignment.
    assignment: Mutex<Option<Assignment>>,
    lag_errors: Counter,
}

/// The process' metrics and readiness; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

/// Upper bounds of the duration histograms: 10 ms doubling to 5,242.88 s (~87 min), 20
/// buckets plus `+Inf`. A chunk takes milliseconds; a run may last up to its timeout (10 min
/// for order-expiration and daily-statistics, 30 min for stock-sync, and configurable), so
/// the top bounds (1,310.72 s, 2,621.44 s, 5,242.88 s) still tell a run near its deadline
/// from one that overran it by an hour.
const DURATION_BUCKETS: (f64, f64, u16) = (0.01, 2.0, 20);

fn seconds_histogram() -> Histogram {
    let (start, factor, count) = DURATION_BUCKETS;
    Histogram::new(exponential_buckets(start, factor, count))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("scheduled_jobs");
        let inner = Inner {
            ready: AtomicBool::new(false),
            ready_gauge: Gauge::default(),
            not_ready_because: Mutex::new("starting".into()),
            handled: Family::default(),
            transactions: Family::default(),
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(seconds_histogram),
            chunks: Family::default(),
            chunk_seconds: Family::new_with_constructor(seconds_histogram),
            tick_delay: Family::new_with_constructor(seconds_histogram),
            job_counts: Family::default(),
            emitted: Family::default(),
            dead_letters: Family::default(),
            producer_replacements: Family::default(),
            consumer_replacements: Family::default(),
            ticks_published: Family::default(),
            tick_failures: Counter::default(),
            last_fire_time: Family::default(),
            missed_fire_times: Family::default(),
            last_success: Family::default(),
            failure_streak: Family::default(),
            lag: Family::default(),
            partition_lag: Family::default(),
            assignment: Mutex::new(None),
            lag_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ready",
            "1 while the process is ready (what /readyz answers 200 for), 0 while it waits for a dependency or recovers from a failed transaction",
            inner.ready_gauge.clone(),
        );
        registry.register("records_handled", "Consumed records handled and committed, by kind (tick, work-item)", inner.handled.clone());
        registry.register("transactions", "Kafka transactions by result (committed, aborted)", inner.transactions.clone());
        registry.register("runs", "Runs ended, by job and outcome (succeeded, failed, timed_out, skipped)", inner.runs.clone());
        registry.register("run_duration_seconds", "Run duration from planning to its run result, by job", inner.run_seconds.clone());
        registry.register("chunks", "Chunks applied, by job and outcome (applied, failed, timed_out)", inner.chunks.clone());
        registry.register("chunk_duration_seconds", "Time to apply one chunk and write its transaction, by job", inner.chunk_seconds.clone());
        registry.register(
            "tick_delay_seconds",
            "From a scheduled (or caught-up) tick's fire time to its run being planned, by job: the tick producer, the broker and the processor's backlog together",
            inner.tick_delay.clone(),
        );
        registry.register(
            "job_items",
            "Job counters of committed chunks (the run result's counts), by job and counter, e.g. ordersCancelled, mismatches",
            inner.job_counts.clone(),
        );
        registry.register("records_emitted", "Records written to output topics in committed transactions, by topic", inner.emitted.clone());
        registry.register("dead_letters", "Records sent to the dead-letter topic, by reason code", inner.dead_letters.clone());
        registry.register(
            "producer_replacements",
            "Transactional producers replaced in-process, by reason (stuck: a call librdkafka did not return from; fenced: an epoch bump with no successor; unusable)",
            inner.producer_replacements.clone(),
        );
        registry.register(
            "consumer_replacements",
            "Group consumers replaced in-process, by reason (fenced: its static group.instance.id re-registered by a join whose answer was lost, as after a broker outage)",
            inner.consumer_replacements.clone(),
        );
        registry.register("ticks_published", "Ticks published by the tick producer, by job and trigger", inner.ticks_published.clone());
        registry.register("tick_publish_failures", "Failed tick publications (retried)", inner.tick_failures.clone());
        registry.register(
            "tick_last_fire_time_seconds",
            "Fire time (Unix seconds) of the latest tick published per job: alert when it falls behind the schedule",
            inner.last_fire_time.clone(),
        );
        registry.register(
            "missed_fire_times",
            "Fire times of the job's schedule recorded MISSED: no tick arrived within jobs.<job>.missed_after_secs (tick producer down, misconfigured, or publishing elsewhere); counted by the instance that recorded them, read with sum()",
            inner.missed_fire_times.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the job's latest successful run finished (Unix seconds), as this instance knows it (its own results, and the run ledger when it started): read with max() over instances; the dead-man's switch is time() minus it",
            inner.last_success.clone(),
        );
        registry.register(
            "failure_streak",
            "Runs of the job that ended FAILED or TIMED_OUT in a row, as of the latest run end this instance committed (0 after a success); jobs.<job>.pause_after_failures pauses the job at that many: read with max()",
            inner.failure_streak.clone(),
        );
        registry.register(
            "consumer_partition_lag",
            "Offsets not yet consumed by the processor group on one partition of its inputs, exported only by the instance the partition is assigned to (and removed when it moves): sum() by (group, topic) over instances is the group's lag (transaction markers count: a caught-up partition of a transactional topic may show 1)",
            inner.partition_lag.clone(),
        );
        registry.register(
            "consumer_group_lag",
            "Offsets not yet consumed by a downstream group (metrics.downstream_groups) on a topic, summed over partitions; every processor instance measures the same whole group, so aggregate with max(), not sum() (transaction markers count: a caught-up reader of a transactional topic may show 1 per partition)",
            inner.lag.clone(),
        );
        registry.register("consumer_group_lag_errors", "Failed lag measurements", inner.lag_errors.clone());
        Metrics(Arc::new(Inner { registry, ..inner }))
    }

    /// Adds the samples of one committed transaction.
    pub fn record(&self, samples: &[Sample]) {
        let m = &self.0;
        m.transactions.get_or_create(&KindLabels { kind: "committed".into() }).inc();
        for s in samples {
            match s {
                Sample::Handled { kind } => {
                    m.handled.get_or_create(&KindLabels { kind: (*kind).into() }).inc();
                }
                Sample::Chunk { job, outcome, counts, seconds } => {
                    m.chunks.get_or_create(&JobOutcome { job: job.clone(), outcome: (*outcome).into() }).inc();
                    m.chunk_seconds.get_or_create(&JobLabels { job: job.clone() }).observe(*seconds);
                    self.add_counts(job, counts);
                }
                Sample::Counts { job, counts } => self.add_counts(job, counts),
                Sample::Run { job, outcome, seconds } => {
                    m.runs.get_or_create(&JobOutcome { job: job.clone(), outcome: outcome.to_lowercase() }).inc();
                    m.run_seconds.get_or_create(&JobLabels { job: job.clone() }).observe(*seconds);
                }
                Sample::Emitted { topic, count } => {
                    m.emitted.get_or_create(&TopicLabels { topic: topic.clone() }).inc_by(*count);
                }
                Sample::DeadLetter { reason } => {
                    m.dead_letters.get_or_create(&ReasonLabels { reason: reason.clone() }).inc();
                }
                Sample::TickDelay { job, seconds } => {
                    m.tick_delay.get_or_create(&JobLabels { job: job.clone() }).observe(*seconds);
                }
                Sample::MissedFireTime { job } => {
                    m.missed_fire_times.get_or_create(&JobLabels { job: job.clone() }).inc();
                }
                Sample::Succeeded { job, at } => self.succeeded(job, *at),
                Sample::Streak { job, failures } => {
                    m.failure_streak.get_or_create(&JobLabels { job: job.clone() }).set(*failures);
                }
            }
        }
    }

    /// Moves the job's last success forward to `at` (Unix seconds), never back: results of
    /// older runs may be committed after newer ones, and the ledger seeds it at start.
    pub fn succeeded(&self, job: &str, at: f64) {
        let g = self.0.last_success.get_or_create(&JobLabels { job: job.into() });
        if at > g.get() {
            g.set(at);
        }
    }

    fn add_counts(&self, job: &str, counts: &BTreeMap<String, i64>) {
        for (counter, n) in counts {
            // Counters only grow; a job never reports a negative count.
            if let Ok(n) = u64::try_from(*n) {
                self.0.job_counts.get_or_create(&JobCounter { job: job.into(), counter: counter.clone() }).inc_by(n);
            }
        }
    }

    /// A transaction was aborted (its samples are dropped with it).
    pub fn aborted(&self) {
        self.0.transactions.get_or_create(&KindLabels { kind: "aborted".into() }).inc();
    }

    /// The transactional producer was replaced (see the committer) for `reason`.
    pub fn producer_replaced(&self, reason: &str) {
        self.0.producer_replacements.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// The group consumer was replaced (see the processor's `replace_consumer`) for `reason`.
    pub fn consumer_replaced(&self, reason: &str) {
        self.0.consumer_replacements.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn tick_published(&self, job: &str, trigger: &str, fire_time: chrono::DateTime<chrono::Utc>) {
        let m = &self.0;
        m.ticks_published.get_or_create(&JobTrigger { job: job.into(), trigger: trigger.to_lowercase() }).inc();
        if trigger != "MANUAL" {
            m.last_fire_time.get_or_create(&JobLabels { job: job.into() }).set(fire_time.timestamp_millis() as f64 / 1000.0);
        }
    }

    pub fn tick_failed(&self) {
        self.0.tick_failures.inc();
    }

    /// The processor group's partitions now assigned to this instance (its consumer's view after
    /// each step). Lag is exported for these only; the series of a partition no longer assigned
    /// is removed at once, so after a rebalance no two instances export the same partition.
    pub fn set_assignment(&self, assignment: Assignment) {
        let Ok(mut current) = self.0.assignment.lock() else { return };
        if current.as_ref() == Some(&assignment) {
            return;
        }
        if let Some(old) = current.take() {
            for (topic, partition) in old.partitions {
                if old.group != assignment.group || !assignment.partitions.contains(&(topic.clone(), partition)) {
                    self.0.partition_lag.remove(&GroupPartition { group: old.group.clone(), topic, partition });
                }
            }
        }
        *current = Some(assignment);
    }

    /// The assignment last reported by [`Metrics::set_assignment`].
    pub fn assignment(&self) -> Option<Assignment> {
        self.0.assignment.lock().ok().and_then(|a| a.clone())
    }

    /// Exports measured (topic, partition, lag) of the processor group `group`, for the
    /// partitions still assigned: a measurement that raced a rebalance does not bring a lost
    /// partition's series back.
    fn set_partition_lags(&self, group: &str, lags: &[(String, i32, i64)]) {
        let Ok(current) = self.0.assignment.lock() else { return };
        let Some(owned) = current.as_ref().filter(|a| a.group == group) else { return };
        for (topic, partition, lag) in lags {
            if owned.partitions.contains(&(topic.clone(), *partition)) {
                self.0.partition_lag.get_or_create(&GroupPartition { group: group.into(), topic: topic.clone(), partition: *partition }).set(*lag);
            }
        }
    }

    /// Marks the process ready, or not ready with the reason `/readyz` reports.
    pub fn set_ready(&self, ready: Result<(), String>) {
        self.0.ready_gauge.set(i64::from(ready.is_ok()));
        match ready {
            Ok(()) => self.0.ready.store(true, Ordering::SeqCst),
            Err(why) => {
                if let Ok(mut r) = self.0.not_ready_because.lock() {
                    *r = why;
                }
                self.0.ready.store(false, Ordering::SeqCst);
            }
        }
    }

    pub fn readiness(&self) -> Result<(), String> {
        if self.0.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(self.0.not_ready_because.lock().map(|r| r.clone()).unwrap_or_else(|_| "not ready".into()))
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.0.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Every series name the processes can export (`..._total` of a counter, `..._bucket`,
/// `_sum`, `_count` of a histogram, a gauge's own name), read from the exposition of a registry
/// in which each family got one sample. A family appears in `/metrics` only with its first
/// sample, so scraping a fresh process cannot list them; dashboards and alert rules are
/// checked against this list (`tests/deploy.rs`).
pub fn exported_series() -> BTreeSet<String> {
    let m = Metrics::new();
    let job = "job".to_string();
    m.record(&[
        Sample::Handled { kind: "tick" },
        Sample::Chunk { job: job.clone(), outcome: "applied", counts: BTreeMap::from([("n".to_string(), 1)]), seconds: 1.0 },
        Sample::Run { job: job.clone(), outcome: "SUCCEEDED".into(), seconds: 1.0 },
        Sample::Emitted { topic: "t".into(), count: 1 },
        Sample::DeadLetter { reason: "r".into() },
        Sample::TickDelay { job: job.clone(), seconds: 1.0 },
        Sample::MissedFireTime { job: job.clone() },
        Sample::Succeeded { job: job.clone(), at: 1.0 },
        Sample::Streak { job: job.clone(), failures: 1 },
    ]);
    m.aborted();
    m.producer_replaced("stuck");
    m.consumer_replaced("fenced");
    m.tick_published(&job, "SCHEDULED", chrono::Utc::now());
    m.tick_failed();
    m.set_assignment(Assignment { group: "g".into(), partitions: BTreeSet::from([("t".to_string(), 0)]) });
    m.set_partition_lags("g", &[("t".into(), 0, 1)]);
    m.0.lag.get_or_create(&GroupTopic { group: "g".into(), topic: "t".into() }).set(1);
    m.0.lag_errors.inc();
    m.encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Binds `metrics.listen`; `None` when it is empty (no endpoint).
pub async fn bind(settings: &Settings) -> Result<Option<tokio::net::TcpListener>, MetricsError> {
    let addr = settings.metrics.listen.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr: addr.to_string(), source })?;
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "serving /metrics, /healthz and /readyz");
    }
    Ok(Some(listener))
}

/// Serves the endpoints on `listener` until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> Result<(), MetricsError> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let scrape = metrics.clone();
    let ready = metrics;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = scrape.encode();
                async move { ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.readiness();
                async move {
                    match r {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).await.map_err(MetricsError::Serve)
}

/// Measures consumer-group lag: the processor's own group on the partitions of its inputs
/// assigned to this instance, and every configured downstream group on its topics as a whole.
/// Committed offsets are read with one non-member consumer per group (it never joins, so it
/// cannot disturb the group).
pub struct LagMonitor {
    own: (String, BaseConsumer),
    downstream: Vec<(String, Vec<String>, BaseConsumer)>,
}

/// A consumer that looks up `group`'s committed offsets without joining it.
fn looker(settings: &Settings, group: &str) -> Result<BaseConsumer, kafka::KafkaClientError> {
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", group).set("enable.auto.commit", "false");
    cfg.create().map_err(|e| kafka::KafkaClientError::kafka("create lag consumer", e))
}

impl LagMonitor {
    pub fn new(settings: &Settings) -> Result<LagMonitor, kafka::KafkaClientError> {
        let group = settings.processor.group_id.clone();
        let own = (group.clone(), looker(settings, &group)?);
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Validated with the settings: a bad pair never gets here.
        for (group, topic) in settings.metrics.downstream_pairs().unwrap_or_default() {
            groups.entry(group).or_default().push(format!("{}{}", settings.topics.prefix, topic));
        }
        let mut downstream = Vec::new();
        for (group, topics) in groups {
            let consumer = looker(settings, &group)?;
            downstream.push((group, topics, consumer));
        }
        Ok(LagMonitor { own, downstream })
    }

    /// The processor group's lag on each `assigned` (topic, partition), as
    /// (topic, partition, lag) (blocking: call off the async workers).
    pub fn measure_assigned(&self, assigned: &BTreeSet<(String, i32)>, timeout: Duration) -> Result<Vec<(String, i32, i64)>, String> {
        let (group, consumer) = &self.own;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in assigned {
            by_topic.entry(topic).or_default().push(*partition);
        }
        let mut out = Vec::new();
        for (topic, partitions) in by_topic {
            let lags = partition_lags(consumer, topic, &partitions, timeout).map_err(|e| format!("{group} on {topic}: {e}"))?;
            out.extend(lags.into_iter().map(|(p, lag)| (topic.to_string(), p, lag)));
        }
        Ok(out)
    }

    /// (group, topic, lag) of the processor group on each of its inputs as a whole, then of
    /// each downstream pair (blocking): the console's view, from outside the group.
    pub fn measure_all(&self, settings: &Settings, timeout: Duration) -> Vec<Result<(String, String, i64), String>> {
        let (group, consumer) = &self.own;
        let inputs = [settings.topic(crate::config::Topic::Tick), settings.topic(crate::config::Topic::WorkItems)];
        let mut out: Vec<_> = inputs
            .into_iter()
            .map(|topic| lag_of(consumer, &topic, timeout).map(|lag| (group.clone(), topic.clone(), lag)).map_err(|e| format!("{group} on {topic}: {e}")))
            .collect();
        out.extend(self.measure_downstream(timeout));
        out
    }

    /// (group, topic, lag) for each downstream pair (blocking: call off the async workers).
    pub fn measure_downstream(&self, timeout: Duration) -> Vec<Result<(String, String, i64), String>> {
        let mut out = Vec::new();
        for (group, topics, consumer) in &self.downstream {
            for topic in topics {
                out.push(lag_of(consumer, topic, timeout).map(|lag| (group.clone(), topic.clone(), lag)).map_err(|e| format!("{group} on {topic}: {e}")));
            }
        }
        out
    }
}

/// The consumer's group's lag on all of `topic`, summed over its partitions.
fn lag_of(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<i64, String> {
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| e.to_string())?;
    let t = md.topics().iter().find(|t| t.name() == topic).ok_or("no such topic")?;
    if t.partitions().is_empty() {
        return Err(format!("no partitions ({:?})", t.error()));
    }
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    Ok(partition_lags(consumer, topic, &partitions, timeout)?.into_iter().map(|(_, lag)| lag).sum())
}

/// The consumer's group's lag on each of `partitions` of `topic`: high watermark minus
/// committed offset; a partition without a committed offset counts from its low watermark.
fn partition_lags(consumer: &BaseConsumer, topic: &str, partitions: &[i32], timeout: Duration) -> Result<Vec<(i32, i64)>, String> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout).map_err(|e| e.to_string())?;
        let from = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        out.push((e.partition(), (high - from).max(0)));
    }
    Ok(out)
}

/// Measures lag every `metrics.lag_interval_secs` into `metrics` (runs until dropped).
pub async fn watch_lag(settings: Settings, metrics: Metrics) {
    let monitor = match LagMonitor::new(&settings) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            tracing::warn!(error = %e, "consumer-group lag will not be measured");
            return;
        }
    };
    let every = Duration::from_secs(settings.metrics.lag_interval_secs.max(1));
    let timeout = Duration::from_secs(10);
    loop {
        let m = monitor.clone();
        // Only the processor group's partitions this instance holds (none before it joined).
        let assigned = metrics.assignment().filter(|a| a.group == settings.processor.group_id).map(|a| a.partitions).unwrap_or_default();
        match tokio::task::spawn_blocking(move || (m.measure_assigned(&assigned, timeout), m.measure_downstream(timeout))).await {
            Ok((own, downstream)) => {
                match own {
                    Ok(lags) => metrics.set_partition_lags(&settings.processor.group_id, &lags),
                    Err(e) => {
                        metrics.0.lag_errors.inc();
                        tracing::debug!(error = %e, "lag measurement failed");
                    }
                }
                for r in downstream {
                    match r {
                        Ok((group, topic, lag)) => {
                            metrics.0.lag.get_or_create(&GroupTopic { group, topic }).set(lag);
                        }
                        Err(e) => {
                            metrics.0.lag_errors.inc();
                            tracing::debug!(error = %e, "lag measurement failed");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lag measurement task failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Starts the endpoint (if `metrics.listen` is set) and, for the processor, the lag watcher.
/// The returned handles are aborted when dropped via [`Endpoint`].
pub async fn start(settings: &Settings, metrics: &Metrics, watch_groups: bool) -> Result<Endpoint, MetricsError> {
    let mut tasks = Vec::new();
    let mut addr = None;
    if let Some(listener) = bind(settings).await? {
        addr = listener.local_addr().ok();
        let m = metrics.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = serve(listener, m).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        }));
        if watch_groups {
            tasks.push(tokio::spawn(watch_lag(settings.clone(), metrics.clone())));
        }
    }
    Ok(Endpoint { tasks, addr })
}

/// The running endpoint; stops when dropped.
pub struct Endpoint {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub addr: Option<SocketAddr>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_family_is_in_the_exported_series() {
        let series = exported_series();
        let registered = Metrics::new().encode().matches("# TYPE ").count();
        for name in ["scheduled_jobs_runs_total", "scheduled_jobs_run_duration_seconds_bucket", "scheduled_jobs_consumer_group_lag", "scheduled_jobs_tick_delay_seconds_count"] {
            assert!(series.contains(name), "{name} missing from {series:?}");
        }
        // One sample name per counter or gauge family, three per histogram (bucket, sum, count),
        // plus counters' `_created` where the client writes one.
        let families: BTreeSet<&str> = series
            .iter()
            .map(|s| s.trim_end_matches("_total").trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count").trim_end_matches("_created"))
            .collect();
        // Every family registered got its sample: a family added to `Metrics::new` without
        // one in `exported_series` fails here (its count below the 22 registered).
        assert_eq!(families.len(), 22, "{families:?}");
        assert!(registered < families.len(), "a fresh registry shows only the families without labels ({registered})");
    }

    #[test]
    fn committed_samples_move_the_counters_and_aborts_are_counted_apart() {
        let m = Metrics::new();
        m.record(&[
            Sample::Handled { kind: "work-item" },
            Sample::Chunk {
                job: "order-expiration".into(),
                outcome: "applied",
                counts: [("ordersCancelled".to_string(), 7i64)].into_iter().collect(),
                seconds: 0.02,
            },
            Sample::Run { job: "order-expiration".into(), outcome: "SUCCEEDED".into(), seconds: 1.5 },
            Sample::Emitted { topic: "order.cancelled".into(), count: 7 },
        ]);
        m.aborted();
        let text = m.encode();
        for line in [
            "scheduled_jobs_job_items_total{job=\"order-expiration\",counter=\"ordersCancelled\"} 7",
            "scheduled_jobs_runs_total{job=\"order-expiration\",outcome=\"succeeded\"} 1",
            "scheduled_jobs_records_emitted_total{topic=\"order.cancelled\"} 7",
            "scheduled_jobs_transactions_total{kind=\"committed\"} 1",
            "scheduled_jobs_transactions_total{kind=\"aborted\"} 1",
            "scheduled_jobs_records_handled_total{kind=\"work-item\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }

    /// The `le` bounds of `metric`'s buckets for `job`, in order (`+Inf` last).
    fn bucket_bounds(text: &str, metric: &str, job: &str) -> Vec<(String, u64)> {
        let prefix = format!("scheduled_jobs_{metric}_bucket{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(&format!("job=\"{job}\"")))
            .map(|l| {
                let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_string();
                let n = l.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
                (le, n)
            })
            .collect()
    }

    #[test]
    fn duration_histograms_cover_the_run_timeouts() {
        let m = Metrics::new();
        // A stock-sync run of 30 min (its timeout) and a chunk of 25 min.
        m.record(&[
            Sample::Run { job: "stock-sync".into(), outcome: "TIMED_OUT".into(), seconds: 1_800.0 },
            Sample::Chunk { job: "stock-sync".into(), outcome: "applied", counts: BTreeMap::new(), seconds: 1_500.0 },
        ]);
        let text = m.encode();
        for metric in ["run_duration_seconds", "chunk_duration_seconds"] {
            let buckets = bucket_bounds(&text, metric, "stock-sync");
            assert!(buckets.len() <= 25, "{metric}: {} buckets is too many series per job", buckets.len());
            let finite: Vec<(f64, u64)> =
                buckets.iter().filter(|(le, _)| le != "+Inf").map(|(le, n)| (le.parse::<f64>().expect("numeric le"), *n)).collect();
            let top = finite.last().expect("finite buckets").0;
            assert!(top >= 3_600.0, "{metric}: largest finite bucket {top} s is under an hour");
            // Cumulative counts: the observation is inside a finite bucket, not only in +Inf.
            let first_holding = finite.iter().find(|(_, n)| *n == 1).map(|(le, _)| *le);
            assert!(matches!(first_holding, Some(le) if le <= 2_700.0), "{metric}: observation not in a finite bucket: {buckets:?}");
        }
    }

    fn assignment(group: &str, partitions: &[(&str, i32)]) -> Assignment {
        Assignment { group: group.into(), partitions: partitions.iter().map(|(t, p)| (t.to_string(), *p)).collect() }
    }

    #[test]
    fn partition_lag_is_exported_for_assigned_partitions_only_and_cleared_when_they_move() {
        let m = Metrics::new();
        let series = |topic: &str, p: i32| format!("scheduled_jobs_consumer_partition_lag{{group=\"g\",topic=\"{topic}\",partition=\"{p}\"}}");
        // Not a member yet: nothing to export.
        m.set_partition_lags("g", &[("tick".into(), 0, 5)]);
        assert!(!m.encode().contains(&series("tick", 0)));
        m.set_assignment(assignment("g", &[("tick", 0), ("tick", 1)]));
        m.set_partition_lags("g", &[("tick".into(), 0, 5), ("tick".into(), 1, 0), ("tick".into(), 2, 9)]);
        let text = m.encode();
        assert!(text.contains(&format!("{} 5\n", series("tick", 0))), "{text}");
        assert!(text.contains(&format!("{} 0\n", series("tick", 1))), "{text}");
        assert!(!text.contains(&series("tick", 2)), "partition 2 is another instance's: {text}");
        // A rebalance takes partition 0 away: its series goes at once, before any new measurement.
        m.set_assignment(assignment("g", &[("tick", 1), ("tick", 3)]));
        let text = m.encode();
        assert!(!text.contains(&series("tick", 0)), "{text}");
        assert!(text.contains(&series("tick", 1)), "{text}");
        // A measurement taken before the rebalance does not bring it back.
        m.set_partition_lags("g", &[("tick".into(), 0, 5)]);
        assert!(!m.encode().contains(&series("tick", 0)));
    }

    #[test]
    fn readiness_reports_why_not() {
        let m = Metrics::new();
        assert_eq!(m.readiness(), Err("starting".into()));
        assert!(m.encode().contains("\nscheduled_jobs_ready 0\n"), "{}", m.encode());
        m.set_ready(Ok(()));
        assert_eq!(m.readiness(), Ok(()));
        assert!(m.encode().contains("\nscheduled_jobs_ready 1\n"), "{}", m.encode());
        m.set_ready(Err("transaction failed".into()));
        assert_eq!(m.readiness(), Err("transaction failed".into()));
        assert!(m.encode().contains("\nscheduled_jobs_ready 0\n"), "{}", m.encode());
    }
}
