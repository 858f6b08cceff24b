use std::path::{Path, PathBuf};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::kafka::topics::TopicSpec;
use scheduled_jobs::wire::internal::WorkItem;
use sqlx::PgPool;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Brings the stack up once per test binary through the user's own script (a fast no-op when
/// it is already running, as in CI where `.ci/run` started it).
pub fn stack() {
    watch_test_binary();
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/services.sh"))
            .arg("up")
            .output()
            .expect("run scripts/services.sh up");
        assert!(
            out.status.success(),
            "scripts/services.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The overlay the single local broker needs (replication 1): the built-in default has none,
/// so the local stack selects it explicitly, as `scripts/services.sh env` does.
pub fn single_broker_overlay() -> PathBuf {
    repo_root().join("topics/overrides/single-broker.toml")
}

/// Settings as the binary would load them here (defaults ← SJ_* environment), with the repo's
/// topics/ and avro/ folders resolved absolutely and the single-broker overlay selected.
pub fn settings() -> Settings {
    stack();
    let mut s = Settings::load_from(None, std::env::vars()).expect("settings");
    s.topics.dir = repo_root().join("topics");
    s.topics.overrides = Some(single_broker_overlay());
    s.schemas.dir = repo_root().join("avro");
    s
}

/// A work item as the planner publishes one, for tests and benches that drive a job's `apply`
/// directly: chunk `index` of run `run_id` of `job` over `ids`, scheduled and planned at `at`,
/// period "p", tick "t". Override fields with struct update syntax where they matter.
pub fn work_item(job: &str, run_id: &str, index: i32, ids: Vec<String>, at: DateTime<Utc>) -> WorkItem {
    WorkItem {
        run_id: run_id.into(),
        job: job.into(),
        period: "p".into(),
        tick_id: "t".into(),
        trigger: "SCHEDULED".into(),
        chunk_index: index,
        chunk_count: -1,
        ids,
        parameters: Default::default(),
        scheduled_at: at,
        planned_at: at,
        resume_after: None,
        carried_counts: Default::default(),
    }
}

/// The whole minute `n` minutes before this test binary's first call. Every test's periods
/// count back from that one fixed minute: computed from the clock at each call, two calls a
/// test expects to differ (`minutes_ago(1)`, `minutes_ago(2)`) gave the same period when the
/// clock crossed a minute between them, and the second tick was a duplicate of the first.
pub fn minutes_ago(n: i64) -> DateTime<Utc> {
    static ANCHOR: OnceLock<i64> = OnceLock::new();
    let anchor = *ANCHOR.get_or_init(|| {
        let now = Utc::now().timestamp();
        now - now.rem_euclid(60)
    });
    DateTime::from_timestamp(anchor - n * 60, 0).expect("a whole minute")
}

/// Topic `topic`'s config `key` as DescribeConfigs reports it, once a broker that knows the
/// topic answers: a broker the new topic has not reached yet answers "unknown topic", which is
/// not an answer about its configs (waits up to [`WAIT`]).
pub async fn topic_config(s: &Settings, topic: &str, key: &str) -> Option<String> {
    let admin = scheduled_jobs::kafka::admin(s).expect("admin client");
    let until = std::time::Instant::now() + WAIT;
    loop {
        let specifier = rdkafka::admin::ResourceSpecifier::Topic(topic);
        let res = admin.describe_configs([specifier].iter(), &scheduled_jobs::kafka::admin_options(WAIT)).await.expect("describe configs");
        match &res[0] {
            Ok(configs) => return configs.get(key).and_then(|e| e.value.clone()),
            Err(_) if std::time::Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("topic {topic} still not described after {WAIT:?}: {e:?}"),
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn topic_spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        description: "test".into(),
        partitions,
        replication_factor: 1,
        key: "k".into(),
        value_schema: "SchedulerTick.avsc".into(),
        configs: [("retention.ms".to_string(), "3600000".to_string())].into_iter().collect(),
        file_replication_factor: 1,
    }
}

/// Creates topics for a test through the same code path as `topics apply`.
pub async fn create_topics(settings: &Settings, names: &[(&str, i32)]) {
    let specs: Vec<TopicSpec> = names.iter().map(|(n, p)| topic_spec(n, *p)).collect();
    scheduled_jobs::kafka::topics::apply(settings, &specs, false).await.expect("create test topics");
}

/// Test databases older than this are left over from earlier runs (a test run takes minutes).
const STALE_TEST_DB_SECS: u64 = 6 * 3600;

/// Drops the test databases earlier runs left behind (tests do not tear theirs down), once per
/// test binary: a developer's local stack would otherwise gain one per test per run. A name
/// carries its creation time (`sj_test_<unix seconds>_<random>`); one without it is older.
async fn sweep_stale_test_dbs(admin: &PgPool) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'sj\\_test\\_%'").fetch_all(admin).await.unwrap_or_default();
    for name in names {
        let created = name.strip_prefix("sj_test_").and_then(|rest| rest.split('_').next()).and_then(|t| t.parse::<u64>().ok());
        if created.is_none_or(|t| now.saturating_sub(t) > STALE_TEST_DB_SECS) {
            // Best effort: a database another run still uses is simply kept.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(admin).await;
        }
    }
}

/// A fresh, migrated database; dropped by the caller with [`drop_db`] when it wants.
pub async fn fresh_db(settings: &Settings) -> (PgPool, String) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("sj_test_{now}_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let admin = PgPool::connect_with(scheduled_jobs::db::connect_options(&settings.postgres, "postgres"))
        .await
        .expect("connect to postgres database");
    sweep_stale_test_dbs(&admin).await;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create test database");
    admin.close().await;
    let mut pg = settings.postgres.clone();
    pg.database = name.clone();
    let pool = scheduled_jobs::db::connect(&pg).await.expect("connect test database");
    (pool, name)
}

pub async fn drop_db(settings: &Settings, pool: PgPool, name: &str) {
    pool.close().await;
    let admin = PgPool::connect_with(scheduled_jobs::db::connect_options(&settings.postgres, "postgres"))
        .await
        .expect("connect to postgres database");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.expect("drop test db");
}

/// Removes every Redis key containing `tag` (a test's or bench's unique prefix), so runs do
/// not pile keys up in a developer's Redis, whose persistence work grows with them.
#[allow(dead_code)] // for the binaries that write many keys: tests/memory.rs and the benches
pub async fn unlink_tagged(settings: &Settings, tag: &str) {
    unlink_matching(settings, &format!("*{tag}*")).await;
}

/// The sum of every sample of `metrics` (the exposition text) whose line starts with `prefix`,
/// e.g. `scheduled_jobs_transactions_total{kind="committed"}`.
#[allow(dead_code)] // for the processor tests and the benches
pub fn metric_total(metrics: &str, prefix: &str) -> u64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>() as u64
}

/// Records handled and Kafka transactions committed, from a processor's metrics text.
#[allow(dead_code)] // for the processor tests and the benches
pub fn handled_and_committed(metrics: &str) -> (usize, usize) {
    let total = |prefix| metric_total(metrics, prefix) as usize;
    (total("scheduled_jobs_records_handled_total"), total("scheduled_jobs_transactions_total{kind=\"committed\"}"))
}

/// Deletes every topic under `settings`' unique prefix (see [`isolated`]): the benches run
/// long variants one after another, and a broker holding thousands of leftover partitions
/// spends CPU on them between requests (docs/performance.md, session 20). Best effort: a
/// topic left behind only costs the broker, so a failure is a warning naming it.
#[allow(dead_code)] // for the benches
pub async fn drop_topics(settings: &Settings) {
    let prefix = settings.topics.prefix.clone();
    if prefix.is_empty() {
        return;
    }
    let s = settings.clone();
    let listed = tokio::task::spawn_blocking(move || scheduled_jobs::kafka::metadata(&s, None, Duration::from_secs(10))).await;
    let names: Vec<String> = match listed {
        Ok(Ok(m)) => m.topics().iter().map(|t| t.name().to_string()).filter(|n| n.starts_with(&prefix)).collect(),
        Ok(Err(e)) => return eprintln!("warning: topics under prefix {prefix} not listed, so left behind: {e}"),
        Err(e) => return eprintln!("warning: topics under prefix {prefix} not listed, so left behind: {e}"),
    };
    if names.is_empty() {
        return;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let deleted = match scheduled_jobs::kafka::admin(settings) {
        Ok(admin) => admin.delete_topics(&refs, &scheduled_jobs::kafka::admin_options(Duration::from_secs(30))).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match deleted {
        Ok(results) => {
            for (topic, e) in results.into_iter().filter_map(Result::err) {
                eprintln!("warning: topic {topic} was left behind: {e:?}");
            }
        }
        Err(e) => eprintln!("warning: the {} topics under prefix {prefix} were left behind: {e}", names.len()),
    }
}

/// Removes every Redis key matching the glob `pattern`; returns how many went.
#[allow(dead_code)] // for the binaries that write many keys: tests/memory.rs and the benches
pub async fn unlink_matching(settings: &Settings, pattern: &str) -> usize {
    let url = secrecy::ExposeSecret::expose_secret(&settings.redis_url()).to_string();
    // No response timeout: deleting a million keys, Redis also rewrites its append-only file,
    // and a command then waits longer than the client's default 500 ms (the stock-sync bench's
    // every-key-missing phase died on it, session 27).
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let client = redis::Client::open(url).expect("redis url");
    let mut redis = redis::aio::ConnectionManager::new_with_config(client, config).await.expect("redis");
    let mut cursor: u64 = 0;
    let mut gone = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut redis)
            .await
            .expect("scan");
        if !keys.is_empty() {
            gone += keys.len();
            let _: () = redis::cmd("UNLINK").arg(&keys).query_async(&mut redis).await.expect("unlink");
        }
        if next == 0 {
            return gone;
        }
        cursor = next;
    }
}

/// The built binary, for tests that check what a user sees.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scheduled-jobs"))
}

