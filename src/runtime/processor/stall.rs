//! The stall watch: a processor step still running after a minute is logged, with what the
//! processor was doing, and again each further minute until it ends.
//!
//! The processor's task waits in places that bound themselves (a chunk's effects by the run's
//! deadline, librdkafka's calls by their timeouts, a commit by its watchdog), but a bound that
//! is not kept — a library call past its timeout — shows only as silence: one processor of a
//! long fault run logged nothing for five minutes (docs/reliability.md, 2026-12-01). The watch
//! runs as a tokio task of its own, so it speaks while the step's task waits or blocks one
//! worker; with every worker blocked it cannot (a later long run had a 16-minute silence it did
//! not report: moving it to a plain thread is the next step). It changes nothing, and a chunk
//! that legitimately runs for minutes is named the same way.

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
    fn due(&self, now: Instant) -> Option<(u64, &'static str)> {
        self.with(|s| {
            let ran = now.saturating_duration_since(s.since?);
            if ran < STALL_WARNING * (s.reported + 1) {
                return None;
            }
            s.reported += 1;
            Some((ran.as_secs(), s.doing))
        })
    }

    /// Starts the watch; it stops when the handle is aborted or dropped with the runtime.
    pub(super) fn watch(&self) -> tokio::task::JoinHandle<()> {
        let activity = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOOK_EVERY).await;
                if let Some((secs, doing)) = activity.due(Instant::now()) {
                    tracing::warn!(secs, doing, "a processor step is still running");
                }
            }
        })
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
}
