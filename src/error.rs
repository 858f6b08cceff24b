//! The one classification every module-edge error maps to, so callers decide uniformly.
//!
//! - `Retry`: transient (broker moving, connection reset); the same step may succeed later.
//! - `Abort`: the current Kafka transaction is unusable; abort it, rewind, redo the step.
//! - `Fatal`: configuration, authorization, fencing or a bug; stop this process and let an
//!   operator (or the orchestrator) act.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retry,
    Abort,
    Fatal,
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorClass::Retry => "retry",
            ErrorClass::Abort => "abort",
            ErrorClass::Fatal => "fatal",
        })
    }
}

/// Retry for a lost connection, a serialization failure, a deadlock or a server shutting down;
/// anything else (a bug, bad data, a refused login) will not succeed by trying again.
pub fn sqlx_class(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => ErrorClass::Retry,
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("08") || c == "40001" || c == "40P01" || c.starts_with("57P")) => {
            ErrorClass::Retry
        }
        _ => ErrorClass::Fatal,
    }
}
