//! Every fire time accounted for: the processor, not the tick producer, finds the fire times
//! of each scheduled job that no tick came for, so a tick producer that is down,
//! misconfigured, or publishing to the wrong topic is noticed.
//!
//! What became of a fire time F of job J, from the run ledger:
//! - **RAN** (with its outcome), or **COALESCED**: a run entry `run/J/<period of F>`, written
//!   by the tick's planning (or `buffered/J/<period>`: its tick waits for J's running run,
//!   [`super::overlap`], and ends in a run entry);
//! - **SKIPPED**: `skipped/J/<period>`, written when a tick arrived while J was paused, or here
//!   when J is paused since before F and no tick came either;
//! - **MISSED**: none of these `missed_after_secs` after F. Recorded here with a MISSED run
//!   result and `missed/J/<period>`. A late tick (a catch-up) still runs the period: the run
//!   entry is a different key, so the fire time then ends RAN, after a MISSED result that said
//!   it was late. A disabled job has no fire times (nothing is scheduled).
//!
//! # Who accounts, and why it is exactly once
//! The instance that holds partition 0 of the tick topic, between batches, every
//! `processor.accounting_interval_ms`. Its transaction commits the offset of that partition
//! where it already stands, so it carries the consumer group's generation: an instance that
//! lost the partition (a zombie) cannot commit, like any of its record transactions. It
//! accounts only when the group has consumed every tick partition to its end: a tick still
//! queued (a busy processor) is not missing. Run entries of the ticks planned elsewhere are
//! read from the ledger first (their offsets committed with them), so the only race left is
//! with a tick that arrives after the grace period: a late run, as above.
//!
//! A job whose current schedule version (`schedule/J`, set by the tick producers' ticks) is not
//! the one this processor's configuration gives is not accounted until they agree.
//!
//! `accounted/J` says up to which fire time J is accounted (written with the fire times it
//! covers), so a restart goes on from there; the first time J is seen, its fire times are
//! accounted from that moment on (no retroactive MISSED for history before it). At most
//! [`MAX_PER_JOB`] fire times per job per pass.
//!
//! The pass also releases a job's waiting tick that nothing else released
//! ([`super::overlap::release_next`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::committer::Consumed;
use super::ledger::{accounted_key, buffered_key, marker_entry, missed_key, run_key, skipped_key, LedgerView};
use super::run::{ledger_entry, new_run, run_result, Out, TxnPlan};
use super::{Processor, ProcessorError};
use crate::jobs::Job;
use crate::kafka::KafkaClientError;
use crate::runtime::control::Pause;
use crate::schedule::Schedule;
use crate::wire::derived_id;
use crate::wire::internal::{Outcome, RunState};
use crate::wire::tick::{Tick, Trigger};

/// Fire times accounted per job in one pass (a week of a 10-minute schedule is 1,008).
pub const MAX_PER_JOB: usize = 500;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a fire time that has no run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unaccounted {
    /// Already recorded (a run, a skip or a miss).
    Recorded,
    /// The job was paused since before the fire time: SKIPPED.
    Paused,
    /// No tick came: MISSED.
    Missed,
}

/// Decides one fire time from the ledger and the job's pause.
pub fn classify(ledger: &LedgerView, job: &str, period: &str, fire_time: DateTime<Utc>, pause: Option<&Pause>) -> Unaccounted {
    // A tick waiting for the job's running run (`buffered/`) came: it ends in a run entry.
    let recorded = [run_key(job, period), skipped_key(job, period), missed_key(job, period), buffered_key(job, period)];
    if recorded.iter().any(|k| ledger.get(k).is_some()) {
        Unaccounted::Recorded
    } else if pause.is_some_and(|p| p.paused_at <= fire_time) {
        Unaccounted::Paused
    } else {
        Unaccounted::Missed
    }
}

/// The fire times of `schedule` to account now: after `cursor`, up to `grace` ago, at most
/// [`MAX_PER_JOB`]; and the cursor after them.
pub fn due(schedule: &Schedule, cursor: DateTime<Utc>, now: DateTime<Utc>, grace: TimeDelta) -> (Vec<DateTime<Utc>>, DateTime<Utc>) {
    let until = now - grace;
    if until <= cursor {
        return (Vec::new(), cursor);
    }
    let fires: Vec<_> = schedule.fire_times(cursor, until).take(MAX_PER_JOB).collect();
    let next = if fires.len() == MAX_PER_JOB { fires[MAX_PER_JOB - 1] } else { until };
    (fires, next)
}

