//! Waiting out transient failures: capped exponential backoff, cut short by shutdown.
//!
//! The long-running processes start while their dependencies may still be starting too (a
//! broker loading its logs, a coordinator moving, a database restarting). A step that fails
//! with [`ErrorClass::Retry`] is tried again after a wait that doubles up to a cap, so a short
//! blip costs little and a long outage does not hammer the dependency; any other class ends
//! the retrying with the error, for the caller to report. A shutdown request ends an attempt
//! or a wait at once: an orchestrator stopping a process that never started must not wait.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::ErrorClass;

/// Waits that double from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The wait now due; the one after it is twice as long (at most `max`).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Returns `e` unless `class` calls it [`ErrorClass::Retry`]; a retriable one is passed
    /// to `on_retry` with the wait now due, then waited out unless `shutdown` completes first
    /// (`Ok(true)`).
    pub async fn wait_out<E, S: Future<Output = ()>>(
        &mut self,
        e: E,
        class: impl FnOnce(&E) -> ErrorClass,
        on_retry: impl FnOnce(&E, Duration),
        shutdown: Pin<&mut S>,
    ) -> Result<bool, E> {
        if class(&e) != ErrorClass::Retry {
            return Err(e);
        }
        let wait = self.next_wait();
        on_retry(&e, wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(false),
            _ = shutdown => Ok(true),
        }
    }
}

/// Runs `attempt` until it succeeds (`Ok(Some(_))`) or fails with an error `class` does not
/// call [`ErrorClass::Retry`] (`Err`). Before each wait, `on_retry` is told the error and the
/// wait (to log it, and to say on `/readyz` what is awaited). `Ok(None)`: `shutdown` completed
/// during an attempt or a wait.
pub async fn until_ok<T, E, A, F, S>(
    backoff: &mut Backoff,
    mut shutdown: Pin<&mut S>,
    mut attempt: A,
    class: impl Fn(&E) -> ErrorClass,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<Option<T>, E>
where
    A: FnMut() -> F,
    F: Future<Output = Result<T, E>>,
    S: Future<Output = ()>,
{
    loop {
        let result = tokio::select! {
            r = attempt() => r,
            _ = shutdown.as_mut() => return Ok(None),
        };
        match result {
            Ok(t) => return Ok(Some(t)),
            Err(e) => {
                if backoff.wait_out(e, &class, &mut on_retry, shutdown.as_mut()).await? {
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(700));
        let waits: Vec<u128> = (0..4).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [200, 400, 700, 700]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(200));
    }

    #[tokio::test]
    async fn retriable_failures_are_retried_others_end_it_and_shutdown_stops_it() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        let mut tries = 0;
        let mut told = Vec::new();
        let r: Result<Option<i32>, ErrorClass> = until_ok(
            &mut b,
            never.as_mut(),
            || {
                tries += 1;
                let n = tries;
                async move { if n < 3 { Err(ErrorClass::Retry) } else { Ok(n) } }
            },
            |e| *e,
            |_, wait| told.push(wait.as_millis()),
        )
        .await;
        assert_eq!(r, Ok(Some(3)));
        assert_eq!(told, [10, 20]);

        let r: Result<Option<()>, ErrorClass> =
            until_ok(&mut b, never.as_mut(), || async { Err(ErrorClass::Fatal) }, |e| *e, |_, _| {}).await;
        assert_eq!(r, Err(ErrorClass::Fatal));

        let now = std::future::ready(());
        tokio::pin!(now);
        let r: Result<Option<()>, ErrorClass> =
            until_ok(&mut b, now.as_mut(), || async { Err(ErrorClass::Retry) }, |e| *e, |_, _| {}).await;
        assert_eq!(r, Ok(None));
    }
}