pub const WAIT: Duration = Duration::from_secs(30);

/// Runs an async test body on its own multi-threaded runtime (like the real binary) and
/// guards the whole of it, the runtime's shutdown included: a test that hangs instead of
/// failing — a blocked librdkafka call on a worker keeps tokio's timers and its shutdown
/// waiting — prints every thread's stack (through gdb, when installed) and aborts the test
/// binary after `limit`, so CI fails in minutes with the evidence instead of at its time limit.
pub fn guarded<F: std::future::Future<Output = ()>>(name: &str, limit: Duration, workers: usize, body: F) {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let label = name.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
            stacks_and_abort(&format!("{label} still running after {limit:?}"));
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime");
    rt.block_on(body);
    drop(rt);
    let _ = done.send(());
}

/// Prints why, then every thread's stack (through gdb, when installed), and aborts the test
/// binary. Written to the stream itself: the test harness captures `eprintln!` (also from
/// threads a test spawns) and an aborted test never prints what it captured.
fn stacks_and_abort(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "watchdog: {why}; stacks of every thread follow (a test's thread is named after it)");
    let pid = std::process::id().to_string();
    let _ = Command::new("gdb").args(["-p", &pid, "-batch", "-ex", "thread apply all bt"]).status();
    std::process::abort();
}

