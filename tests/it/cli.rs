//! What a user sees from the binary: bad configuration fails fast and names the setting.

use std::process::Command;

use crate::common::{binary, repo_root};

/// Every line of `stderr` as JSON, failing on the first that is not.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{stderr}")))
        .collect()
}

pub fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
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

/// Issue 16 item 5: `config show` says on its first line which zone the schedules are read
/// in (the seed's, Asia/Seoul, unless configured), and the `noop` test job is neither shown
/// nor triggerable until a configuration enables it.
#[test]
fn config_show_names_the_time_zone_and_hides_the_noop_test_job_until_enabled() {
    let (code, stdout, stderr) = run(&[], &["config", "show"]);
    assert_eq!(code, 0, "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("# time zone: Asia/Seoul (scheduler.time_zone, the default"), "{stdout}");
    assert!(stdout.contains("time_zone = \"Asia/Seoul\"") && !stdout.contains("[jobs.noop]"), "{stdout}");
    let (code, stdout, _) = run(&[("SJ_SCHEDULER__TIME_ZONE", "UTC"), ("SJ_JOBS__NOOP__ENABLED", "true")], &["config", "show"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("# time zone: UTC (scheduler.time_zone, configured"), "{stdout}");
    assert!(stdout.contains("[jobs.noop]"), "{stdout}");

    // Refused before any connection (nothing listens on port 1), with how to enable it.
    let (code, _, stderr) = run(&[("SJ_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")], &["trigger", "noop"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("test job") && stderr.contains("jobs.noop.enabled = true") && stderr.contains("SJ_JOBS__NOOP__ENABLED=true"), "{stderr}");
    let (code, _, stderr) = run(&[("SJ_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")], &["trigger", "stock-sync", "--param", "batch=-1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown parameter `batch`") && stderr.contains("stock-sync accepts: force"), "{stderr}");
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

/// Item 5 of the operations issue: the processor authenticates with SASL/SCRAM through the
/// `kafka.properties` pass-through, and a wrong password ends `run` at start-up with an error
/// that says so — never printing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_authenticates_with_scram_and_a_wrong_password_fails_start_up_clearly() {
    let s = crate::common::with_noop(crate::common::isolated().await);
    let port: u16 = std::env::var("SJ_KAFKA_SASL_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(9094);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "no SASL listener on 127.0.0.1:{port}: this broker was started before services.sh had one; \
         restart it with `scripts/services.sh restart kafka`"
    );
    let user = crate::common::unique("sj-user");
    let password = format!("right-{}", uuid::Uuid::new_v4().simple());
    crate::common::kafka_scram_user(&user, &password);
    let (pool, db) = crate::common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let sasl_port = format!("127.0.0.1:{port}");
    let env = |pw: &str| -> Vec<(String, String)> {
        let mut e = crate::common::isolated_env(&s, &db);
        e.extend(
            [
                ("SJ_KAFKA__BOOTSTRAP_SERVERS", sasl_port.as_str()),
                ("SJ_KAFKA_PROP_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
                ("SJ_KAFKA_PROP_SASL_MECHANISM", "SCRAM-SHA-256"),
                ("SJ_KAFKA_PROP_SASL_USERNAME", user.as_str()),
                ("SJ_KAFKA_PROP_SASL_PASSWORD", pw),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        e
    };

    // The right password: a processor and a trigger, both over SCRAM, run a job end to end.
    let log = std::env::temp_dir().join(format!("{}.log", crate::common::unique("sasl-run")));
    let mut proc = Command::new(binary())
        .current_dir(repo_root())
        .arg("run")
        .envs(env(&password))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let e = env(&password);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&e, &["trigger", "noop", "--param", "chunks=2", "--wait", "--timeout", "90s"])
    })
    .await
    .unwrap();
    let _ = proc.kill();
    let _ = proc.wait();
    let proc_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{stdout}\n{stderr}\nprocessor:\n{proc_log}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert!(!proc_log.contains(&password) && !stderr.contains(&password), "the password was printed");

    // A wrong password: `run` stops at start-up (no endless retry), saying authentication
    // failed, without printing either password.
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let e = env(&wrong);
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&e, &["run"])
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error:") && last.to_lowercase().contains("authentication"), "{stderr}");
    assert!(!stderr.contains(&wrong) && !stderr.contains(&password), "a password was printed:\n{stderr}");
}

/// Redis AUTH: a processor with an ACL user's right password starts (ready); a wrong password
/// ends start-up with an error that says so (not an endless retry) and prints no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credentials_are_used_and_a_wrong_password_fails_start_up_clearly() {
    let s = crate::common::isolated().await;
    let (pool, db) = crate::common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let mut admin = redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap()).await.unwrap();
    let user = crate::common::unique("sj-redis");
    let password = format!("right-{}", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = |pw: &str| -> Vec<(String, String)> {
        let mut e = crate::common::isolated_env(&s, &db);
        e.extend(
            [("SJ_REDIS__USERNAME", user.as_str()), ("SJ_REDIS__PASSWORD", pw), ("SJ_METRICS__LISTEN", &format!("127.0.0.1:{port}"))]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        e
    };
    let mut proc = Command::new(binary())
        .current_dir(repo_root())
        .arg("run")
        .envs(env(&password))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.map(|r| r.status().as_u16()).unwrap_or(0);
        if ready == 200 {
            break;
        }
        assert!(proc.try_wait().unwrap().is_none(), "run exited with the right Redis password");
        assert!(std::time::Instant::now() < deadline, "not ready with the right Redis password");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let _ = proc.kill();
    let _ = proc.wait();

    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let e = env(&wrong);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&e, &["run"])
    })
    .await
    .unwrap();
    let _: () = redis::cmd("ACL").arg("DELUSER").arg(&user).query_async(&mut admin).await.unwrap();
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error:") && last.contains("redis authentication failed"), "{stderr}");
    assert!(!stderr.contains(&wrong) && !stderr.contains(&password), "a password was printed:\n{stderr}");
}

