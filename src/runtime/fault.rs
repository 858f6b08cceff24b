//! Fault points for crash tests: with the `fault-injection` feature (enabled only for this
//! crate's own tests), a point named in `SJ_FAULT_POINT` kills the process with SIGKILL when
//! reached — optionally only for the job in `SJ_FAULT_JOB` and after `SJ_FAULT_AFTER` earlier
//! hits. Without the feature every point compiles to nothing.

/// Right before the transaction of an applied chunk (not the seal) commits: its effects are done.
pub const BEFORE_APPLY_COMMIT: &str = "before-apply-commit";
/// Right before the transaction of a planned run commits.
pub const BEFORE_PLAN_COMMIT: &str = "before-plan-commit";

#[cfg(feature = "fault-injection")]
pub fn point(name: &str, job: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    if std::env::var("SJ_FAULT_POINT").ok().as_deref() != Some(name) {
        return;
    }
    if std::env::var("SJ_FAULT_JOB").is_ok_and(|j| j != job) {
        return;
    }
    let after: u64 = std::env::var("SJ_FAULT_AFTER").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if HITS.fetch_add(1, Ordering::SeqCst) < after {
        return;
    }
    eprintln!("fault point {name} reached for {job}: killing this process (SIGKILL)");
    let _ = std::process::Command::new("kill").arg("-9").arg(std::process::id().to_string()).status();
    std::process::abort();
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str, _job: &str) {}