/// Bounds the whole integration-test binary: a test that hangs where no per-test [`guarded`]
/// watches — CI of 2026-12-01 waited out its 90 minutes on one — prints every thread's stack
/// and aborts the binary once it has run for `SJ_TEST_BINARY_LIMIT_SECS` (default 1,800 s; the
/// binary takes ~9 minutes here), so CI fails early with the evidence. Only in the `it`
/// binary: the fault suite and the benches include this module too, and the fault suite's
/// long profile runs for 30 minutes by design (it is also compiled with `cfg(test)`).
fn watch_test_binary() {
    if !module_path!().starts_with("it::") {
        return;
    }
    static WATCH: OnceLock<()> = OnceLock::new();
    WATCH.get_or_init(|| {
        let limit = Duration::from_secs(std::env::var("SJ_TEST_BINARY_LIMIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(1800));
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            stacks_and_abort(&format!("the test binary still running after {limit:?}"));
        });
    });
}

/// Every record of `topic` as (partition, key, payload), read from the beginning until each
/// partition reports end-of-partition, with the given `isolation.level`.
pub fn read_all(settings: &Settings, topic: &str, isolation: &str) -> Vec<(i32, Option<Vec<u8>>, Option<Vec<u8>>)> {
    read_records(settings, topic, isolation).into_iter().map(|(partition, _, key, payload)| (partition, key, payload)).collect()
}

