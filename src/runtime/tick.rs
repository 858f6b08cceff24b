//! The tick producer (`scheduled-jobs tick`) and manual triggers (`scheduled-jobs trigger`).
//!
//! Role: turn each enabled job's cron schedule into `scheduler.tick` records ("run <job> for
//! the fire time <scheduledAt>"), keyed by job so one job's ticks stay ordered on one partition.
//!
//! Guarantee: at-least-once per fire time, and duplicates are harmless. The producer is
//! idempotent (acks=all) and waits for each delivery before moving its per-job cursor, so a
//! fire time is never skipped while the producer runs; SCHEDULED and CATCH_UP ticks carry the
//! deterministic id `Tick::scheduled_id(job, scheduledAt)`, so a retry, a restart or a second
//! producer side by side (E4) publishes the same id and the processor runs it once.
//! After downtime the producer learns where it stopped from the tick topic itself (no local
//! state to lose or to disagree between two hosts) and catches up by each job's policy.
//!
//! The loop is exposed one step at a time ([`TickProducer::start`], [`TickProducer::next_due`],
//! [`TickProducer::publish_due`], each taking `now`) so tests drive it without sleeping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::kafka::codec::{Codec, CodecError};
use crate::config::{job_key, CatchUp, ConfigError, Settings, Topic};
use crate::error::ErrorClass;
use crate::kafka::read::{self, BoundedRead, EofContext, ReadError};
use crate::kafka::{self, KafkaClientError, Role};
use crate::runtime::metrics::Metrics;
use crate::runtime::retry::{self, Backoff};
use crate::schedule::{Schedule, ScheduleError};
use crate::wire::tick::{Tick, Trigger};

/// Records read per step when scanning a partition backwards for a job's last tick.
pub const HISTORY_WINDOW: i64 = 200;
/// Bound on one metadata request or one history window read.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `send` may wait for room in librdkafka's queue (delivery has its own timeout).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// The loop re-reads the wall clock at least this often, so a clock jump or a suspended host
/// is noticed instead of sleeping on a stale deadline.
const MAX_SLEEP: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("unknown job `{job}` (configured jobs: {known})")]
    UnknownJob { job: String, known: String },
    #[error("job `{job}` is disabled (setting `jobs.{key}.enabled` is false){}; enable it with `jobs.{key}.enabled = true` in the configuration file or SJ_JOBS__{}__ENABLED=true",
        if *test_job { ": it is a test job, not part of a production configuration" } else { "" }, key.to_ascii_uppercase())]
    JobDisabled { job: String, key: String, test_job: bool },
    /// A manual tick the processor would send to dead letters (a parameter it does not accept).
    #[error("tick not published: {0}")]
    InvalidTick(String),
    #[error("invalid setting `jobs.{key}.schedule`: {source}")]
    Schedule { key: String, source: ScheduleError },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tick topic `{topic}` is unavailable: {message}")]
    Unavailable { topic: String, message: String },
    /// Kafka failed, or the tick topic is missing ([`KafkaClientError::NoSuchTopic`]).
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the tick producer publishes scheduled ticks only after `start` (it must learn its history first)")]
    NotStarted,
    #[error("background task failed: {0}")]
    Task(String),
}

impl TickError {
    /// Whether the same step may succeed later (the run loop retries it with backoff).
    pub fn class(&self) -> ErrorClass {
        match self {
            TickError::Unavailable { .. } => ErrorClass::Retry,
            TickError::Codec(e) => e.class(),
            TickError::Kafka(KafkaClientError::Kafka { source, .. })
                // A delivery that timed out (broker down longer than message.timeout.ms) or a
                // full queue is transient for a producer that is not transactional: the
                // idempotent producer bumps its epoch and the next send can succeed.
                if matches!(
                    source.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull)
                ) =>
            {
                ErrorClass::Retry
            }
            TickError::Kafka(e) => e.class(),
            _ => ErrorClass::Fatal,
        }
    }
}

/// One scheduled job as the producer tracks it.
struct JobState {
    /// Wire name (`order-expiration`).
    name: String,
    schedule: Schedule,
    catch_up: CatchUp,
    max_catch_up: u32,
    /// Upper bound of the delay before a fire time's tick is published ([`jitter`]).
    jitter: TimeDelta,
    /// What every tick of this job carries as `scheduleVersion`.
    version: String,
    /// Fire times up to and including this instant are published (or deliberately not).
    /// `None` until `start` has read the job's history.
    cursor: Option<DateTime<Utc>>,
}

