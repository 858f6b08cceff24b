//! What a user sees from the binary: bad configuration fails fast and names the setting.

use std::process::Command;

use crate::common::{binary, repo_root};

fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.current_dir(repo_root()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_value_fails_start_up_naming_the_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("SJ_POSTGRES__PORT", "fivefourthreetwo", "postgres.port"),
        ("SJ_KAFKA__BOOTSTRAP_SERVERS", "localhost", "kafka.bootstrap_servers"),
        ("SJ_REGISTRY__URL", "not a url", "registry.url"),
        ("SJ_POSTGRES__SSLMODE", "maybe", "postgres.sslmode"),
        ("SJ_REDIS__PORTT", "1", "portt"),
    ];
    for (var, value, setting) in cases {
        let (code, stdout, stderr) = run(&[(var, value)], &["db", "migrate"]);
        assert_eq!(code, 2, "{var}={value}: exit {code}\n{stdout}\n{stderr}");
        assert!(stderr.contains(setting), "{var}={value}: stderr does not name `{setting}`:\n{stderr}");
    }
}

#[test]
fn unknown_kafka_property_is_named() {
    crate::common::stack();
    let (code, _, stderr) = run(&[("SJ_KAFKA_PROP_NO_SUCH_THING", "1")], &["topics", "apply", "--dry-run"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("kafka.properties.no.such.thing"), "{stderr}");
}

#[test]
fn missing_config_file_is_named() {
    let (code, _, stderr) = run(&[], &["--config", "/nonexistent/sj.toml", "config", "check"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/sj.toml"), "{stderr}");
}

#[test]
fn config_show_never_prints_secrets() {
    let (code, stdout, stderr) = run(
        &[("SJ_POSTGRES__PASSWORD", "pg-secret-123"), ("SJ_KAFKA_PROP_SASL_PASSWORD", "kafka-secret-456")],
        &["config", "show"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("pg-secret-123") && !stdout.contains("kafka-secret-456"), "{stdout}");
    assert!(stdout.contains("sasl.password"), "{stdout}");
}

/// Regression (found by the fault suite): `run` exited when a service it needs was
/// restarting at its start-up; it now waits, and a SIGTERM while waiting ends it cleanly.
#[test]
fn run_waits_for_an_unreachable_database_and_stops_cleanly_on_sigterm() {
    let err = std::env::temp_dir().join(format!("sj-run-wait-{}.log", std::process::id()));
    let mut child = Command::new(binary())
        .current_dir(repo_root())
        .arg("run")
        // Nothing listens on port 1: every connection attempt is refused.
        .env("SJ_POSTGRES__PORT", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).expect("log file"))
        .spawn()
        .expect("spawn run");
    // The first attempt gives up after the pool's 10 s acquire timeout, then it is retried.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !std::fs::read_to_string(&err).unwrap_or_default().contains("cannot start yet; retrying") {
        assert!(child.try_wait().expect("try_wait").is_none(), "run exited instead of waiting: {}", std::fs::read_to_string(&err).unwrap_or_default());
        assert!(std::time::Instant::now() < deadline, "no retry logged: {}", std::fs::read_to_string(&err).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status:?}\n{}", std::fs::read_to_string(&err).unwrap_or_default());
}
