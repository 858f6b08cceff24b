//! `tail <topic>`: prints each committed record as one JSON line, value decoded from
//! Confluent-framed Avro with its writer schema. Reads with `isolation.level=read_committed`,
//! so records of aborted or still-open transactions never show: what `tail` prints is what
//! downstream consumers see. It joins no consumer group and commits nothing.
//!
//! Not a bounded read ([`crate::kafka::read`]): `tail` follows the topic past its current
//! end, for as long as records keep coming (`--idle-timeout`) or up to `--max-messages`.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value as Json};

use crate::kafka::codec::Codec;
use crate::config::Settings;
use crate::kafka::{self, KafkaClientError, Role};

/// What `tail` suggests for a topic that does not exist.
const MAYBE_TOPICS_APPLY: &str = " (run `scheduled-jobs topics apply`?)";

#[derive(Debug, Clone)]
pub struct TailOptions {
    pub topic: String,
    pub from_beginning: bool,
    /// Stop after this many records.
    pub max_messages: Option<u64>,
    /// Stop when no record arrived for this long.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Kafka failed, or the topic is missing ([`KafkaClientError::NoSuchTopic`]).
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error(transparent)]
    Codec(#[from] crate::kafka::codec::CodecError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

fn text_or_hex(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

/// The JSON line for one record. Undecodable values are shown, not skipped: `tail` is the
/// tool you reach for when something is wrong with the data.
pub async fn record_json(codec: &Codec, m: &BorrowedMessage<'_>) -> Json {
    let mut line = json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": m.timestamp().to_millis(),
        "key": m.key().map(text_or_hex),
    });
    match m.payload() {
        None => line["value"] = Json::Null,
        Some(bytes) => match codec.decode(bytes).await {
            Ok(d) => {
                line["schemaId"] = json!(d.schema_id);
                line["value"] = crate::wire::avro::to_json(&d.value, &d.schema);
            }
            Err(e) => {
                line["value"] = Json::Null;
                line["error"] = json!(e.to_string());
                line["raw"] = text_or_hex(bytes);
            }
        },
    }
    line
}

/// Runs until `max_messages` or `idle_timeout` (or forever); returns how many records it printed.
pub async fn tail(settings: &Settings, opts: &TailOptions, out: &mut impl Write) -> Result<u64, TailError> {
    let md = kafka::metadata(settings, Some(&opts.topic), Duration::from_secs(10))?;
    let topic = md.topics().iter().find(|t| t.name() == opts.topic).filter(|t| t.error().is_none() && !t.partitions().is_empty());
    let Some(topic) = topic else {
        // The operator named the topic: it may be a typo rather than one to create.
        return Err(KafkaClientError::NoSuchTopic { topic: opts.topic.clone(), hint: MAYBE_TOPICS_APPLY }.into());
    };
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    // A group id is required by librdkafka's consumer; nothing is ever committed under it.
    cfg.set("group.id", format!("scheduled-jobs-tail-{}", uuid::Uuid::new_v4()));
    let consumer: StreamConsumer = kafka::create(&cfg)?;
    let mut tpl = TopicPartitionList::new();
    let start = if opts.from_beginning { Offset::Beginning } else { Offset::End };
    for p in topic.partitions() {
        tpl.add_partition_offset(&opts.topic, p.id(), start)
            .map_err(|e| KafkaClientError::kafka("assign", e))?;
    }
    consumer.assign(&tpl).map_err(|e| KafkaClientError::kafka("assign", e))?;
    let codec = Codec::new(settings)?;
    let mut stream = consumer.stream();
    let mut printed = 0u64;
    loop {
        if opts.max_messages.is_some_and(|m| printed >= m) {
            break;
        }
        let next = match opts.idle_timeout {
            Some(t) => match tokio::time::timeout(t, stream.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => stream.next().await,
        };
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| KafkaClientError::kafka("consume", e))?;
        let line = record_json(&codec, &msg).await;
        writeln!(out, "{line}")?;
        out.flush()?;
        printed += 1;
    }
    Ok(printed)
}
