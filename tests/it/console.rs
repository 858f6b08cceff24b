//! Issue 20: the console's pages (schedules, runs, a run, dead letters, lag) and actions, read
//! and used in a real headless Chromium (Debian's `chromium` + `chromium-driver`, over
//! WebDriver) against the real stack with real runs. `SJ_CONSOLE_SCREENSHOTS=<dir>` saves each page at desktop width there
//! (how docs/console/ is made).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use scheduled_jobs::config::Settings;
use scheduled_jobs::runtime::control;
use scheduled_jobs::schedule::Schedule;
use thirtyfour::prelude::*;

use crate::common::{isolated, with_noop};
use crate::processor::{drive, processor_on, publish, test_db, tick};

/// A chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { child, url }
}

async fn browser(driver: &Driver) -> WebDriver {
    let mut caps = DesiredCapabilities::chrome();
    caps.set_binary("/usr/bin/chromium").unwrap();
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,900"] {
        caps.add_arg(arg).unwrap();
    }
    WebDriver::new(&driver.url, caps).await.expect("a headless Chromium session")
}

/// Waits until the element at `css` has a text containing `wanted` (after a click, the form's
/// POST and the page it leads to load on their own time); gives that text.
async fn text_once(page: &WebDriver, css: &str, wanted: &str) -> String {
    shows(page, None, css, wanted).await
}