/// Under `--log-format json` a failing command's last word is JSON too: one object with the
/// level, the message and each cause of the error chain (issue 16 item 5).
#[test]
fn the_fatal_error_is_one_json_line_under_log_format_json() {
    let (code, _, stderr) = run(&[], &["--log-format", "json", "--config", "/nonexistent/sj.toml", "config", "check"]);
    assert_eq!(code, 2, "{stderr}");
    let lines = json_lines(&stderr);
    let last = lines.last().expect("a fatal line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["fields"]["exit_code"], 2, "{last}");
    assert!(last["fields"]["message"].as_str().is_some_and(|m| m.contains("/nonexistent/sj.toml")), "{last}");
    let chain = last["fields"]["chain"].as_array().expect("an error chain");
    assert!(!chain.is_empty() && chain.iter().all(|c| c.is_string()), "{last}");

    // A command that fails against the real stack, after its clients have started.
    crate::common::stack();
    let topic = crate::common::unique("sj-no-such-topic");
    let (code, _, stderr) = run(&[], &["--log-format", "json", "tail", &topic, "--max-messages", "1"]);
    assert_eq!(code, 1, "{stderr}");
    let lines = json_lines(&stderr);
    let last = lines.last().expect("a fatal line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(last["fields"]["message"].as_str().is_some_and(|m| m.contains(&topic) && m.contains("topics apply")), "{last}");
}

/// Logs read from a pipe (a file, journald, a log collector) carry no ANSI colour codes, and
/// under `--log-format json` every line a running command logs is a JSON object
/// (issue 16 item 5). The tick producer logs at start and at stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_on_a_pipe_have_no_colour_codes_and_json_logs_are_json_throughout() {
    let s = crate::common::isolated().await;
    for format in ["text", "json"] {
        let log = std::env::temp_dir().join(format!("{}.log", crate::common::unique("sj-tick-log")));
        let mut child = Command::new(binary())
            .current_dir(repo_root())
            .args(["--log-format", format, "tick"])
            .envs(crate::common::isolated_env(&s, &s.postgres.database))
            // The defaults a user gets: no colour opt-out, no log filter of the caller's.
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn tick");
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !read().contains("tick producer started") {
            assert!(child.try_wait().expect("try_wait").is_none(), "tick exited: {}", read());
            assert!(std::time::Instant::now() < deadline, "tick never said it started: {}", read());
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
        assert!(child.wait().expect("wait").success(), "{}", read());
        let text = read();
        let _ = std::fs::remove_file(&log);
        assert!(text.contains("tick producer stopped"), "{text}");
        assert!(!text.contains('\x1b'), "{format} logs on a pipe carry escape codes:\n{text:?}");
        if format == "json" {
            for line in json_lines(&text) {
                assert!(line["level"].is_string() && line["fields"]["message"].is_string(), "{line}");
            }
        }
    }
}
