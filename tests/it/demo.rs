//! `scheduled-jobs demo` as a newcomer runs it, through the real binary on the real stack:
//! its console shows one summary line per ended run, read from the committed run results,
//! and no span logs at the default verbosity (issue 16 item 5).

use std::process::Command;
use std::time::{Duration, Instant};

use scheduled_jobs::ops::demo::summary;

use crate::common::{binary, fresh_db, isolated, isolated_env, repo_root, unique};
use crate::processor::results;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_summary_line_per_run_and_no_span_logs() {
    let s = isolated().await;
    let (_pool, db) = fresh_db(&s).await;
    let (out, err) = (std::env::temp_dir().join(format!("{}.out", unique("sj-demo"))), std::env::temp_dir().join(format!("{}.err", unique("sj-demo"))));
    let mut demo = Command::new(binary())
        .current_dir(repo_root())
        .args(["demo", "--fast"])
        .envs(isolated_env(&s, &db))
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn demo");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let summaries = |text: &str| -> Vec<String> { text.lines().filter(|l| l.starts_with("run ")).map(String::from).collect() };
    // --fast: order-expiration every 20 s, stock-sync at second 5 of every minute.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let lines = summaries(&read(&out));
        if ["run order-expiration", "run stock-sync"].iter().all(|job| lines.iter().any(|l| l.starts_with(job))) {
            break;
        }
        assert!(demo.try_wait().expect("try_wait").is_none(), "demo exited:\n{}\n{}", read(&out), read(&err));
        assert!(Instant::now() < deadline, "no summary of both jobs within 150 s:\n{}\n{}", read(&out), read(&err));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Command::new("kill").arg("-TERM").arg(demo.id().to_string()).status().expect("kill");
    assert!(demo.wait().expect("wait").success(), "{}", read(&err));
    let (stdout, stderr) = (read(&out), read(&err));
    let _ = (std::fs::remove_file(&out), std::fs::remove_file(&err));

    // The zone the schedules are read in is printed before them: the seed's, by default.
    assert!(stdout.lines().any(|l| l.starts_with("time zone: Asia/Seoul (scheduler.time_zone, the default")), "{stdout}");
    // Each line is a committed run result, as it was committed: real outcomes and counts.
    let committed: Vec<String> = results(&s).await.iter().map(summary).collect();
    let printed = summaries(&stdout);
    for line in &printed {
        assert!(committed.contains(line), "printed `{line}`, committed:\n{}", committed.join("\n"));
    }
    // The first order-expiration run cancels at least the 12 orders seeded past their timeout.
    let expiration = printed.iter().find(|l| l.starts_with("run order-expiration")).expect("an order-expiration line");
    let cancelled: i64 = expiration
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ordersCancelled="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(expiration.contains("SUCCEEDED") && cancelled >= 12, "{expiration}");
    // No span logs at the default verbosity: warnings and errors only.
    let chatter: Vec<&str> = stderr.lines().filter(|l| l.contains(" INFO ") || l.contains(" DEBUG ") || l.contains(" TRACE ")).collect();
    assert!(chatter.is_empty(), "span logs at the default verbosity:\n{}", chatter.join("\n"));
}