impl JobState {
    /// When the tick of fire time `at` is due: `at` plus its jitter.
    fn due_at(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at + jitter(&self.name, at, self.jitter)
    }
}

/// The delay of fire time `at`'s tick, in `[0, bound]` whole milliseconds: derived from the job
/// and the fire time only, so redundant producers publish the same fire time at the same
/// moment, and different fire times (and jobs) spread over the bound. The tick keeps its fire
/// time (`scheduledAt`, hence its id and period): only its publication moves.
pub fn jitter(job: &str, at: DateTime<Utc>, bound: TimeDelta) -> TimeDelta {
    let bound_ms = bound.num_milliseconds();
    if bound_ms <= 0 {
        return TimeDelta::zero();
    }
    let id = crate::wire::derived_id(&["jitter", job, &at.timestamp_millis().to_string()]);
    let n = u64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    TimeDelta::milliseconds((n % (bound_ms as u64 + 1)) as i64)
}

/// Encodes and sends ticks, waiting for the broker's acknowledgement.
struct Publisher {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
    name: String,
    metrics: Metrics,
}

impl Publisher {
    fn new(settings: &Settings) -> Result<Publisher, TickError> {
        // Role::Producer is idempotent with acks=all (retries inside librdkafka never
        // duplicate or reorder a job's ticks) and hashes keys like the Java clients.
        let cfg = kafka::client_config(settings, Role::Producer);
        Ok(Publisher {
            producer: kafka::create(&cfg)?,
            codec: Codec::new(settings)?,
            topic: settings.topic(Topic::Tick),
            name: producer_name(settings),
            metrics: Metrics::new(),
        })
    }

    fn scheduled(&self, job: &JobState, at: DateTime<Utc>, trigger: Trigger, now: DateTime<Utc>) -> Tick {
        let mut tick = Tick::for_fire_time(&job.name, at, trigger, Some(self.name.clone()));
        tick.produced_at = millis(now);
        tick.schedule_version = Some(job.version.clone());
        tick
    }

    async fn publish(&self, tick: &Tick) -> Result<(), TickError> {
        let payload = self.codec.encode(&self.topic, tick.to_avro()).await?;
        let record = FutureRecord::to(&self.topic).key(tick.job.as_str()).payload(&payload);
        let delivery = self
            .producer
            .send(record, Timeout::After(QUEUE_TIMEOUT))
            .await
            .map_err(|(e, _)| KafkaClientError::kafka("deliver tick", e))?;
        tracing::info!(
            job = %tick.job,
            tick_id = %tick.tick_id,
            scheduled_at = %tick.scheduled_at.to_rfc3339(),
            trigger = tick.trigger.as_str(),
            partition = delivery.partition,
            offset = delivery.offset,
            "published tick"
        );
        self.metrics.tick_published(&tick.job, tick.trigger.as_str(), tick.scheduled_at);
        Ok(())
    }
}

/// The tick producer: one per process; several side by side are safe.
pub struct TickProducer {
    publisher: Publisher,
    jobs: Vec<JobState>,
    /// Consumer configuration for reading the tick topic's tail (read_committed).
    history: ClientConfig,
    /// History ticks scheduled further ahead are ignored: the processor dead-letters them,
    /// and a bogus far-future tick must not freeze the schedule until then.
    max_future: TimeDelta,
    settings: Settings,
}

