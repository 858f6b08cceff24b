//! Issue 17 item 5, security end to end against the local stack's TLS listeners
//! (scripts/services.sh generates a CA and a server certificate for 127.0.0.1/localhost):
//! Kafka over SSL and SASL_SSL (SCRAM-SHA-256/512), Redis over TLS with an ACL password full
//! of URL delimiters, PostgreSQL with `sslmode=require` and `verify-full`. The real binary is
//! configured only through its settings, as an operator would; a missing or foreign CA ends
//! start-up with an error that names the failed certificate verification.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scheduled_jobs::wire::internal::Outcome;

use crate::cli::run;
use crate::common::{binary, fresh_db, isolated, isolated_env, kafka_scram_user, repo_root, stack_ca, stack_port, unique, with_noop};
use crate::operations::Killed;

fn kafka_ssl_port() -> u16 {
    stack_port("SJ_KAFKA_SSL_PORT", 9095)
}

fn kafka_sasl_ssl_port() -> u16 {
    stack_port("SJ_KAFKA_SASL_SSL_PORT", 9096)
}

fn redis_tls_port() -> u16 {
    stack_port("SJ_REDIS_TLS_PORT", 6380)
}

/// A CA of its own, which issued nothing the stack presents: trusting it must fail.
fn foreign_ca() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("sj-foreign-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=foreign test CA"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("ca.crt")
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Starts the binary with `args` and `env`, its log (stderr) in a file.
fn spawn(env: &[(String, String)], args: &[&str], log: &Path) -> Killed {
    Killed(
        Command::new(binary())
            .current_dir(repo_root())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn the binary"),
    )
}

/// Runs the binary to its end on a blocking thread: (exit code, stdout, stderr).
async fn finish(env: Vec<(String, String)>, args: &'static [&'static str]) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&e, args)
    })
    .await
    .unwrap()
}

/// `args` must fail at start-up, in well under a minute, its last line naming a failed
/// certificate verification. A process still running after a minute (retrying, as before
/// such failures were fatal) is killed and fails the test rather than hanging it.
async fn fails_on_the_certificate(env: Vec<(String, String)>, args: &'static [&'static str], what: &str) {
    let log = std::env::temp_dir().join(unique("tls-fail"));
    let mut child = spawn(&env, args, &log);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(child);
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let status = status.unwrap_or_else(|| panic!("{what}: `{}` still running after 60 s\n{stderr}", args.join(" ")));
    assert!(!status.success(), "{what}: `{}` succeeded\n{stderr}", args.join(" "));
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error:") && last.contains("TLS handshake failed") && last.contains("certificate verify failed"),
        "{what}: `{}` did not end naming the certificate verification:\n{stderr}",
        args.join(" ")
    );
}