/// When the next pass is due.
pub(super) struct Pace {
    next: Instant,
}

impl Pace {
    pub(super) fn new() -> Pace {
        Pace { next: Instant::now() }
    }
}

impl Processor {
    /// One accounting pass if it is due and this instance holds tick partition 0: records
    /// MISSED (or SKIPPED) results for fire times no tick came for. Returns how many.
    pub(super) async fn account_fire_times(&mut self) -> Result<usize, ProcessorError> {
        if Instant::now() < self.accounting.next {
            return Ok(0);
        }
        self.accounting.next = Instant::now() + Duration::from_millis(self.env.settings.processor.accounting_interval_ms);
        let tick_topic = self.names.tick.clone();
        let holds_zero = self
            .consumer
            .assignment()
            .map(|a| a.elements().iter().any(|e| e.topic() == tick_topic && e.partition() == 0))
            .unwrap_or(false);
        if !holds_zero {
            return Ok(0);
        }
        let Some(zero) = self.ticks_consumed(&tick_topic)? else {
            tracing::debug!("ticks still queued: fire times accounted on a later pass");
            return Ok(0);
        };
        self.committer.catch_up_ledger(KAFKA_TIMEOUT * 6).await?;
        let plan = self.accounting_plan().await?;
        if plan.out.is_empty() {
            return Ok(0);
        }
        let recorded = plan.out.iter().filter(|o| matches!(o, Out::Result(_))).count();
        let ready = self.encode_plan(plan, None).await?;
        let group = self.consumer.group_metadata().ok_or_else(|| {
            KafkaClientError::kafka("group metadata", rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State))
        })?;
        // The offset partition 0 is committed at, committed again: the generation check.
        let consumed = Consumed { topic: &tick_topic, partition: 0, offset: zero - 1, index: 0, more: false };
        let committed = match self.committer.commit(ready, consumed, group).await {
            Ok(()) => self.committer.settle().await,
            Err(e) => Err(e),
        };
        if let Err((_, e)) = committed {
            // Nothing to rewind: the next pass decides again from the ledger.
            let _ = self.committer.reset().await;
            return Err(e.into());
        }
        Ok(recorded)
    }

    /// `Some(offset of tick partition 0)` when the group has consumed every tick partition to
    /// its end (its committed offsets at the high watermarks).
    fn ticks_consumed(&self, topic: &str) -> Result<Option<i64>, ProcessorError> {
        let kafka = |what: &'static str| move |e| KafkaClientError::kafka(what, e);
        let md = self.consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT).map_err(kafka("tick metadata"))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
            tpl.add_partition(topic, p.id());
        }
        let committed = self.consumer.committed_offsets(tpl, KAFKA_TIMEOUT).map_err(kafka("tick committed offsets"))?;
        let mut zero = None;
        let mut behind = Vec::new();
        for e in committed.elements() {
            let (low, high) = self.consumer.fetch_watermarks(topic, e.partition(), KAFKA_TIMEOUT).map_err(kafka("tick watermarks"))?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                // Never committed: consumed to the end only if there is nothing to consume.
                _ => low,
            };
            if at < high {
                behind.push((e.partition(), at, high));
            }
            if e.partition() == 0 {
                zero = Some(at);
            }
        }
        if !behind.is_empty() && self.ticks_left(topic, behind)? {
            return Ok(None);
        }
        Ok(zero.or(Some(0)))
    }

    /// Whether any tick is left between the group's committed offsets and the ends of these
    /// `(partition, committed, high watermark)` ranges. A partition whose last record is a
    /// transaction's commit marker (a released tick, [`super::overlap`]) has its high watermark
    /// one past what any consumer consumes, so the watermarks alone cannot say: what is left is
    /// read, read_committed.
    fn ticks_left(&self, topic: &str, behind: Vec<(i32, i64, i64)>) -> Result<bool, ProcessorError> {
        let cfg = crate::kafka::client_config(&self.env.settings, crate::kafka::Role::Consumer);
        let consumer = crate::kafka::read::eof_consumer(&cfg, "accounting tick read")?;
        let read = crate::kafka::read::BoundedRead::assign(&consumer, topic, behind, Instant::now() + KAFKA_TIMEOUT, "accounting tick read")?;
        match read.collect() {
            Ok(records) => Ok(!records.is_empty()),
            // Not known: accounted on a later pass.
            Err(_) => Ok(true),
        }
    }

    /// The records of one pass: per scheduled, enabled job, a result and an entry for each
    /// fire time without one, and the job's cursor.
    async fn accounting_plan(&self) -> Result<TxnPlan, ProcessorError> {
        let now = Utc::now();
        let tz = self.env.tz;
        let mut plan = TxnPlan::default();
        let jobs: BTreeMap<&str, std::sync::Arc<dyn Job>> = self.jobs.names().into_iter().filter_map(|n| Some((n, self.jobs.get(n)?.clone()))).collect();
        for (name, job) in jobs {
            let settings = self.env.job_settings(name);
            // A waiting tick that no finishing run released (it was buffered just after that
            // run's transaction read the ledger) goes now.
            plan.out.extend(super::overlap::release_next(self.committer.ledger(), name, &settings, None, None));
            if !settings.enabled || settings.schedule.trim().is_empty() {
                continue;
            }
            // The tick producers run another schedule than this processor's configuration
            // (a deploy half done): fire times are accounted once both agree.
            let version = settings.schedule_version(tz);
            if let Some(current) = super::versions::current(self.committer.ledger(), name).filter(|c| *c != version) {
                tracing::debug!(job = name, current = %current, configured = %version, "schedule versions differ: fire times not accounted");
                continue;
            }
            let schedule = Schedule::parse(&settings.schedule, tz).map_err(|e| ProcessorError::Config(e.to_string()))?;
            let grace = TimeDelta::seconds(settings.missed_after_secs.min(i64::MAX as u64) as i64);
            let key = accounted_key(name);
            let cursor = self
                .committer
                .ledger()
                .get(&key)
                .and_then(|e| DateTime::parse_from_rfc3339(&e.period).ok())
                .map(|t| t.with_timezone(&Utc));
            let Some(cursor) = cursor else {
                // First sight of this job: its fire times are accounted from now on.
                plan.out.push(Out::Ledger(key, cursor_entry(name, now)));
                continue;
            };
            let (fires, next) = due(&schedule, cursor, now, grace);
            if fires.is_empty() {
                continue;
            }
            let pause = crate::runtime::control::paused(&self.env.db, name).await?;
            for fire in fires {
                let tick = Tick::for_fire_time(name, fire, Trigger::Scheduled, None);
                let Ok(period) = job.period(&tick, tz) else { continue };
                let decided = classify(self.committer.ledger(), name, &period, fire, pause.as_ref());
                let mut run = new_run(tick, period, 1);
                let (outcome, state, entry_key, message) = match decided {
                    Unaccounted::Recorded => continue,
                    Unaccounted::Paused => {
                        let Some(p) = &pause else { continue };
                        (Outcome::Skipped, RunState::Skipped, skipped_key(name, &run.period), format!("{} (no tick arrived either)", p.message()))
                    }
                    Unaccounted::Missed => (
                        Outcome::Missed,
                        RunState::Missed,
                        missed_key(name, &run.period),
                        format!(
                            "no tick arrived for the fire time {} within {} s (jobs.{}.missed_after_secs): is a tick producer running and publishing to {}? A late tick still runs it",
                            fire.to_rfc3339(),
                            grace.num_seconds(),
                            crate::config::job_key(name),
                            self.names.tick
                        ),
                    ),
                };
                run.run_id = derived_id(&["fire-time", state.as_str(), name, &run.period]).to_string();
                tracing::warn!(job = name, fire_time = %fire.to_rfc3339(), period = %run.period, outcome = outcome.as_str(), "fire time without a tick");
                plan.out.push(Out::Ledger(entry_key, ledger_entry(&run, state, 0)));
                plan.out.push(Out::Result(run_result(&run, tz, outcome, BTreeMap::new(), Some(message))));
            }
            plan.out.push(Out::Ledger(key, cursor_entry(name, next)));
        }
        Ok(plan)
    }
}

