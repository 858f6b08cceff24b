//! The deployment artifacts (Dockerfile, docker-compose.yml, deploy/kubernetes, the Prometheus
//! rules, the Grafana dashboard, the AsyncAPI document) cannot run here: no container engine,
//! no cluster. Each is checked instead by the real validator of its ecosystem, pinned and
//! installed by `scripts/tools.sh`; one test per artifact runs its check script,
//! `tests/deploy/<name>.sh`, from the repository's root. A script exits non-zero, naming
//! the problem, when its artifact is wrong.
//!
//! The scripts get `SJ_BIN` (the built `scheduled-jobs`) and `SJ_METRICS_SERIES` (a file
//! listing every series name the processes export, one per line, from
//! `scheduled_jobs::runtime::metrics::exported_series`), so rules and panels can be checked
//! against what really exists.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn series_file() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("metrics-series-{}-{:?}.txt", std::process::id(), std::thread::current().id()).replace(['(', ')'], ""));
    let mut text: String = scheduled_jobs::runtime::metrics::exported_series().into_iter().map(|s| s + "\n").collect();
    if text.is_empty() {
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write the series list");
    path
}

fn check(name: &str) {
    let script = root().join("tests/deploy").join(format!("{name}.sh"));
    assert!(script.is_file(), "{} is missing", script.display());
    let series = series_file();
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(root())
        .env("SJ_BIN", env!("CARGO_BIN_EXE_scheduled-jobs"))
        .env("SJ_METRICS_SERIES", &series)
        // Python's bytecode caches stay out of the repository.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run bash");
    let _ = std::fs::remove_file(&series);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "tests/deploy/{name}.sh failed ({}):\n{stdout}\n{stderr}", out.status);
}

#[test]
fn dockerfile() {
    check("dockerfile");
}

#[test]
fn compose() {
    check("compose");
}

#[test]
fn kubernetes() {
    check("kubernetes");
}

#[test]
fn alerts() {
    check("alerts");
}

#[test]
fn dashboard() {
    check("dashboard");
}

#[test]
fn asyncapi() {
    check("asyncapi");
}