/// A record as (partition, offset, key, payload).
type Record = (i32, i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// [`read_all`] with each record's offset.
fn read_records(settings: &Settings, topic: &str, isolation: &str) -> Vec<Record> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::types::RDKafkaErrorCode;

    let mut cfg = scheduled_jobs::kafka::client_config(settings, scheduled_jobs::kafka::Role::Consumer);
    cfg.set("group.id", unique("reader"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cfg.create().expect("reader");
    let partitions = partitions_of(&consumer, topic);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at_end = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + WAIT;
    while at_end.len() < partitions.len() {
        assert!(std::time::Instant::now() < deadline, "timed out reading {topic}");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push((m.partition(), m.offset(), m.key().map(|k| k.to_vec()), m.payload().map(|p| p.to_vec())));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out
}

fn partitions_of(consumer: &rdkafka::consumer::BaseConsumer, topic: &str) -> Vec<i32> {
    use rdkafka::consumer::Consumer;
    let md = consumer.fetch_metadata(Some(topic), WAIT).expect("metadata");
    md.topics()[0].partitions().iter().map(|p| p.id()).collect()
}

/// A consumer that never joins a group (it only looks offsets up), reading with `isolation`;
/// `group` is whose committed offsets it can look up.
fn looker(settings: &Settings, group: &str, isolation: &str) -> rdkafka::consumer::BaseConsumer {
    let mut cfg = scheduled_jobs::kafka::client_config(settings, scheduled_jobs::kafka::Role::Consumer);
    cfg.set("group.id", group).set("isolation.level", isolation);
    cfg.create().expect("consumer")
}

/// Runs blocking Kafka look-ups off the async workers; a failed wait fails the test with
/// its own message.
async fn off_the_workers<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Polls `check` (every 200 ms, the poll interval of this bounded wait) until it reports
/// nothing left to wait for; fails after [`WAIT`] with `what` and the last report.
fn wait_until_empty(what: &str, mut check: impl FnMut() -> Vec<String>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let waiting = check();
        if waiting.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} after {WAIT:?}:\n{}", waiting.join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Partitions of `topics` with a transaction still open: there a read_committed consumer's
/// end (the last stable offset) is below a read_uncommitted one's (the high watermark).
fn open_transactions(committed: &rdkafka::consumer::BaseConsumer, uncommitted: &rdkafka::consumer::BaseConsumer, topics: &[String]) -> Vec<String> {
    use rdkafka::consumer::Consumer;
    let mut open = Vec::new();
    for topic in topics {
        for p in partitions_of(committed, topic) {
            // The stable offset first: it never passes the high watermark, so equal ends read
            // in this order mean no transaction was open when the first was read.
            let (_, stable) = committed.fetch_watermarks(topic, p, WAIT).expect("last stable offset");
            let (_, high) = uncommitted.fetch_watermarks(topic, p, WAIT).expect("high watermark");
            if stable < high {
                open.push(format!("{topic}[{p}]: last stable offset {stable} < high watermark {high}"));
            }
        }
    }
    open
}

/// Waits until no transaction is open on `topics`, so a read_committed reader sees everything
/// written to them so far (rather than sleeping for straggling transactions to land).
pub async fn settled(settings: &Settings, topics: &[Topic]) {
    let names: Vec<String> = topics.iter().map(|t| settings.topic(*t)).collect();
    let s = settings.clone();
    off_the_workers(move || {
        let (committed, uncommitted) = (looker(&s, &unique("settled"), "read_committed"), looker(&s, &unique("settled"), "read_uncommitted"));
        wait_until_empty("transactions still open", || open_transactions(&committed, &uncommitted, &names));
    })
    .await
}

/// Waits until consumer group `group` has committed past every record of `topics` and no
/// transaction that could add one is open on them: its members have nothing left to consume,
/// so nothing more can come of those records.
pub async fn caught_up(settings: &Settings, group: &str, topics: &[Topic]) {
    use rdkafka::consumer::Consumer;
    let names: Vec<String> = topics.iter().map(|t| settings.topic(*t)).collect();
    let (s, group) = (settings.clone(), group.to_string());
    off_the_workers(move || {
        let (committed, uncommitted) = (looker(&s, &group, "read_committed"), looker(&s, &unique("settled"), "read_uncommitted"));
        wait_until_empty(&format!("{group} has not caught up"), || {
            let mut behind = open_transactions(&committed, &uncommitted, &names);
            if !behind.is_empty() {
                return behind;
            }
            for topic in &names {
                // Past a partition's last record (not its end: a commit marker may follow it).
                let mut ends = std::collections::BTreeMap::new();
                for (p, offset, _, _) in read_records(&s, topic, "read_committed") {
                    ends.insert(p, offset + 1);
                }
                let mut tpl = rdkafka::TopicPartitionList::new();
                for p in ends.keys() {
                    tpl.add_partition(topic, *p);
                }
                let at = committed.committed_offsets(tpl, WAIT).expect("committed offsets");
                for (p, end) in ends {
                    let offset = at.find_partition(topic, p).map(|e| e.offset());
                    if !matches!(offset, Some(rdkafka::Offset::Offset(o)) if o >= end) {
                        behind.push(format!("{topic}[{p}]: committed {offset:?}, records up to offset {}", end - 1));
                    }
                }
            }
            behind
        });
    })
    .await
}

/// Waits until consumer group `group` has exactly `n` members, and for `n > 0` has finished
/// rebalancing (state Stable: each member has its partitions).
pub async fn group_has_members(settings: &Settings, group: &str, n: usize) {
    use rdkafka::consumer::Consumer;
    let (s, group) = (settings.clone(), group.to_string());
    off_the_workers(move || {
        let c = looker(&s, &group, "read_committed");
        wait_until_empty(&format!("consumer group {group} does not have {n} member(s)"), || {
            let list = c.fetch_group_list(Some(&group), WAIT).expect("describe group");
            let (members, state) =
                list.groups().iter().find(|g| g.name() == group).map_or((0, "absent".to_string()), |g| (g.members().len(), g.state().to_string()));
            if members == n && (n == 0 || state == "Stable") {
                Vec::new()
            } else {
                vec![format!("{members} member(s), state {state}")]
            }
        });
    })
    .await
}

/// Settings with a random `topics.prefix`, every topic of topics/ created under it and every
/// schema registered: a whole private environment for one test.
pub async fn isolated() -> Settings {
    isolated_with(|_| {}).await
}

/// [`isolated`], with `adjust` applied to the settings before the topics are made (e.g. another
/// cluster's bootstrap and no overlay).
pub async fn isolated_with(adjust: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = settings();
    adjust(&mut s);
    s.topics.prefix = format!("{}.", unique("t"));
    s.processor.group_id = unique("processor");
    s.processor.transactional_id_prefix = unique("txn");
    let specs = scheduled_jobs::kafka::topics::configured_specs(&s).expect("topic specs");
    scheduled_jobs::kafka::topics::apply(&s, &specs, false).await.expect("apply test topics");
    let schemas = scheduled_jobs::kafka::schemas::load(&s.schemas.dir, &specs).expect("schemas");
    let registry = scheduled_jobs::kafka::schemas::Registry::new(&s).expect("registry");
    scheduled_jobs::kafka::schemas::register(&registry, &schemas).await.expect("register test schemas");
    s
}

/// `s` with the `noop` test job enabled, as a configuration must to run it (it is off, not
/// listed and not triggerable otherwise).
pub fn with_noop(mut s: Settings) -> Settings {
    s.jobs.get_mut("noop").expect("noop is in the catalog").enabled = true;
    s
}

/// The environment that passes `s`'s enabling of the `noop` test job on to the binary.
pub fn noop_env(s: &Settings) -> Option<(&'static str, &'static str)> {
    s.job("noop").is_some_and(|j| j.enabled).then_some(("SJ_JOBS__NOOP__ENABLED", "true"))
}

/// The environment that points the binary at `s`'s private topics (and topic overlay), group,
/// transactional ids and `database`, with `noop` enabled when `s` enables it (add what a test
/// needs on top).
pub fn isolated_env(s: &Settings, database: &str) -> Vec<(String, String)> {
    let overrides = s.topics.overrides.as_deref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    [
        ("SJ_TOPICS__OVERRIDES", overrides.as_str()),
        ("SJ_TOPICS__PREFIX", s.topics.prefix.as_str()),
        ("SJ_PROCESSOR__GROUP_ID", s.processor.group_id.as_str()),
        ("SJ_PROCESSOR__TRANSACTIONAL_ID_PREFIX", s.processor.transactional_id_prefix.as_str()),
        ("SJ_POSTGRES__DATABASE", database),
    ]
    .into_iter()
    .chain(noop_env(s))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The local stack's folder, as scripts/services.sh resolves it: `SJ_LOCAL_DIR` (relative to
/// the repository, where the script runs from in CI) or `<repo>/.local`.
pub fn local_dir() -> PathBuf {
    match std::env::var_os("SJ_LOCAL_DIR") {
        Some(d) if !d.is_empty() => repo_root().join(d),
        _ => repo_root().join(".local"),
    }
}

/// A port of the local stack: the script's `SJ_*_PORT` variable, or its default.
pub fn stack_port(var: &str, default: u16) -> u16 {
    std::env::var(var).ok().and_then(|p| p.parse().ok()).unwrap_or(default)
}

/// The CA that issued the local stack's server certificate (scripts/services.sh makes it on
/// first start), after checking that a TLS listener answers on 127.0.0.1:`port`.
pub fn stack_ca(port: u16) -> PathBuf {
    stack();
    let ca = local_dir().join("tls/ca.crt");
    assert!(
        ca.is_file() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "no TLS listener on 127.0.0.1:{port} or no {}: this stack was started before services.sh \
         had TLS; restart it (`scripts/services.sh down && scripts/services.sh up`)",
        ca.display()
    );
    ca
}

/// A SCRAM-SHA-256 and SCRAM-SHA-512 user of the local broker's SASL listeners, made the way
/// an operator would (`scripts/services.sh kafka-scram-user`).
pub fn kafka_scram_user(user: &str, password: &str) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/services.sh"))
        .args(["kafka-scram-user", user, password])
        .output()
        .expect("services.sh kafka-scram-user");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A three-node cluster of scripts/services.sh; stopped (and its folder removed) on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub base_port: u16,
}

/// Node i listens on base + 10*(i-1) (client), +1 (controller), +2 (SASL).
const PORT_OFFSETS: [u16; 9] = [0, 1, 2, 10, 11, 12, 20, 21, 22];

fn free_port(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = std::env::temp_dir().join(unique("sj-cluster"));
        std::fs::create_dir_all(dir.join("kafka-1")).expect("cluster folder");
        // The broker classpath of the local stack, if it resolved one: saves a Maven run.
        let stack_dir = std::env::var_os("SJ_LOCAL_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".local"));
        for f in ["classpath.txt", "classpath.key"] {
            let _ = std::fs::copy(stack_dir.join("kafka").join(f), dir.join("kafka-1").join(f));
        }
        let seed = std::process::id() as u16;
        let base_port = (0..200u16)
            // Below the ephemeral range (32768+), so no outgoing connection takes one meanwhile.
            .map(|i| 21_000 + (seed.wrapping_add(i * 7) % 250) * 30)
            .find(|b| PORT_OFFSETS.iter().all(|o| free_port(b + o)))
            .expect("nine free ports for the cluster");
        let cluster = Cluster { dir, base_port };
        let out = cluster.services(&["start", "kafka"]);
        assert!(out.status.success(), "services.sh start kafka (3 brokers) failed:\n{}", text(&out));
        cluster
    }

    pub fn services(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo_root().join("scripts/services.sh"))
            .args(args)
            .env("SJ_LOCAL_DIR", &self.dir)
            .env("SJ_KAFKA_BROKERS", "3")
            .env("SJ_KAFKA_PORT", self.base_port.to_string())
            .env("SJ_KAFKA_CONTROLLER_PORT", (self.base_port + 1).to_string())
            .env("SJ_KAFKA_SASL_PORT", (self.base_port + 2).to_string())
            .output()
            .expect("run scripts/services.sh")
    }

    /// The process id of node `n` (1..=3) while it runs (the fault suite's cluster profile).
    #[allow(dead_code)]
    pub fn pid(&self, n: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("kafka-{n}")).join("kafka.pid")).ok()?.trim().parse().ok()
    }

    /// The controller port of node `n` (1..=3) (the fault suite's cluster profile).
    #[allow(dead_code)]
    pub fn controller_port(&self, n: usize) -> u16 {
        self.base_port + 10 * (n as u16 - 1) + 1
    }

    /// `scripts/services.sh env` of this cluster, as (name, value) pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        let out = self.services(&["env"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.services(&["stop", "kafka"]);
        if out.status.success() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("could not stop the test cluster in {}:\n{}", self.dir.display(), text(&out));
        }
    }
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
