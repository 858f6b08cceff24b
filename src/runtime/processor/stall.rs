//! The stall watch: a processor step still running after a minute is logged, with what the
//! processor was doing, and again each further minute until it ends.
//!
//! The processor's task waits in places that bound themselves (a chunk's effects by the run's
//! deadline, librdkafka's calls by their timeouts, the transactional calls by their watches),
//! but a bound that is not kept — a library call past its timeout — shows only as silence: one
//! processor of a long fault run logged nothing for five minutes (docs/reliability.md,
//! 2026-12-01; that one turned out to be a consumer left out of its group, which
//! `processor.assignment_wait_ms` now covers). The watch runs on a plain thread of its own,
//! not on the runtime, so a call that blocks every worker cannot silence it. It changes
//! nothing, and a chunk that legitimately runs for minutes is named the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a running step is first reported, and then how often.
pub(super) const STALL_WARNING: Duration = Duration::from_secs(60);
/// How often the watch looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// When the running step began (`None` between steps).
    since: Option<Instant>,
    /// What the step is doing now.
    doing: &'static str,
    /// How many reports the running step has had.
    reported: u32,
}

/// What the processor's task is doing, shared with the watch.
#[derive(Clone, Default)]
pub(super) struct Activity(Arc<Mutex<State>>);

impl Activity {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A step begins.
    pub(super) fn begin(&self) {
        self.with(|s| *s = State { since: Some(Instant::now()), doing: "waiting for records", reported: 0 });
    }

    /// The running step moves on to `doing`.
    pub(super) fn doing(&self, doing: &'static str) {
        self.with(|s| s.doing = doing);
    }

    /// The step ended.
    pub(super) fn end(&self) {
        self.with(|s| *s = State::default());
    }

    /// `Some((seconds, doing))` when the running step is due another report at `now`.
    #[cfg(test)]
    fn due(&self, now: Instant) -> Option<(u64, &'static str)> {
        self.due_after(now, STALL_WARNING)
    }

    /// As [`Activity::due`], with the first report after `warning`.
    fn due_after(&self, now: Instant, warning: Duration) -> Option<(u64, &'static str)> {
        self.with(|s| {
            let ran = now.saturating_duration_since(s.since?);
            if ran < warning * (s.reported + 1) {
                return None;
            }
            s.reported += 1;
            Some((ran.as_secs(), s.doing))
        })
    }

    /// Starts the watch, logging at WARN; it stops when the returned guard is dropped.
    pub(super) fn watch(&self) -> std::io::Result<Watch> {
        self.watch_with(STALL_WARNING, LOOK_EVERY, |secs, doing| tracing::warn!(secs, doing, "a processor step is still running"))
    }

    fn watch_with(&self, warning: Duration, every: Duration, report: impl Fn(u64, &'static str) + Send + 'static) -> std::io::Result<Watch> {
        let activity = self.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name("sj-stall-watch".into()).spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                std::thread::park_timeout(every);
                if let Some((secs, doing)) = activity.due_after(Instant::now(), warning) {
                    report(secs, doing);
                }
            }
        })?;
        Ok(Watch { stop, thread })
    }
}

/// The running watch: dropping it stops its thread (within a look).
pub(super) struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_step_is_reported_once_a_minute_with_what_it_does_and_not_between_steps() {
        let a = Activity::default();
        let t0 = Instant::now();
        assert_eq!(a.due(t0 + STALL_WARNING * 5), None, "no step running");
        a.begin();
        a.doing("aborting the transaction");
        let since = a.with(|s| s.since).unwrap();
        assert_eq!(a.due(since + STALL_WARNING - Duration::from_secs(1)), None);
        assert_eq!(a.due(since + STALL_WARNING), Some((60, "aborting the transaction")));
        assert_eq!(a.due(since + STALL_WARNING + LOOK_EVERY), None, "once per minute");
        assert_eq!(a.due(since + STALL_WARNING * 2), Some((120, "aborting the transaction")));
        a.end();
        assert_eq!(a.due(since + STALL_WARNING * 10), None);
    }

    /// The watch speaks while the runtime that runs the step cannot run anything else: here a
    /// runtime of one thread, blocked by the step (a librdkafka call that does not return).
    #[tokio::test(flavor = "current_thread")]
    async fn the_watch_speaks_while_the_step_blocks_the_runtime() {
        let a = Activity::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let watch = a.watch_with(Duration::from_millis(200), Duration::from_millis(20), move |_, doing| h.lock().unwrap().push(doing)).unwrap();
        a.begin();
        a.doing("aborting the transaction");
        std::thread::sleep(Duration::from_millis(700));
        a.end();
        let reports = heard.lock().unwrap().clone();
        assert!((1..=4).contains(&reports.len()) && reports.iter().all(|d| *d == "aborting the transaction"), "{reports:?}");
        drop(watch);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(heard.lock().unwrap().len(), reports.len(), "nothing after the step ended");
    }
}
