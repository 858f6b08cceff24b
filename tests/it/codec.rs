//! Confluent-framed Avro through the real registry: an event encoded with
//! schema_registry_converter round-trips (decimals exact), and `tail` prints it as JSON.

use std::process::Command;
use std::str::FromStr;

use apache_avro::types::Value;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use scheduled_jobs::wire::avro::{decimal_from_avro, decimal_to_avro};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::kafka::schemas::Registry;

use crate::common::{binary, create_topics, read_all, repo_root, settings, unique, WAIT};

fn daily_statistics(total_sales: &str, avg: &str, refund: &str) -> Value {
    let ts = Value::TimestampMillis(1_764_028_800_000);
    Value::Record(vec![
        ("eventId".into(), Value::String("3f1c0c1e-0000-5000-8000-000000000001".into())),
        ("eventTimestamp".into(), ts.clone()),
        ("date".into(), Value::String("2026-11-24".into())),
        ("totalOrders".into(), Value::Long(3)),
        ("totalSales".into(), decimal_to_avro(Decimal::from_str(total_sales).unwrap(), 15, 2).unwrap()),
        ("avgOrderAmount".into(), decimal_to_avro(Decimal::from_str(avg).unwrap(), 10, 2).unwrap()),
        (
            "topProducts".into(),
            Value::Array(vec![Value::Record(vec![
                ("productId".into(), Value::String("p-1".into())),
                ("productName".into(), Value::String("키보드".into())),
                ("totalSold".into(), Value::Long(7)),
            ])]),
        ),
        ("generatedAt".into(), ts),
        ("cancelledOrders".into(), Value::Long(1)),
        ("refundAmount".into(), decimal_to_avro(Decimal::from_str(refund).unwrap(), 15, 2).unwrap()),
        ("timeZone".into(), Value::String("Asia/Seoul".into())),
    ])
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    match v {
        Value::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1,
        other => panic!("not a record: {other:?}"),
    }
}

#[tokio::test]
async fn confluent_framed_avro_round_trips_through_the_registry() {
    let s = settings();
    let topic = unique("codec");
    create_topics(&s, &[(&topic, 1)]).await;
    let schema = std::fs::read_to_string(repo_root().join("avro/DailyStatistics.avsc")).unwrap();
    let registry = Registry::new(&s).unwrap();
    let id = registry.register(&format!("{topic}-value"), &schema).await.unwrap();

    let codec = Codec::new(&s).unwrap();
    let bytes = codec.encode(&topic, daily_statistics("1234567890123.45", "-0.01", "99.90")).await.unwrap();
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()), id, "schema id in the frame");

    let producer: FutureProducer = client_config(&s, Role::Producer).create().unwrap();
    producer.send(FutureRecord::to(&topic).key("2026-11-24").payload(&bytes), WAIT).await.unwrap();
    let records = read_all(&s, &topic, "read_committed");
    assert_eq!(records.len(), 1);
    let decoded = codec.decode(records[0].2.as_deref().unwrap()).await.unwrap();
    assert_eq!(decoded.schema_id, id);
    let sales = match field(&decoded.value, "totalSales") {
        Value::Decimal(d) => decimal_from_avro(d, 2).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(sales, Decimal::from_str("1234567890123.45").unwrap());
    assert_eq!(field(&decoded.value, "date"), &Value::String("2026-11-24".into()));

    // The same record as `tail` prints it: exact decimals, readable timestamps.
    let out = Command::new(binary())
        .current_dir(repo_root())
        .args(["tail", &topic, "--from-beginning", "--max-messages", "1", "--idle-timeout", "20"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["key"], "2026-11-24");
    assert_eq!(line["value"]["totalSales"], "1234567890123.45");
    assert_eq!(line["value"]["avgOrderAmount"], "-0.01");
    assert_eq!(line["value"]["refundAmount"], "99.90");
    assert_eq!(line["value"]["topProducts"][0]["productName"], "키보드");
    assert_eq!(line["value"]["generatedAt"], "2025-11-25T00:00:00+00:00");
    assert_eq!(line["value"]["eventId"], "3f1c0c1e-0000-5000-8000-000000000001", "a uuid prints as its text");
    assert_eq!(line["value"]["timeZone"], "Asia/Seoul");
    assert_eq!(line["schemaId"], id);
}

#[tokio::test]
async fn undecodable_bytes_are_an_error_not_a_panic() {
    let s = settings();
    let codec = Codec::new(&s).unwrap();
    assert!(codec.decode(b"not avro at all").await.is_err());
}