/// Waits until the element at `css` shows `wanted`, loading `url` again each time if given (the
/// history and the dead letters are read every 2 s, lag every `metrics.lag_interval_secs`);
/// gives its text. The element may be missing meanwhile (a page reloading itself).
async fn shows(page: &WebDriver, url: Option<&str>, css: &str, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(url) = url {
            page.goto(url).await.unwrap();
        }
        let text = match page.find(By::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(wanted) {
            return text;
        }
        assert!(Instant::now() < deadline, "{url:?}: `{css}` did not show `{wanted}` within 60 s: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn screenshot(page: &WebDriver, name: &str) {
    if let Ok(dir) = std::env::var("SJ_CONSOLE_SCREENSHOTS") {
        page.screenshot(&std::path::Path::new(&dir).join(format!("{name}.png"))).await.unwrap();
    }
}

/// The console of `s` on a free port; its address.
async fn console(s: &Settings, pool: sqlx::PgPool) -> String {
    let listener = scheduled_jobs::ops::console::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tz = s.time_zone().unwrap();
    tokio::spawn(scheduled_jobs::ops::console::serve(listener, s.clone(), tz, pool, std::future::pending()));
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_schedule_with_its_next_fire_times_and_a_run_as_it_completes() {
    let s = with_noop(isolated().await);
    let pool = test_db(&s).await;
    control::pause(&pool, "stock-sync", "on-call", Some("Redis maintenance")).await.unwrap();
    let base = console(&s, pool.clone()).await;
    let driver = driver().await;
    let page = browser(&driver).await;

    // Schedules: every job of the configuration, with the next five fire times of its cron in
    // the configured zone.
    let before = Utc::now();
    page.goto(format!("{base}/")).await.unwrap();
    let after = Utc::now();
    let rows = page.find_all(By::Css("#schedules tr[data-job]")).await.unwrap();
    let mut jobs = Vec::new();
    for row in &rows {
        jobs.push(row.attr("data-job").await.unwrap().unwrap());
    }
    assert_eq!(jobs, ["noop", "order-expiration", "stock-sync", "daily-statistics", "stock-sync-report", "daily-statistics-report"], "the catalog's order");
    let tz = s.time_zone().unwrap();
    for (row, job) in rows.iter().zip(&jobs) {
        let cron = &s.job(job).unwrap().schedule;
        let times = row.find_all(By::Css("td.next time")).await.unwrap();
        if cron.is_empty() {
            assert!(times.is_empty(), "{job} is triggered only");
            assert!(row.text().await.unwrap().contains("triggered only"));
            continue;
        }
        let schedule = Schedule::parse(cron, tz).unwrap();
        let mut shown = Vec::new();
        for t in &times {
            let at = t.attr("datetime").await.unwrap().unwrap();
            shown.push(DateTime::parse_from_rfc3339(&at).unwrap().to_utc());
        }
        assert_eq!(shown.len(), 5, "{job}");
        // Computed when the page was rendered: between `before` and `after`.
        let first = [schedule.next_after(before).unwrap(), schedule.next_after(after).unwrap()];
        assert!(first.contains(&shown[0]), "{job}: {shown:?} against {first:?}");
        for pair in shown.windows(2) {
            assert_eq!(schedule.next_after(pair[0]), Some(pair[1]), "{job}: {shown:?}");
        }
    }
    let state = rows[2].find(By::Css("td.state")).await.unwrap().text().await.unwrap();
    assert!(state.contains("paused by on-call") && state.contains("Redis maintenance"), "{state}");
    screenshot(&page, "schedules").await;

    // A run: planned and applied by a real processor, then on the runs page (the history is
    // read again every 2 s) and as the job's last run.
    let at = Utc::now() - TimeDelta::minutes(2);
    publish(&s, &[tick("noop", DateTime::from_timestamp(at.timestamp() - at.timestamp() % 60, 0).unwrap(), &[("chunks", "3")])]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        page.goto(format!("{base}/runs?job=noop")).await.unwrap();
        if let Some(row) = page.find_all(By::Css("#runs tr[data-run]")).await.unwrap().into_iter().next() {
            // Read while the run was planned and not finished, it shows RUNNING first.
            let text = row.text().await.unwrap();
            if !text.contains("RUNNING") {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "the run did not appear finished on the runs page within 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(row.contains("SUCCEEDED") && row.contains("chunks=3") && row.contains("/ 60 s"), "{row}");
    screenshot(&page, "runs").await;
    page.goto(format!("{base}/")).await.unwrap();
    let noop = page.find(By::Css("#schedules tr[data-job='noop']")).await.unwrap().text().await.unwrap();
    assert!(noop.contains("SUCCEEDED"), "{noop}");
    // A filter with no match shows no run.
    page.goto(format!("{base}/runs?job=noop&outcome=FAILED")).await.unwrap();
    assert!(page.find_all(By::Css("#runs tr[data-run]")).await.unwrap().is_empty());
    // A time range, in local time as the browser's date-time inputs send it.
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string();
    let around = format!("{base}/runs?job=noop&from={}&to={}", local(Utc::now() - TimeDelta::minutes(10)), local(Utc::now() + TimeDelta::minutes(2)));
    page.goto(around).await.unwrap();
    assert_eq!(page.find_all(By::Css("#runs tr[data-run]")).await.unwrap().len(), 1);
    page.goto(format!("{base}/runs?job=noop&from={}", local(Utc::now() + TimeDelta::minutes(2)))).await.unwrap();
    assert!(page.find_all(By::Css("#runs tr[data-run]")).await.unwrap().is_empty());
    let bad = reqwest::get(format!("{base}/runs?from=yesterday")).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("from: `yesterday` is not a date and time"));
    page.quit().await.unwrap();
}

/// Issue 20's actions: refused without credentials or without the form's token; from the page,
/// a pause (who and why recorded) makes the next tick SKIPPED, resume lifts it, and a trigger
/// shows its run live until it has succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_actions_need_credentials_and_the_forms_token_and_take_effect() {
    let mut s = with_noop(isolated().await);
    s.console.username = "alice".into();
    s.console.password = Some("s3cret".to_string().into());
    let pool = test_db(&s).await;
    let base = console(&s, pool.clone()).await;
    let addr = base.trim_start_matches("http://").to_string();

    // Refused: no credentials, wrong ones, and the right ones without the form's token.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    assert_eq!(http.get(format!("{base}/")).send().await.unwrap().status(), 401);
    assert_eq!(http.post(format!("{base}/jobs/noop/pause")).header("content-type", "application/x-www-form-urlencoded").body("csrf=x&reason=r").send().await.unwrap().status(), 401);
    let wrong = http.post(format!("{base}/jobs/noop/pause")).basic_auth("alice", Some("guess")).header("content-type", "application/x-www-form-urlencoded").body("csrf=x").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let forged = http.post(format!("{base}/jobs/noop/pause")).basic_auth("alice", Some("s3cret")).header("content-type", "application/x-www-form-urlencoded").body("csrf=x&reason=r").send().await.unwrap();
    assert_eq!(forged.status(), 403, "a form that is not the console's");
    assert!(control::paused(&pool, "noop").await.unwrap().is_none(), "nothing refused took effect");

    // A processor, so what the page triggers runs.
    let p = processor_on(&s, pool.clone()).await;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));

    let driver = driver().await;
    let page = browser(&driver).await;
    page.goto(format!("http://alice:s3cret@{addr}/")).await.unwrap();
    let row = page.find(By::Css("#schedules tr[data-job='noop']")).await.unwrap();
    row.find(By::Css("input[name='reason']")).await.unwrap().send_keys("deploying a fix").await.unwrap();
    row.find(By::Css("button.pause")).await.unwrap().click().await.unwrap();
    let state = text_once(&page, "#schedules tr[data-job='noop'] td.state", "paused by alice (console)").await;
    assert!(state.contains("deploying a fix"), "{state}");
    let pause = control::paused(&pool, "noop").await.unwrap().expect("paused through the same path as `pause`");
    assert_eq!((pause.paused_by.as_str(), pause.reason.as_deref()), ("alice (console)", Some("deploying a fix")));
    screenshot(&page, "schedules-actions").await;

    // The next tick is SKIPPED, naming the pause.
    let at = Utc::now() - TimeDelta::minutes(3);
    let skipped = tick("noop", DateTime::from_timestamp(at.timestamp() - at.timestamp() % 60, 0).unwrap(), &[]);
    publish(&s, std::slice::from_ref(&skipped)).await;
    let r = crate::processor::wait_for_results(&s, 1, Duration::from_secs(60)).await;
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, scheduled_jobs::wire::internal::Outcome::Skipped);
    assert!(r[0].message.as_deref().unwrap().contains("alice (console)"), "{:?}", r[0]);

    // Resumed from the page, then triggered: the run's page follows it until it succeeded.
    page.find(By::Css("#schedules tr[data-job='noop'] button.resume")).await.unwrap().click().await.unwrap();
    text_once(&page, "#schedules tr[data-job='noop'] td.state", "enabled").await;
    assert!(control::paused(&pool, "noop").await.unwrap().is_none());
    page.find(By::Css("#schedules tr[data-job='noop'] button.trigger")).await.unwrap().click().await.unwrap();
    text_once(&page, "#progress", "").await;
    let url = page.current_url().await.unwrap().to_string();
    assert!(url.contains("/ticks/"), "{url}");
    let tick_id = url.rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The page reloads itself every second while the run goes on: mid-reload the element
        // may be missing.
        let progress = match page.find(By::Css("#progress")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if progress.contains("SUCCEEDED") {
            break;
        }
        assert!(Instant::now() < deadline, "the triggered run did not show SUCCEEDED within 60 s: {progress}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    screenshot(&page, "run").await;
    let r = crate::processor::results(&s).await;
    let triggered: Vec<_> = r.iter().filter(|x| x.tick_id == tick_id).collect();
    assert_eq!(triggered.len(), 1, "{r:#?}");
    assert_eq!((triggered[0].trigger.as_str(), triggered[0].outcome), ("MANUAL", scheduled_jobs::wire::internal::Outcome::Succeeded));
    page.quit().await.unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// Issue 20's run page, dead letters and lag, with real runs: a stock-sync run's page shows its
/// chunks, its events per topic and its mismatches by cause and repair; a daily-statistics run's
/// page shows the figures of its date, and re-running that date from the runs page stores them
/// again under a new run; a garbage tick is shown decoded on the dead letters page, headers
/// included; the lag page shows the processor group and a downstream group with its chart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_runs_chunks_events_and_records_the_dead_letters_and_the_lag() {
    let analytics = crate::common::unique("analytics");
    let mut s = isolated().await;
    s.console.username = "alice".into();
    s.console.password = Some("s3cret".to_string().into());
    s.metrics.downstream_groups = format!("{analytics}:daily.statistics");
    s.metrics.lag_interval_secs = 1;
    let pool = test_db(&s).await;
    let stock = scheduled_jobs::jobs::stock::Stock::connect(secrecy::ExposeSecret::expose_secret(&s.redis_url())).await.unwrap();
    let mut redis = stock.connection();
    // Three products: one whose Redis key is gone, one drifted, one right.
    let prefix = crate::common::unique("cp");
    for (name, db, cached) in [("gone", 5, None), ("drifted", 7, Some(3)), ("right", 9, Some(9))] {
        let id = format!("{prefix}-{name}");
        sqlx::query("INSERT INTO products (id, name, stock) VALUES ($1, $1, $2)").bind(&id).bind(db).execute(&pool).await.unwrap();
        let key = scheduled_jobs::jobs::stock::stock_key(&id);
        match cached {
            Some(v) => redis::AsyncCommands::set::<_, _, ()>(&mut redis, key, v).await.unwrap(),
            None => redis::AsyncCommands::del::<_, ()>(&mut redis, key).await.unwrap(),
        }
    }
    // One order paid on 2025-06-01 in the shop's zone (Asia/Seoul: 10:00 there).
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_amount, created_at, paid_at)
         VALUES ($1, 'u', 'PAYMENT_COMPLETED', 12345.67, '2025-06-01T01:00:00Z', '2025-06-01T01:00:00Z')",
    )
    .bind(format!("{prefix}-order"))
    .execute(&pool)
    .await
    .unwrap();
    // A garbage tick with a header, for the dead letters.
    {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = scheduled_jobs::kafka::client_config(&s, scheduled_jobs::kafka::Role::Producer).create().unwrap();
        let headers = OwnedHeaders::new().insert(Header { key: "origin", value: Some("console-test") });
        let topic = s.topic(scheduled_jobs::config::Topic::Tick);
        producer.send(FutureRecord::to(&topic).key("garbage").payload("not an avro tick").headers(headers), Duration::from_secs(30)).await.unwrap();
    }
    let p = processor_on(&s, pool.clone()).await;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    let sync = scheduled_jobs::runtime::tick::trigger(&s, "stock-sync", None, Default::default()).await.unwrap();
    let daily = scheduled_jobs::runtime::tick::trigger(&s, "daily-statistics", None, [("date".to_string(), "2025-06-01".to_string())].into()).await.unwrap();
    let r = crate::processor::wait_for_results(&s, 2, Duration::from_secs(90)).await;
    let run_of = |tick_id: &str| r.iter().find(|x| x.tick_id == tick_id).unwrap_or_else(|| panic!("no result of {tick_id}: {r:#?}")).clone();
    let (sync, daily) = (run_of(&sync.tick_id), run_of(&daily.tick_id));
    assert_eq!((sync.outcome, daily.outcome), (scheduled_jobs::wire::internal::Outcome::Succeeded, scheduled_jobs::wire::internal::Outcome::Succeeded), "{r:#?}");

    let base = console(&s, pool.clone()).await;
    let addr = base.trim_start_matches("http://").to_string();
    let base = format!("http://alice:s3cret@{addr}");
    let driver = driver().await;
    let page = browser(&driver).await;

    // The stock-sync run's page, reached from the runs page.
    shows(&page, Some(&format!("{base}/runs?job=stock-sync")), "#runs", "SUCCEEDED").await;
    page.find(By::Css(format!("#runs tr[data-run='{}'] a", sync.run_id))).await.unwrap().click().await.unwrap();
    assert_eq!(text_once(&page, "#outcome", "SUCCEEDED").await, "SUCCEEDED");
    let events = page.find(By::Css("#events")).await.unwrap().text().await.unwrap();
    assert!(events.contains(&format!("{}stock.sync.alert 2", s.topics.prefix)) && events.contains("stock.sync.run.summary 1"), "{events}");
    let causes = page.find(By::Css("#mismatch-causes")).await.unwrap().text().await.unwrap();
    assert!(causes.contains("REDIS_KEY_MISSING REDIS_RESTORED RESTORED 1") && causes.contains("REDIS_DRIFT REDIS_RESTORED RESTORED 1"), "{causes}");
    let chunks = page.find_all(By::Css("#chunks tbody tr")).await.unwrap();
    assert!(!chunks.is_empty());
    for c in &chunks {
        let text = c.text().await.unwrap();
        assert!(text.contains("APPLIED") && !text.contains(" ? "), "each chunk names the instance that applied it: {text}");
    }
    let listed = page.find(By::Css("#mismatches")).await.unwrap().text().await.unwrap();
    assert!(listed.contains(&format!("{prefix}-gone")) && listed.contains("missing") && !listed.contains(&format!("{prefix}-right")), "{listed}");
    screenshot(&page, "run-stock-sync").await;

    // The daily-statistics run's figures, then a re-run of its date from the runs page.
    page.goto(format!("{base}/runs/{}", daily.run_id)).await.unwrap();
    let figures = page.find(By::Css("#figures")).await.unwrap().text().await.unwrap();
    assert!(figures.contains("2025-06-01 1 12345.67 12345.67 0 0.00") && figures.contains("this run"), "{figures}");
    let events = page.find(By::Css("#events")).await.unwrap().text().await.unwrap();
    // The run also filled the days before it that had no figures: one event per date.
    let dates = daily.counts["datesAggregated"];
    assert!(dates >= 1 && events.contains(&format!("daily.statistics {dates}")), "{events} against {:?}", daily.counts);
    screenshot(&page, "run-daily-statistics").await;
    page.goto(format!("{base}/runs?job=daily-statistics")).await.unwrap();
    page.find(By::Css(format!("#runs tr[data-run='{}'] button.rerun", daily.run_id))).await.unwrap().click().await.unwrap();
    let progress = text_once(&page, "#progress", "SUCCEEDED").await;
    assert!(progress.contains("2025-06-01"), "{progress}");
    let again: Vec<_> = crate::processor::results(&s).await.into_iter().filter(|x| x.job == "daily-statistics").collect();
    assert_eq!(again.len(), 2, "{again:#?}");
    let rerun = again.iter().find(|x| x.run_id != daily.run_id).unwrap();
    assert_eq!((rerun.trigger.as_str(), rerun.period.as_str(), rerun.outcome), ("MANUAL", "2025-06-01", scheduled_jobs::wire::internal::Outcome::Succeeded));
    let stored_by: String = sqlx::query_scalar("SELECT run_id FROM daily_statistics WHERE date = '2025-06-01'").fetch_one(&pool).await.unwrap();
    assert_eq!(stored_by, rerun.run_id, "the forced re-run took the date over");
    page.goto(format!("{base}/runs/{}", daily.run_id)).await.unwrap();
    assert!(page.find(By::Css("#figures")).await.unwrap().text().await.unwrap().contains("a later run"));

    // The garbage tick, decoded.
    let letter = shows(&page, Some(&format!("{base}/dead-letters")), "#dead-letters tbody", "UNDECODABLE").await;
    assert!(letter.contains(&s.topic(scheduled_jobs::config::Topic::Tick)) && letter.contains("origin=console-test") && letter.contains("text: not an avro tick") && letter.contains("key text: garbage"), "{letter}");
    screenshot(&page, "dead-letters").await;

    // Lag: the processor group on its inputs, and Analytics (never started) behind on every
    // daily.statistics event.
    let row = format!("#lag tr[data-group='{analytics}']");
    let lag = shows(&page, Some(&format!("{base}/lag")), &row, "daily.statistics").await;
    let behind: i64 = page.find(By::Css(format!("{row} td.lag"))).await.unwrap().text().await.unwrap().parse().unwrap();
    assert!(behind > dates, "{lag}: {dates} dates and one re-run emitted");
    assert!(page.find(By::Css(format!("{row} svg.chart polyline"))).await.is_ok());
    let own = page.find_all(By::Css(format!("#lag tr[data-group='{}']", s.processor.group_id))).await.unwrap();
    assert_eq!(own.len(), 2, "the processor group on the tick and work-item topics");
    screenshot(&page, "lag").await;
    page.quit().await.unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// `console.in_run`: a processor (`scheduled-jobs run`) serves the console too, and stops
/// serving it when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_serves_the_console_when_told_to() {
    let s = isolated().await;
    let (pool, database) = crate::common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = crate::processor::spawn_processor(&s, &database, &[("SJ_CONSOLE__IN_RUN", "true"), ("SJ_CONSOLE__LISTEN", &listen)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        if let Ok(r) = reqwest::get(format!("http://{listen}/")).await {
            if r.status().is_success() {
                break r.text().await.unwrap();
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the processor exited");
        assert!(Instant::now() < deadline, "no console on {listen} within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(page.contains("data-job=\"order-expiration\""), "{page}");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
    assert!(std::net::TcpStream::connect(&listen).is_err(), "the console stopped with the processor");
}