impl TickProducer {
    /// Connects (checking that the tick topic exists) and parses every enabled job's schedule.
    /// Jobs with an empty schedule are never scheduled (trigger-only).
    pub async fn new(settings: &Settings) -> Result<TickProducer, TickError> {
        let tz = settings.time_zone()?;
        let mut jobs = Vec::new();
        for (key, job) in settings.jobs.iter().filter(|(_, j)| j.enabled && !j.schedule.trim().is_empty()) {
            let schedule = Schedule::parse(&job.schedule, tz)
                .map_err(|source| TickError::Schedule { key: key.clone(), source })?;
            jobs.push(JobState {
                name: wire_name(key),
                schedule,
                catch_up: job.catch_up,
                max_catch_up: job.max_catch_up,
                jitter: TimeDelta::seconds(job.jitter_secs.min(i64::MAX as u64 / 1000) as i64),
                version: job.schedule_version(tz),
                cursor: None,
            });
        }
        tick_partitions(settings).await?;
        let mut history = kafka::client_config(settings, Role::Consumer);
        // librdkafka wants a group id even for assign(); nothing is ever committed under it.
        history
            .set("group.id", format!("{}-tick-history-{}", settings.kafka.client_id, uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            // Windows end at the partition's end: do not long-poll there.
            .set("fetch.wait.max.ms", "50");
        Ok(TickProducer {
            publisher: Publisher::new(settings)?,
            jobs,
            history,
            max_future: i64::try_from(settings.processor.max_future_secs)
                .ok()
                .and_then(TimeDelta::try_seconds)
                .unwrap_or(TimeDelta::MAX),
            settings: settings.clone(),
        })
    }

    /// Wire names of the jobs this producer schedules.
    pub fn jobs(&self) -> Vec<&str> {
        self.jobs.iter().map(|j| j.name.as_str()).collect()
    }

    /// Per scheduled job, the latest fire time a SCHEDULED or CATCH_UP tick was published for,
    /// read back from the tick topic (read_committed). Each partition is scanned from its end
    /// backwards, [`HISTORY_WINDOW`] records at a time, until every job has been seen in it or
    /// its start is reached; the maximum over partitions wins (a job's ticks move partition
    /// only if the topic grew). Undecodable records and MANUAL ticks are skipped.
    pub async fn last_fire_times(&self, now: DateTime<Utc>) -> Result<BTreeMap<String, DateTime<Utc>>, TickError> {
        let wanted: BTreeSet<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
        let mut last: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(last);
        }
        let horizon = now.checked_add_signed(self.max_future).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let topic = self.publisher.topic.clone();
        let partitions = tick_partitions(&self.settings).await?;
        let cfg = self.history.clone();
        let consumer: Arc<BaseConsumer<EofContext>> =
            Arc::new(blocking(move || read::eof_consumer(&cfg, "tick history").map_err(TickError::from)).await?);
        // All watermarks before the first assignment (see `read::watermarks`).
        let (c, t) = (consumer.clone(), topic.clone());
        let watermarks = blocking(move || {
            read::watermarks(&c, &t, partitions, KAFKA_TIMEOUT).map_err(|e| KafkaClientError::kafka("fetch watermarks", e).into())
        })
        .await?;
        for (partition, (low, high)) in watermarks {
            let mut seen: BTreeSet<String> = BTreeSet::new();
            let mut hi = high;
            while hi > low && seen.len() < wanted.len() {
                let lo = (hi - HISTORY_WINDOW).max(low);
                let (c, t) = (consumer.clone(), topic.clone());
                let payloads = blocking(move || read_window(&c, &t, partition, lo, hi)).await?;
                for payload in payloads {
                    // Anything that is not a tick we understand is not history: skip it.
                    let Ok(decoded) = self.publisher.codec.decode(&payload).await else { continue };
                    let Ok(tick) = Tick::from_avro(decoded.value) else { continue };
                    if tick.trigger == Trigger::Manual
                        || tick.scheduled_at > horizon
                        || !wanted.contains(tick.job.as_str())
                    {
                        continue;
                    }
                    seen.insert(tick.job.clone());
                    let at = last.entry(tick.job).or_insert(tick.scheduled_at);
                    *at = (*at).max(tick.scheduled_at);
                }
                hi = lo;
            }
            tracing::debug!(partition, low, high, scanned_from = hi, "read tick history");
        }
        Ok(last)
    }

    /// Learns each job's last fire time from Kafka and publishes the CATCH_UP ticks for fire
    /// times missed in (last, now] by the job's policy. A job with no history at all (first
    /// ever start) starts from `now` without catch-up. Afterwards [`Self::publish_due`] works.
    pub async fn start(&mut self, now: DateTime<Utc>) -> Result<Vec<Tick>, TickError> {
        let last = self.last_fire_times(now).await?;
        let mut published = Vec::new();
        for job in &mut self.jobs {
            let Some(&prev) = last.get(&job.name) else {
                tracing::info!(job = %job.name, "no tick history, starting from now");
                job.cursor = Some(now);
                continue;
            };
            for at in catch_up_times(&job.schedule, prev, now, job.catch_up, job.max_catch_up) {
                let tick = self.publisher.scheduled(job, at, Trigger::CatchUp, now);
                self.publisher.publish(&tick).await?;
                published.push(tick);
            }
            // Fire times skipped by the policy are deliberately not published; a history ahead
            // of our clock (another producer, clock skew) is not published twice.
            job.cursor = Some(prev.max(now));
        }
        Ok(published)
    }

    /// The earliest fire time not yet published, over all jobs (`None` before `start` or
    /// when no job is scheduled).
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.jobs.iter().filter_map(|j| Some(j.due_at(j.schedule.next_after(j.cursor?)?))).min()
    }

