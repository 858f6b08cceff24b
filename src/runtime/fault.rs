//! Fault points for crash tests: with the `fault-injection` feature (enabled only for this
//! crate's own tests), a point named in `SJ_FAULT_POINT` kills the process with SIGKILL when
//! reached — optionally only for the job in `SJ_FAULT_JOB` and after `SJ_FAULT_AFTER` earlier
//! hits. Pause points hold the work that reaches them for keys a test registered
//! ([`pause_at`]), so the test can act in a window that is otherwise microseconds wide.
//! A hang point (`SJ_FAULT_HANG`) blocks the thread that reaches it instead; a failure point
//! (`SJ_FAULT_FAIL`) fails the call it guards once. Without the feature every point compiles
//! to nothing.

/// Right before the transaction of an applied chunk (not the seal) commits: its effects are done.
pub const BEFORE_APPLY_COMMIT: &str = "before-apply-commit";
/// Right before the transaction of a planned run commits.
pub const BEFORE_PLAN_COMMIT: &str = "before-plan-commit";
/// A pause point: stock-sync has recorded a group of confirmed mismatches and is about to
/// repair them (keys: product ids).
pub const BEFORE_STOCK_REPAIR: &str = "before-stock-repair";

#[cfg(feature = "fault-injection")]
static PAUSES: std::sync::Mutex<Vec<(&'static str, String, std::time::Duration)>> = std::sync::Mutex::new(Vec::new());

/// Work reaching pause point `name` for a key equal to `key` waits `pause` there (tests).
#[cfg(feature = "fault-injection")]
pub fn pause_at(name: &'static str, key: impl Into<String>, pause: std::time::Duration) {
    if let Ok(mut p) = PAUSES.lock() {
        p.push((name, key.into(), pause));
    }
}

/// Removes the pauses registered at point `name` for `key` (tests).
#[cfg(feature = "fault-injection")]
pub fn unpause(name: &'static str, key: &str) {
    if let Ok(mut p) = PAUSES.lock() {
        p.retain(|(n, k, _)| !(*n == name && k == key));
    }
}

/// Waits at pause point `name` as long as the longest pause registered for one of `keys`.
#[cfg(feature = "fault-injection")]
pub async fn pause<'a>(name: &str, keys: impl IntoIterator<Item = &'a str>) {
    let wait = match PAUSES.lock() {
        Ok(p) if !p.is_empty() => {
            let keys: Vec<&str> = keys.into_iter().collect();
            p.iter().filter(|(n, k, _)| *n == name && keys.contains(&k.as_str())).map(|(_, _, d)| *d).max()
        }
        _ => None,
    };
    if let Some(d) = wait {
        tracing::warn!(point = name, ms = d.as_millis() as u64, "pause point reached: waiting");
        tokio::time::sleep(d).await;
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn pause<'a>(_name: &str, _keys: impl IntoIterator<Item = &'a str>) {}

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

/// A hang point: the first time a thread reaches stage `stage` of the point named `name`, and
/// `SJ_FAULT_HANG` is `name/stage` (for the job in `SJ_FAULT_JOB`, if set; a point of no job,
/// `job` empty, whatever it is), it blocks for good,
/// as a librdkafka call that never returns does (tests of the committer's watch). Only once per
/// process: what replaces the hung work must be able to pass.
#[cfg(feature = "fault-injection")]
pub fn hang(name: &str, stage: &str, job: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static HUNG: AtomicBool = AtomicBool::new(false);
    let Ok(wanted) = std::env::var("SJ_FAULT_HANG") else { return };
    if wanted.split_once('/') != Some((name, stage)) || std::env::var("SJ_FAULT_JOB").is_ok_and(|j| !job.is_empty() && j != job) {
        return;
    }
    if HUNG.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!(point = name, stage, job, "hang point reached: this thread blocks for good");
    loop {
        std::thread::park();
    }
}

/// A failure point: the first time stage `stage` of the point named `name` is reached and
/// `SJ_FAULT_FAIL` is `name/stage` (for the job in `SJ_FAULT_JOB`, if set), true: the caller
/// fails that call as a transient Kafka error would (tests of the reset path). Once per process.
#[cfg(feature = "fault-injection")]
pub fn fail(name: &str, stage: &str, job: &str) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FAILED: AtomicBool = AtomicBool::new(false);
    let Ok(wanted) = std::env::var("SJ_FAULT_FAIL") else { return false };
    if wanted.split_once('/') != Some((name, stage)) || std::env::var("SJ_FAULT_JOB").is_ok_and(|j| !job.is_empty() && j != job) {
        return false;
    }
    if FAILED.swap(true, Ordering::SeqCst) {
        return false;
    }
    tracing::warn!(point = name, stage, job, "failure point reached: this call fails");
    true
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fail(_name: &str, _stage: &str, _job: &str) -> bool {
    false
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hang(_name: &str, _stage: &str, _job: &str) {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str, _job: &str) {}
