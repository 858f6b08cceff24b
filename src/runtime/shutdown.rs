//! Graceful shutdown: SIGTERM (what orchestrators send) or Ctrl-C (SIGINT).

use std::future::Future;

use tokio::signal::unix::{signal as unix_signal, SignalKind};

/// Completes when the process is asked to stop. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM that arrives while the caller is
/// still busy starting up must be caught rather than kill the process by default.
pub fn signal() -> impl Future<Output = ()> {
    let term = unix_signal(SignalKind::terminate()).ok();
    let int = unix_signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(int) => {}
        }
    }
}