    /// Publishes a SCHEDULED tick for every fire time not yet published whose tick is due by
    /// `now` (its fire time plus its jitter), oldest first per job, waiting for each
    /// acknowledgement before moving that job's cursor. A fire time waits for the one before it.
    pub async fn publish_due(&mut self, now: DateTime<Utc>) -> Result<Vec<Tick>, TickError> {
        let mut published = Vec::new();
        for job in &mut self.jobs {
            let cursor = job.cursor.ok_or(TickError::NotStarted)?;
            let due: Vec<DateTime<Utc>> = job.schedule.fire_times(cursor, now).take_while(|at| job.due_at(*at) <= now).collect();
            for at in due {
                let tick = self.publisher.scheduled(job, at, Trigger::Scheduled, now);
                self.publisher.publish(&tick).await?;
                job.cursor = Some(at);
                published.push(tick);
            }
        }
        Ok(published)
    }
}

/// `scheduled-jobs tick`: start (with catch-up), then publish each fire time when it is due
/// until `shutdown` completes. Transient failures are retried with backoff; fatal ones
/// (configuration, authorization, a fatal producer error) end it with the error.
pub async fn run_producer(settings: &Settings, metrics: &Metrics, shutdown: impl Future<Output = ()>) -> Result<(), TickError> {
    tokio::pin!(shutdown);
    // One backoff for the whole run: failures right after start-up keep waiting longer.
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let started = std::time::Instant::now();
    let grace = Duration::from_secs(settings.kafka.missing_topic_grace_secs);
    let attempt = || async {
        let start = async {
            let mut p = TickProducer::new(settings).await?;
            p.publisher.metrics = metrics.clone();
            p.start(Utc::now()).await?;
            Ok::<_, TickError>(p)
        };
        // Every failure is classed after the grace and shown on /readyz, fatal ones too.
        start.await.map_err(|e| {
            let e = within_grace(e, started.elapsed(), grace);
            metrics.set_ready(Err(format!("not started: {e}")));
            e
        })
    };
    let Some(mut producer) = retry::until_ok(&mut backoff, shutdown.as_mut(), attempt, TickError::class, log_retry).await? else {
        return Ok(());
    };
    metrics.set_ready(Ok(()));
    tracing::info!(jobs = ?producer.jobs(), next_due = ?producer.next_due().map(|t| t.to_rfc3339()), "tick producer started");
    loop {
        let wait = producer
            .next_due()
            .map_or(MAX_SLEEP, |due| (due - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut shutdown => break,
        }
        let result = tokio::select! {
            r = producer.publish_due(Utc::now()) => r,
            _ = &mut shutdown => break,
        };
        match result {
            Ok(_) => {
                backoff.reset();
                metrics.set_ready(Ok(()));
            }
            Err(e) => {
                metrics.tick_failed();
                metrics.set_ready(Err(format!("publishing failed: {e}")));
                // A fatal error is returned: the caller reports it (the CLI prints it, exits 1).
                if backoff.wait_out(e, TickError::class, log_retry, shutdown.as_mut()).await? {
                    break;
                }
            }
        }
    }
    tracing::info!("tick producer stopped");
    Ok(())
}

/// A tick topic reported unknown at start-up is retried for `grace` (setting
/// `kafka.missing_topic_grace_secs`): a restarting broker answers `UnknownTopicOrPartition`
/// for existing topics until it has loaded their logs, which takes minutes on a broker with
/// many partitions. After that it is the fatal "does not exist".
fn within_grace(e: TickError, elapsed: Duration, grace: Duration) -> TickError {
    match e {
        TickError::Kafka(KafkaClientError::NoSuchTopic { topic, .. }) if elapsed < grace => TickError::Unavailable {
            topic,
            message: format!(
                "reported unknown (a restarting broker does this until it has loaded its logs); \
                 retried for up to {} s after start-up (kafka.missing_topic_grace_secs)",
                grace.as_secs()
            ),
        },
        e => e,
    }
}

/// A retriable failure is logged before it is waited out.
fn log_retry(e: &TickError, wait: Duration) {
    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "transient failure, retrying");
}

