//! The Kafka transaction protocol the processor is built on, on the real broker: records and
//! consumer offsets committed together are visible under read_committed; aborted ones never are.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use scheduled_jobs::kafka::{client_config, Role};

use crate::common::{create_topics, read_all, settings, unique, WAIT};

#[tokio::test]
async fn committed_transaction_with_offsets_is_visible_and_aborted_one_is_not() {
    let s = settings();
    let (input, output, group) = (unique("txn-in"), unique("txn-out"), unique("txn-group"));
    create_topics(&s, &[(&input, 1), (&output, 1)]).await;

    // Ten input records, produced plainly.
    let plain: FutureProducer = client_config(&s, Role::Producer).create().unwrap();
    for i in 0..10 {
        plain.send(FutureRecord::to(&input).key(&format!("k{i}")).payload(&format!("in-{i}")), WAIT).await.unwrap();
    }

    // A consumer of the group reads them; it never commits by itself.
    let mut ccfg = client_config(&s, Role::Consumer);
    ccfg.set("group.id", &group).set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = ccfg.create().unwrap();
    consumer.subscribe(&[&input]).unwrap();
    let mut last = -1;
    let mut seen = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while seen < 10 {
        assert!(std::time::Instant::now() < deadline, "did not receive input");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            last = m.offset();
            seen += 1;
        }
    }

    let mut pcfg = client_config(&s, Role::Producer);
    pcfg.set("transactional.id", unique("txn-id"));
    let producer: FutureProducer = pcfg.create().unwrap();
    producer.init_transactions(WAIT).unwrap();

    // Transaction 1: ten outputs plus the input offsets, committed.
    producer.begin_transaction().unwrap();
    for i in 0..10 {
        producer.send(FutureRecord::to(&output).key(&format!("k{i}")).payload(&format!("out-{i}")), WAIT).await.unwrap();
    }
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&input, 0, Offset::Offset(last + 1)).unwrap();
    producer.send_offsets_to_transaction(&offsets, &consumer.group_metadata().unwrap(), WAIT).unwrap();
    producer.commit_transaction(WAIT).unwrap();

    // Transaction 2: five outputs and a later offset, aborted.
    producer.begin_transaction().unwrap();
    for i in 0..5 {
        producer.send(FutureRecord::to(&output).key(&format!("a{i}")).payload(&format!("aborted-{i}")), WAIT).await.unwrap();
    }
    let mut later = TopicPartitionList::new();
    later.add_partition_offset(&input, 0, Offset::Offset(last + 100)).unwrap();
    producer.send_offsets_to_transaction(&later, &consumer.group_metadata().unwrap(), WAIT).unwrap();
    producer.abort_transaction(WAIT).unwrap();

    let committed = read_all(&s, &output, "read_committed");
    let uncommitted = read_all(&s, &output, "read_uncommitted");
    let payloads: Vec<String> =
        committed.iter().map(|(_, _, p)| String::from_utf8(p.clone().unwrap()).unwrap()).collect();
    assert_eq!(payloads, (0..10).map(|i| format!("out-{i}")).collect::<Vec<_>>());
    assert_eq!(uncommitted.len(), 15, "the aborted records were written, only hidden");

    // The group's offset is the committed transaction's, not the aborted one's.
    let mut query = TopicPartitionList::new();
    query.add_partition(&input, 0);
    let positions = consumer.committed_offsets(query, WAIT).unwrap();
    assert_eq!(positions.find_partition(&input, 0).unwrap().offset(), Offset::Offset(10));
}
