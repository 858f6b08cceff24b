//! Compressed input from a producer that is not ours: a Java program (driven through
//! `scripts/services.sh kafka-produce`) encodes ticks with Apache Avro against the registry's
//! latest schema and sends them with Apache Kafka's Java client compressed with zstd, lz4,
//! snappy and gzip; each one runs end to end — its run result is counted under read_committed.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use chrono::Utc;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::wire::internal::Outcome;
use scheduled_jobs::wire::tick::Tick;

use crate::common::{isolated, minutes_ago, read_all, repo_root, topic_config, with_noop};
use crate::processor::{drive, processor, results};

/// Every codec a Kafka producer can choose besides none.
const CODECS: [&str; 4] = ["zstd", "lz4", "snappy", "gzip"];

/// Sends `(codec, key, value in Avro's JSON encoding)` records to `topic` through the Java
/// client; returns what it printed per record (`<codec> <partition> <offset>`).
fn java_produce(s: &Settings, topic: &str, records: &[(&str, &str, String)]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/services.sh"))
        .args(["kafka-produce", topic, &s.registry.url, &s.kafka.bootstrap_servers])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/services.sh kafka-produce");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (codec, key, value) in records {
            writeln!(stdin, "{codec} {} {}", b64.encode(key), b64.encode(value)).expect("write a record to the producer");
        }
    }
    let out = child.wait_with_output().expect("wait for the Java producer");
    assert!(
        out.status.success(),
        "the Java producer failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test]
async fn ticks_compressed_by_the_java_client_run_with_every_codec() {
    let s = with_noop(isolated().await);
    let topic = s.topic(Topic::Tick);
    // The broker keeps each batch as its producer compressed it (it would recompress them all
    // to one codec otherwise, and the Java codecs would go untested).
    let stored_as = topic_config(&s, &topic, "compression.type").await;
    assert_eq!(stored_as.as_deref(), Some("producer"), "compression.type of {topic}");
    let mut records = Vec::new();
    let mut expected = BTreeSet::new();
    for (i, name) in CODECS.iter().enumerate() {
        // A scheduled tick as a Java tick producer would write it (SchedulerTick.avsc, in
        // Avro's JSON encoding: timestamps as epoch millis, the union branch named).
        let at = minutes_ago(i as i64 + 1);
        let id = Tick::scheduled_id("noop", at);
        let json = serde_json::json!({
            "tickId": id,
            "job": "noop",
            "scheduledAt": at.timestamp_millis(),
            "producedAt": Utc::now().timestamp_millis(),
            "trigger": "SCHEDULED",
            "parameters": {"chunks": "2"},
            "producer": {"string": format!("java-{name}")},
            // Avro's JSON decoder wants every field, defaults included.
            "scheduleVersion": null,
        });
        expected.insert(id);
        records.push((*name, "noop", json.to_string()));
    }
    let sent = java_produce(&s, &topic, &records);
    assert_eq!(sent.len(), CODECS.len(), "one acknowledgement per record: {sent:?}");

    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    let ran: BTreeSet<String> = r.iter().map(|r| r.tick_id.clone()).collect();
    assert_eq!(ran, expected, "one run per compressed tick ({sent:?}); results: {r:?}");
    assert!(r.iter().all(|r| r.outcome == Outcome::Succeeded && r.counts.get("items") == Some(&2)), "{r:?}");
    assert_eq!(read_all(&s, &s.topic(Topic::DeadLetters), "read_committed").len(), 0, "no tick was dead-lettered");
}