/// A manual tick of `job` for `at` (default now), checked as the processor will check it: an
/// unknown or disabled job, or a parameter the job does not accept, is refused here, where the
/// user sees why. Not published.
pub fn manual_tick(settings: &Settings, job: &str, at: Option<DateTime<Utc>>, params: BTreeMap<String, String>) -> Result<Tick, TickError> {
    let key = job_key(job);
    let Some(job_settings) = settings.jobs.get(&key) else {
        let known: Vec<String> = settings.listed_jobs().map(|(k, _)| wire_name(k)).collect();
        return Err(TickError::UnknownJob { job: job.to_string(), known: known.join(", ") });
    };
    let name = wire_name(&key);
    if !job_settings.enabled {
        let test_job = crate::config::off_by_default(&key);
        return Err(TickError::JobDisabled { job: name, key, test_job });
    }
    let now = millis(Utc::now());
    let tick = Tick {
        tick_id: uuid::Uuid::new_v4().to_string(),
        job: name,
        scheduled_at: at.map_or(now, millis),
        produced_at: now,
        trigger: Trigger::Manual,
        parameters: params,
        producer: None,
        schedule_version: None,
    };
    if let Some(j) = crate::jobs::Registry::builtin().get(&tick.job) {
        crate::jobs::check_tick(j.as_ref(), &tick).map_err(|e| match e {
            crate::jobs::JobError::InvalidTick(why) => TickError::InvalidTick(why),
            other => TickError::InvalidTick(other.to_string()),
        })?;
    }
    Ok(tick)
}

/// Publishes manual ticks made by [`manual_tick`], in order, through one producer.
pub async fn publish_manual(settings: &Settings, ticks: &mut [Tick]) -> Result<(), TickError> {
    if ticks.is_empty() {
        return Ok(());
    }
    // Checked first: a producer sending to a missing topic could have it auto-created with
    // broker defaults instead of our partitions and retention.
    tick_partitions(settings).await?;
    let publisher = Publisher::new(settings)?;
    for tick in ticks.iter_mut() {
        tick.producer = Some(publisher.name.clone());
        publisher.publish(tick).await?;
    }
    Ok(())
}

/// Publishes a manual tick of `job` for `at` (default now): `trigger <job> [--at T]`.
pub async fn trigger(
    settings: &Settings,
    job: &str,
    at: Option<DateTime<Utc>>,
    params: BTreeMap<String, String>,
) -> Result<Tick, TickError> {
    let mut ticks = [manual_tick(settings, job, at, params)?];
    publish_manual(settings, &mut ticks).await?;
    let [tick] = ticks;
    Ok(tick)
}

/// The fire times a restart publishes for (last, now]: Latest → only the most recent; All →
/// every one, oldest first, but at most the `max` most recent.
fn catch_up_times(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: CatchUp,
    max: u32,
) -> Vec<DateTime<Utc>> {
    let keep = match policy {
        CatchUp::Latest => 1,
        CatchUp::All => usize::try_from(max.max(1)).unwrap_or(usize::MAX),
    };
    // A ring of the last `keep`: the missed range can be long, the result never is.
    let mut ring = VecDeque::with_capacity(keep.min(1024));
    for at in schedule.fire_times(last, now) {
        if ring.len() == keep {
            ring.pop_front();
        }
        ring.push_back(at);
    }
    ring.into()
}

/// The name written into each tick: `scheduler.producer_id`, else the host name.
pub fn producer_name(settings: &Settings) -> String {
    let id = settings.scheduler.producer_id.trim();
    if !id.is_empty() {
        return id.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tick-producer".into())
}

/// Settings key (`order_expiration`) to wire name (`order-expiration`).
fn wire_name(key: &str) -> String {
    key.replace('_', "-")
}

/// Avro timestamps are milliseconds: truncate so a returned tick equals its decoded record.
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

/// Runs a blocking librdkafka call off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TickError> + Send + 'static,
) -> Result<T, TickError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| TickError::Task(e.to_string()))?
}

