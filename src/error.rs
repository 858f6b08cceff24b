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
