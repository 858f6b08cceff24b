//! docker-compose.yml cannot run here (no Docker engine), so this keeps it honest: it parses,
//! publishes the ports the configuration defaults to, and every SJ_* variable it sets is a
//! setting the tool accepts.

use scheduled_jobs::config::Settings;
use serde_yaml_ng::Value;

use crate::common::repo_root;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses")
}

fn published_ports(service: &Value) -> Vec<u16> {
    service["ports"]
        .as_sequence()
        .map(|ports| {
            ports.iter().filter_map(|p| p.as_str()).filter_map(|p| p.split(':').next()?.parse().ok()).collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_publishes_the_default_ports_and_uses_known_settings() {
    let c = compose();
    let services = &c["services"];
    let d = Settings::default();
    let kafka_port: u16 = d.kafka.bootstrap_servers.rsplit(':').next().unwrap().parse().unwrap();
    let registry_port: u16 = reqwest::Url::parse(&d.registry.url).unwrap().port().unwrap();
    assert_eq!(published_ports(&services["kafka"]), vec![kafka_port]);
    assert_eq!(published_ports(&services["registry"]), vec![registry_port]);
    assert_eq!(published_ports(&services["redis"]), vec![d.redis.port]);
    assert_eq!(published_ports(&services["postgres"]), vec![d.postgres.port]);

    // The default credentials are the ones the postgres container creates.
    let pg = &services["postgres"]["environment"];
    assert_eq!(pg["POSTGRES_USER"].as_str(), Some(d.postgres.user.as_str()));
    assert_eq!(pg["POSTGRES_DB"].as_str(), Some(d.postgres.database.as_str()));

    // Every SJ_* variable of the tool's container is a real setting and takes effect.
    let env: Vec<(String, String)> = services["init"]["environment"]
        .as_mapping()
        .expect("init environment")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
        .collect();
    assert!(env.iter().all(|(k, _)| k.starts_with("SJ_")));
    let s = Settings::load_from(None, env.clone()).expect("compose environment is valid configuration");
    assert_eq!(s.kafka.bootstrap_servers, "kafka:19092");
    assert_eq!(s.redis.host, "redis");
    assert_eq!(s.postgres.host, "postgres");
    assert!(s.registry.url.starts_with("http://registry:8080/"));
    // Its single broker selects the replication-1 overlay explicitly (no built-in default).
    assert_eq!(s.topics.overrides.as_deref(), Some(std::path::Path::new("topics/overrides/single-broker.toml")));

    // Kafka runs single-node with transactions usable.
    let k = &services["kafka"]["environment"];
    for key in ["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] {
        assert_eq!(k[key].as_str(), Some("1"), "{key}");
    }
}