/// The tick topic's partitions; [`KafkaClientError::NoSuchTopic`] if it does not exist.
async fn tick_partitions(settings: &Settings) -> Result<Vec<i32>, TickError> {
    let settings = settings.clone();
    blocking(move || {
        let topic = settings.topic(Topic::Tick);
        let md = kafka::metadata(&settings, Some(&topic), KAFKA_TIMEOUT)?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Err(KafkaClientError::no_such_topic(topic).into());
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None if !t.partitions().is_empty() => Ok(t.partitions().iter().map(|p| p.id()).collect()),
            None | Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Err(KafkaClientError::no_such_topic(topic).into()),
            Some(code) => Err(TickError::Unavailable { topic, message: code.to_string() }),
        }
    })
    .await
}

/// Payloads of the committed records at offsets [lo, hi) of one partition (blocking).
/// Control records and aborted transactions leave gaps: the position passing `hi`, a record
/// at or past it, or the end of the partition (the last stable offset) ends the window too.
fn read_window(
    consumer: &BaseConsumer<EofContext>,
    topic: &str,
    partition: i32,
    lo: i64,
    hi: i64,
) -> Result<Vec<Vec<u8>>, TickError> {
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    let records = BoundedRead::assign(consumer, topic, [(partition, lo, hi)], deadline, "read tick history")?
        .collect()
        .map_err(|e| match e {
            ReadError::Kafka(e) => TickError::Kafka(e),
            ReadError::Timeout => TickError::Unavailable {
                topic: topic.into(),
                message: format!("timed out reading partition {partition} offsets {lo}..{hi}"),
            },
        })?;
    // The read hands out what the consumer delivered, which may run past the window (already
    // read in the one before it, scanning backwards).
    Ok(records.into_iter().filter(|r| r.partition == partition && (lo..hi).contains(&r.offset)).filter_map(|r| r.payload).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_the_same_for_every_producer_within_its_bound_and_spread() {
        let bound = TimeDelta::seconds(30);
        let t0 = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let fires: Vec<_> = (0..200).map(|i| t0 + TimeDelta::minutes(10 * i)).collect();
        let delays: Vec<_> = fires.iter().map(|f| jitter("order-expiration", *f, bound)).collect();
        assert_eq!(delays, fires.iter().map(|f| jitter("order-expiration", *f, bound)).collect::<Vec<_>>(), "deterministic");
        assert!(delays.iter().all(|d| *d >= TimeDelta::zero() && *d <= bound), "{delays:?}");
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "spread over the bound: {} distinct of 200", distinct.len());
        let early = delays.iter().filter(|d| **d < TimeDelta::seconds(15)).count();
        assert!((60..=140).contains(&early), "about half in the first half: {early}");
        assert_ne!(jitter("order-expiration", t0, bound), jitter("stock-sync", t0, bound), "jobs sharing a fire time spread");
        assert_eq!(jitter("order-expiration", t0, TimeDelta::zero()), TimeDelta::zero());
    }
    use rdkafka::error::KafkaError;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ten_minutes() -> Schedule {
        Schedule::parse("0 */10 * * * *", chrono_tz::Tz::UTC).unwrap()
    }

    #[test]
    fn latest_policy_catches_up_only_the_most_recent_missed_fire_time() {
        let got = catch_up_times(
            &ten_minutes(),
            utc("2026-11-25T10:00:00Z"),
            utc("2026-11-25T10:53:00Z"),
            CatchUp::Latest,
            7,
        );
        assert_eq!(got, vec![utc("2026-11-25T10:50:00Z")]);
    }

    #[test]
    fn all_policy_catches_up_the_most_recent_n_oldest_first() {
        let (last, now) = (utc("2026-11-25T10:00:00Z"), utc("2026-11-25T10:50:00Z"));
        let all = catch_up_times(&ten_minutes(), last, now, CatchUp::All, 7);
        assert_eq!(all.len(), 5);
        assert_eq!(all.first(), Some(&utc("2026-11-25T10:10:00Z")));
        let two = catch_up_times(&ten_minutes(), last, now, CatchUp::All, 2);
        assert_eq!(two, vec![utc("2026-11-25T10:40:00Z"), utc("2026-11-25T10:50:00Z")]);
    }

    #[test]
    fn nothing_missed_means_no_catch_up() {
        let got =
            catch_up_times(&ten_minutes(), utc("2026-11-25T10:00:00Z"), utc("2026-11-25T10:09:59Z"), CatchUp::All, 7);
        assert!(got.is_empty());
        // A history ahead of the clock (another producer, skew) is not an error either.
        let got = catch_up_times(
            &ten_minutes(),
            utc("2026-11-25T11:00:00Z"),
            utc("2026-11-25T10:00:00Z"),
            CatchUp::Latest,
            1,
        );
        assert!(got.is_empty());
    }

    #[test]
    fn producer_name_prefers_the_configured_id() {
        let mut s = Settings::default();
        s.scheduler.producer_id = "tick-a".into();
        assert_eq!(producer_name(&s), "tick-a");
        s.scheduler.producer_id = String::new();
        assert!(!producer_name(&s).is_empty());
    }

    #[test]
    fn timestamps_are_truncated_to_avro_millis() {
        let t = utc("2026-11-25T10:00:00.123456789Z");
        assert_eq!(millis(t), utc("2026-11-25T10:00:00.123Z"));
    }

    #[tokio::test]
    async fn trigger_refuses_unknown_and_disabled_jobs_before_connecting() {
        let mut s = Settings::default();
        s.kafka.bootstrap_servers = "127.0.0.1:1".into();
        let e = trigger(&s, "no-such-job", None, BTreeMap::new()).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`no-such-job`") && msg.contains("order-expiration") && msg.contains("daily-statistics"),
            "{msg}"
        );
        assert!(!msg.contains("noop"), "a test job that is off is not listed: {msg}");
        let msg = trigger(&s, "noop", None, BTreeMap::new()).await.unwrap_err().to_string();
        assert!(msg.contains("test job") && msg.contains("`jobs.noop.enabled = true`") && msg.contains("SJ_JOBS__NOOP__ENABLED=true"), "{msg}");
        s.jobs.get_mut("stock_sync").unwrap().enabled = false;
        let msg = trigger(&s, "stock-sync", None, BTreeMap::new()).await.unwrap_err().to_string();
        assert!(msg.contains("`jobs.stock_sync.enabled = true`") && !msg.contains("test job"), "{msg}");
    }

    /// `trigger` applies the processor's parameter rule before connecting: the user sees the
    /// parameter named instead of a tick vanishing into dead letters.
    #[tokio::test]
    async fn trigger_refuses_parameters_the_job_does_not_accept_before_connecting() {
        let mut s = Settings::default();
        s.kafka.bootstrap_servers = "127.0.0.1:1".into();
        let params = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let msg = trigger(&s, "stock-sync", None, params("batch", "-1")).await.unwrap_err().to_string();
        assert!(msg.contains("unknown parameter `batch`") && msg.contains("stock-sync accepts: force"), "{msg}");
        let msg = trigger(&s, "order-expiration", None, params("force", "yes")).await.unwrap_err().to_string();
        assert!(msg.contains("parameter `force` = `yes`"), "{msg}");
        let msg = trigger(&s, "daily-statistics", None, params("date", "2026-13-01")).await.unwrap_err().to_string();
        assert!(msg.contains("parameter `date` = `2026-13-01`"), "{msg}");
    }

    #[test]
    fn timeouts_and_unavailable_topics_are_retried_config_is_not() {
        let timed_out = TickError::Kafka(KafkaClientError::kafka(
            "deliver tick",
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        ));
        assert_eq!(timed_out.class(), ErrorClass::Retry);
        assert_eq!(TickError::Unavailable { topic: "t".into(), message: "m".into() }.class(), ErrorClass::Retry);
        assert_eq!(TickError::from(KafkaClientError::no_such_topic("t")).class(), ErrorClass::Fatal);
    }

    #[test]
    fn an_unknown_tick_topic_is_retried_only_within_the_start_up_grace() {
        let grace = Duration::from_secs(120);
        let early = within_grace(KafkaClientError::no_such_topic("t").into(), Duration::from_secs(5), grace);
        assert_eq!(early.class(), ErrorClass::Retry);
        assert!(early.to_string().contains("missing_topic_grace_secs"), "{early}");
        let late = within_grace(KafkaClientError::no_such_topic("t").into(), Duration::from_secs(121), grace);
        assert_eq!(late.class(), ErrorClass::Fatal);
        assert!(late.to_string().contains("does not exist"), "{late}");
        let other = within_grace(TickError::NotStarted, Duration::ZERO, grace);
        assert_eq!(other.class(), ErrorClass::Fatal);
    }
}
