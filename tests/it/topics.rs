//! `topics apply` against the real broker: idempotent, grows partitions, aligns configs,
//! refuses to shrink without changing anything.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use scheduled_jobs::kafka::topics::{apply, load_specs, Change, TopicsError};

use crate::common::{binary, repo_root, settings, single_broker_overlay, topic_config, unique, WAIT};

fn write_spec(dir: &Path, name: &str, partitions: i32, retention_ms: u64) {
    let text = format!(
        "name = \"{name}\"\npartitions = {partitions}\nreplication_factor = 3\nkey = \"id\"\nvalue_schema = \"SchedulerTick.avsc\"\n\
         [configs]\n\"retention.ms\" = \"{retention_ms}\"\n\"min.insync.replicas\" = \"2\"\n"
    );
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

fn partitions(s: &scheduled_jobs::config::Settings, topic: &str) -> usize {
    let md = scheduled_jobs::kafka::metadata(s, Some(topic), WAIT).unwrap();
    md.topics()[0].partitions().len()
}

#[tokio::test]
async fn apply_is_idempotent_grows_and_refuses_to_shrink() {
    let s = settings();
    let dir = tempdir();
    let overrides = single_broker_overlay();
    let (a, b) = (unique("topics-a"), unique("topics-b"));
    write_spec(&dir, &a, 2, 3_600_000);
    write_spec(&dir, &b, 1, 3_600_000);

    let specs = load_specs(&dir, Some(&overrides)).unwrap();
    assert!(specs.iter().all(|t| t.replication_factor == 1 && t.configs["min.insync.replicas"] == "1"), "override applied");
    let first = apply(&s, &specs, false).await.unwrap();
    assert_eq!(first.changes.iter().filter(|c| matches!(c, Change::Created { .. })).count(), 2, "{first}");
    assert_eq!(partitions(&s, &a), 2);
    assert_eq!(topic_config(&s, &a, "retention.ms").await.as_deref(), Some("3600000"));

    let second = apply(&s, &specs, false).await.unwrap();
    assert!(second.changes.is_empty(), "second apply changed something:\n{second}");
    assert!(second.to_string().contains("no changes"), "{second}");

    // Grow a and change its retention.
    write_spec(&dir, &a, 4, 7_200_000);
    let specs = load_specs(&dir, Some(&overrides)).unwrap();
    let dry = apply(&s, &specs, true).await.unwrap();
    assert_eq!(dry.changes.len(), 2, "{dry}");
    assert_eq!(partitions(&s, &a), 2, "dry run changed nothing");
    let grown = apply(&s, &specs, false).await.unwrap();
    assert!(grown.changes.contains(&Change::GrewPartitions { name: a.clone(), from: 2, to: 4 }), "{grown}");
    assert!(grown.changes.iter().any(|c| matches!(c, Change::SetConfig { key, .. } if key == "retention.ms")), "{grown}");
    // Metadata and configs show the change once the broker has propagated it.
    let deadline = std::time::Instant::now() + WAIT;
    while partitions(&s, &a) != 4 || topic_config(&s, &a, "retention.ms").await.as_deref() != Some("7200000") {
        assert!(std::time::Instant::now() < deadline, "{a} not grown to 4 partitions with the new retention within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(partitions(&s, &a), 4);
    assert_eq!(topic_config(&s, &a, "retention.ms").await.as_deref(), Some("7200000"));
    assert!(apply(&s, &specs, false).await.unwrap().changes.is_empty());

    // Shrinking is refused, and nothing else in the same edit is applied.
    write_spec(&dir, &a, 3, 1_800_000);
    let specs = load_specs(&dir, Some(&overrides)).unwrap();
    let err = apply(&s, &specs, false).await.unwrap_err();
    assert!(matches!(err, TopicsError::Shrink { actual: 4, wanted: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("refusing to shrink") && msg.contains(&a) && msg.contains("nothing was changed"), "{msg}");
    assert_eq!(partitions(&s, &a), 4);
    assert_eq!(topic_config(&s, &a, "retention.ms").await.as_deref(), Some("7200000"));
}

#[test]
fn cli_apply_of_the_repo_topics_twice_changes_nothing_the_second_time() {
    crate::common::stack();
    let run = || {
        let out = Command::new(binary())
            .current_dir(repo_root())
            .env("SJ_TOPICS__OVERRIDES", single_broker_overlay())
            .args(["topics", "apply"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run();
    let second = run();
    assert!(second.contains("no changes"), "{second}");
}

#[test]
fn a_topic_file_named_differently_from_its_topic_is_refused() {
    let dir = tempdir();
    write_spec(&dir, "right-name", 1, 1000);
    std::fs::rename(dir.join("right-name.toml"), dir.join("wrong-name.toml")).unwrap();
    let err = load_specs(&dir, None).unwrap_err().to_string();
    assert!(err.contains("wrong-name.toml") && err.contains("right-name.toml"), "{err}");
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("sj-topics"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