/// The processor and the tick producer connect to the broker's SSL listener trusting the
/// stack's CA (host name verified: the certificate is for 127.0.0.1) and a scheduled run goes
/// from tick to committed result. Without the CA, or trusting a foreign one, `run` and `tick`
/// each stop within the metadata timeout saying the TLS handshake failed on the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_and_tick_producer_run_a_job_over_kafka_tls_and_stop_clearly_without_the_ca() {
    let port = kafka_ssl_port();
    let ca = stack_ca(port);
    let s = with_noop(isolated().await);
    let (pool, db) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let bootstrap = format!("127.0.0.1:{port}");
    let base = with(
        isolated_env(&s, &db),
        &[
            ("SJ_KAFKA__BOOTSTRAP_SERVERS", &bootstrap),
            ("SJ_KAFKA_PROP_SECURITY_PROTOCOL", "SSL"),
            // Every second: the producer publishes a SCHEDULED tick at once.
            ("SJ_JOBS__NOOP__SCHEDULE", "* * * * * *"),
        ],
    );
    let ca_str = ca.to_str().unwrap();
    let tls = with(base.clone(), &[("SJ_KAFKA_PROP_SSL_CA_LOCATION", ca_str)]);

    let (run_log, tick_log) = (std::env::temp_dir().join(unique("tls-run")), std::env::temp_dir().join(unique("tls-tick")));
    let mut processor = spawn(&tls, &["run"], &run_log);
    let mut producer = spawn(&tls, &["tick"], &tick_log);
    let logs = || {
        format!(
            "processor:\n{}\ntick producer:\n{}",
            std::fs::read_to_string(&run_log).unwrap_or_default(),
            std::fs::read_to_string(&tick_log).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let result = loop {
        let results = crate::processor::results(&s).await;
        // Ticks come every second: those that queued up while the processor started are
        // coalesced into the newest (COALESCED, by design). One must succeed, none fail.
        let scheduled: Vec<_> = results.into_iter().filter(|r| r.job == "noop" && r.trigger == "SCHEDULED").collect();
        assert!(scheduled.iter().all(|r| r.outcome != Outcome::Failed), "a run failed over TLS: {scheduled:?}\n{}", logs());
        if let Some(r) = scheduled.into_iter().find(|r| r.outcome == Outcome::Succeeded) {
            break r;
        }
        assert!(processor.0.try_wait().unwrap().is_none(), "run exited over TLS\n{}", logs());
        assert!(producer.0.try_wait().unwrap().is_none(), "tick exited over TLS\n{}", logs());
        assert!(Instant::now() < deadline, "no scheduled run result over TLS within 90 s\n{}", logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    drop(processor);
    drop(producer);

    // No CA (the system's store does not know the stack's) and a foreign CA: all four at once.
    let foreign = foreign_ca();
    let foreign_env = with(base.clone(), &[("SJ_KAFKA_PROP_SSL_CA_LOCATION", foreign.to_str().unwrap())]);
    tokio::join!(
        fails_on_the_certificate(base.clone(), &["run"], "run without the CA"),
        fails_on_the_certificate(base, &["tick"], "tick without the CA"),
        fails_on_the_certificate(foreign_env.clone(), &["run"], "run trusting a foreign CA"),
        fails_on_the_certificate(foreign_env, &["tick"], "tick trusting a foreign CA"),
    );
}

/// SASL/SCRAM over TLS: a processor authenticating with SCRAM-SHA-512 and a trigger with
/// SCRAM-SHA-256, both on the SASL_SSL listener, run a job end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_and_512_over_tls_run_a_job_end_to_end() {
    let port = kafka_sasl_ssl_port();
    let ca = stack_ca(port);
    let s = with_noop(isolated().await);
    let user = unique("sj-tls-user");
    let password = format!("right-{}", uuid::Uuid::new_v4().simple());
    kafka_scram_user(&user, &password);
    let (pool, db) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let bootstrap = format!("127.0.0.1:{port}");
    let env = |mechanism: &str| {
        with(
            isolated_env(&s, &db),
            &[
                ("SJ_KAFKA__BOOTSTRAP_SERVERS", &bootstrap),
                ("SJ_KAFKA_PROP_SECURITY_PROTOCOL", "SASL_SSL"),
                ("SJ_KAFKA_PROP_SSL_CA_LOCATION", ca.to_str().unwrap()),
                ("SJ_KAFKA_PROP_SASL_MECHANISM", mechanism),
                ("SJ_KAFKA_PROP_SASL_USERNAME", &user),
                ("SJ_KAFKA_PROP_SASL_PASSWORD", &password),
            ],
        )
    };
    let log = std::env::temp_dir().join(unique("sasl-ssl-run"));
    let processor = spawn(&env("SCRAM-SHA-512"), &["run"], &log);
    let (code, stdout, stderr) =
        finish(env("SCRAM-SHA-256"), &["trigger", "noop", "--param", "chunks=2", "--wait", "--timeout", "90s"]).await;
    drop(processor);
    let proc_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{stdout}\n{stderr}\nprocessor:\n{proc_log}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert!(!proc_log.contains(&password) && !stderr.contains(&password), "the password was printed");
}

/// Redis over TLS (`redis.tls`, `redis.ca_file`) as an ACL user whose password holds `@`, `:`
/// and `/`: the processor's order-expiration run gives an expired order's reservation back in
/// Redis through that connection. Without `redis.ca_file` the server's certificate does not
/// verify and `run` stops saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password_full_of_url_delimiters_carries_a_real_job_effect() {
    let port = redis_tls_port();
    let ca = stack_ca(port);
    let s = isolated().await;
    let (pool, db) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();

    // An expired order holding 3 of a product, reserved through the plain port.
    let tag = unique("tls-oe");
    let (product, order) = (format!("{tag}-p"), format!("{tag}-o"));
    sqlx::query("INSERT INTO products (id, name, stock) VALUES ($1, 'tls product', 100)").bind(&product).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO orders (id, user_id, status, total_amount, created_at) VALUES ($1, 'u', 'PAYMENT_WAIT', 37.02, now() - interval '1 hour')")
        .bind(&order)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ($1, $2, 3, 12.34)")
        .bind(&order)
        .bind(&product)
        .execute(&pool)
        .await
        .unwrap();
    let plain = scheduled_jobs::jobs::stock::Stock::new(
        redis::aio::ConnectionManager::new(s.redis_client().unwrap()).await.unwrap(),
    );
    let _: () = redis::cmd("SET").arg(scheduled_jobs::jobs::stock::stock_key(&product)).arg(100).query_async(&mut plain.connection()).await.unwrap();
    assert_eq!(plain.reserve(&order, &[(product.clone(), 3)]).await.unwrap(), scheduled_jobs::jobs::stock::Reserve::Reserved);

    let user = unique("sj-tls");
    let password = format!("p@ss:w/rd-{}", uuid::Uuid::new_v4().simple());
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", &format!(">{password}"), "~*", "&*", "+@all"])
        .query_async(&mut plain.connection())
        .await
        .unwrap();
    let port_str = port.to_string();
    let tls_env = with(
        isolated_env(&s, &db),
        &[
            ("SJ_REDIS__PORT", &port_str),
            ("SJ_REDIS__TLS", "true"),
            ("SJ_REDIS__USERNAME", &user),
            ("SJ_REDIS__PASSWORD", &password),
        ],
    );

    // Without the CA: the certificate does not verify, and start-up says so.
    fails_on_the_certificate(tls_env.clone(), &["run"], "run without redis.ca_file").await;

    let env = with(tls_env, &[("SJ_REDIS__CA_FILE", ca.to_str().unwrap())]);
    let log = std::env::temp_dir().join(unique("redis-tls-run"));
    let processor = spawn(&env, &["run"], &log);
    let (code, stdout, stderr) = finish(env, &["trigger", "order-expiration", "--wait", "--timeout", "90s"]).await;
    drop(processor);
    let proc_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{stdout}\n{stderr}\nprocessor:\n{proc_log}");
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert!(!proc_log.contains(&password) && !stderr.contains(&password), "the password was printed");

    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1").bind(&order).fetch_one(&pool).await.unwrap();
    assert_eq!(status, "ORDER_CANCELLED");
    assert_eq!(plain.stocks(std::slice::from_ref(&product)).await.unwrap(), vec![Some(100)], "the reservation was given back");
    let held: i64 = redis::cmd("EXISTS").arg(scheduled_jobs::jobs::stock::reservation_key(&order)).query_async(&mut plain.connection()).await.unwrap();
    assert_eq!(held, 0, "the reservation key is gone");
}

/// PostgreSQL: `sslmode=require` gets an encrypted session from the local server, and
/// `verify-full` with `postgres.sslrootcert` = the stack's CA verifies it, host name included
/// (the binary migrates a database that way); a foreign CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_are_encrypted_under_require_and_verified_under_verify_full() {
    let s = crate::common::settings();
    let ca = stack_ca(s.postgres.port);
    let (pool, db) = fresh_db(&s).await;
    drop(pool);
    let encrypted = |pg: scheduled_jobs::config::PostgresSettings| async move {
        let pool = scheduled_jobs::db::connect(&pg).await?;
        let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await?;
        pool.close().await;
        Ok::<bool, Box<dyn std::error::Error>>(ssl)
    };
    let mut pg = s.postgres.clone();
    pg.database = db.clone();
    pg.sslmode = "require".into();
    assert!(encrypted(pg.clone()).await.expect("sslmode=require connects"), "a require session is encrypted");
    pg.sslmode = "verify-full".into();
    pg.sslrootcert = Some(ca.clone());
    assert!(encrypted(pg.clone()).await.expect("verify-full with the stack's CA connects"));
    pg.sslrootcert = Some(foreign_ca());
    let e = encrypted(pg).await.expect_err("verify-full trusting a foreign CA").to_string();
    assert!(e.contains("certificate"), "{e}");

    let port = s.postgres.port.to_string();
    let env = [
        ("SJ_POSTGRES__PORT", port.as_str()),
        ("SJ_POSTGRES__DATABASE", db.as_str()),
        ("SJ_POSTGRES__SSLMODE", "verify-full"),
        ("SJ_POSTGRES__SSLROOTCERT", ca.to_str().unwrap()),
    ];
    let (code, stdout, stderr) = run(&env, &["db", "migrate"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("applied"), "{stdout}");
}