/// `accounted/<job>`: fire times up to `at` are accounted.
fn cursor_entry(job: &str, at: DateTime<Utc>) -> crate::wire::internal::LedgerEntry {
    marker_entry(job, at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), RunState::Done, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::Tz;

    fn local_day(tz: Tz, y: i32, m: u32, d: u32) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = |date: chrono::NaiveDate| tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap()).earliest().unwrap().with_timezone(&Utc);
        let day = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        // (the instant before local midnight, the instant before the next local midnight]
        (start(day) - TimeDelta::milliseconds(1), start(day + chrono::Days::new(1)) - TimeDelta::milliseconds(1))
    }

    /// Every fire time of a local day, as the accounting walks them (its cursor moved from
    /// the day's start to its end).
    fn accounted(expr: &str, zone: &str, (y, m, d): (i32, u32, u32)) -> Vec<String> {
        let tz: Tz = zone.parse().unwrap();
        let s = Schedule::parse(expr, tz).unwrap();
        let (from, to) = local_day(tz, y, m, d);
        let (fires, next) = due(&s, from, to, TimeDelta::zero());
        assert_eq!(next, to);
        fires.iter().map(|t| t.with_timezone(&tz).format("%H:%M%:z").to_string()).collect()
    }

    #[test]
    fn spring_forward_in_berlin_has_23_hours_of_fire_times_and_0230_runs_at_0300() {
        let ten = accounted("0 */10 * * * *", "Europe/Berlin", (2026, 3, 29));
        assert_eq!(ten.len(), 23 * 6, "{ten:?}");
        assert_eq!((ten[11].as_str(), ten[12].as_str()), ("01:50+01:00", "03:00+02:00"), "02:00-02:59 does not exist");
        assert_eq!(accounted("0 30 2 * * *", "Europe/Berlin", (2026, 3, 29)), ["03:00+02:00"], "the gap's fire time runs once, after it");
        assert_eq!(accounted("0 0 0 * * *", "Europe/Berlin", (2026, 3, 29)), ["00:00+01:00"]);
    }

    #[test]
    fn fall_back_in_berlin_has_25_hours_of_fire_times_and_0230_runs_once() {
        let ten = accounted("0 */10 * * * *", "Europe/Berlin", (2026, 10, 25));
        assert_eq!(ten.len(), 25 * 6, "{ten:?}");
        let repeated: Vec<_> = ten.iter().filter(|t| t.starts_with("02:")).collect();
        assert_eq!(repeated.len(), 12, "02:00-02:59 happens twice, in both offsets: {repeated:?}");
        assert_eq!(accounted("0 30 2 * * *", "Europe/Berlin", (2026, 10, 25)), ["02:30+02:00"], "once, not twice");
    }

    #[test]
    fn an_ordinary_day_in_seoul_has_every_seed_fire_time_once() {
        let ten = accounted("0 */10 * * * *", "Asia/Seoul", (2026, 11, 30));
        assert_eq!(ten.len(), 144);
        assert_eq!((ten.first().unwrap().as_str(), ten.last().unwrap().as_str()), ("00:00+09:00", "23:50+09:00"));
        assert_eq!(accounted("0 0 2 * * *", "Asia/Seoul", (2026, 11, 30)), ["02:00+09:00"]);
        assert_eq!(accounted("0 0 0 * * *", "Asia/Seoul", (2026, 11, 30)), ["00:00+09:00"]);
    }

    #[test]
    fn a_pass_takes_at_most_its_bound_and_goes_on_from_the_last_one() {
        let s = Schedule::parse("0 * * * * *", Tz::UTC).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        let now = t0 + TimeDelta::days(1);
        let (fires, next) = due(&s, t0, now, TimeDelta::minutes(5));
        assert_eq!((fires.len(), next), (MAX_PER_JOB, fires[MAX_PER_JOB - 1]));
        let (rest, _) = due(&s, next, now, TimeDelta::minutes(5));
        assert_eq!(rest[0], next + TimeDelta::minutes(1), "no fire time twice, none skipped");
        assert_eq!(due(&s, now, now, TimeDelta::minutes(5)).0, Vec::<DateTime<Utc>>::new(), "within the grace period: not yet");
    }
}
