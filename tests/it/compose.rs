//! docker-compose.yml cannot run here (no Docker engine), so this keeps it honest: it parses,
//! publishes the ports the configuration and README default to, its credentials are the
//! defaults, and every SJ_* variable it sets is a setting the tool accepts.
//! (tests/deploy/compose.sh validates it against the Compose Specification and checks the
//! services' wiring.)

use scheduled_jobs::config::Settings;
use serde_yaml_ng::Value;

use crate::common::repo_root;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let mut v: Value = serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses");
    // The tool's services share their settings through `<<:` merge keys.
    v.apply_merge().expect("merge keys");
    v
}

/// The default column of README's configuration table, by setting (`a` / `b` rows split).
fn readme_defaults() -> std::collections::BTreeMap<String, String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for row in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        if cells.len() < 3 {
            continue;
        }
        let keys: Vec<String> = cells[0].trim_start_matches("| ").split(" / ").map(|k| k.trim_matches('`').to_string()).collect();
        // A value is the first backticked word of its part: "`scheduled_jobs` (all three)".
        let values: Vec<String> = cells[1].split(" / ").map(|v| v.split(' ').next().unwrap_or("").trim_matches('`').to_string()).collect();
        if keys.len() == values.len() {
            out.extend(keys.into_iter().zip(values));
        } else if values.len() == 1 {
            for k in keys {
                out.insert(k, values[0].clone());
            }
        }
    }
    out
}

/// Environment of one of the compose services, as (name, value) pairs, defaults of
/// `${VAR:-default}` taken.
fn environment(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_mapping()
        .expect("environment")
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap().to_string();
            let v = match (v.find(":-"), v.starts_with("${")) {
                (Some(i), true) => v[i + 2..v.len() - 1].to_string(),
                _ => v,
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect()
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
    // Kafka: PLAINTEXT for the tool on the host, and the SCRAM listener README names (9094).
    assert_eq!(published_ports(&services["kafka"]), vec![kafka_port, 9094]);
    assert_eq!(published_ports(&services["registry"]), vec![registry_port]);
    assert_eq!(published_ports(&services["redis"]), vec![d.redis.port]);
    assert_eq!(published_ports(&services["postgres"]), vec![d.postgres.port]);

    // The defaults README's configuration table states are the tool's, and the ones the
    // compose file publishes and creates.
    let readme = readme_defaults();
    let row = |k: &str| readme.get(k).cloned().unwrap_or_else(|| panic!("README's configuration table has no `{k}` row"));
    assert_eq!(row("kafka.bootstrap_servers"), d.kafka.bootstrap_servers);
    assert_eq!(row("registry.url"), d.registry.url);
    assert_eq!(row("redis.port"), d.redis.port.to_string());
    assert_eq!(row("postgres.port"), d.postgres.port.to_string());
    for k in ["postgres.user", "postgres.password", "postgres.database"] {
        assert_eq!(row(k), "scheduled_jobs", "{k}");
    }
    assert_eq!(d.postgres.user, "scheduled_jobs");
    assert_eq!(d.postgres.database, "scheduled_jobs");

    // The default credentials are the ones the postgres container creates.
    let pg = &services["postgres"]["environment"];
    assert_eq!(pg["POSTGRES_USER"].as_str(), Some(d.postgres.user.as_str()));
    assert_eq!(pg["POSTGRES_DB"].as_str(), Some(d.postgres.database.as_str()));
    assert_eq!(environment(&services["postgres"]).into_iter().find(|(k, _)| k == "POSTGRES_PASSWORD").map(|(_, v)| v), Some(row("postgres.password")));

    // Every SJ_* variable of the tool's containers is a real setting and takes effect.
    for name in ["init", "processor-1", "processor-2", "tick-1", "tick-2"] {
        let env = environment(&services[name]);
        assert!(env.iter().all(|(k, _)| k.starts_with("SJ_")), "{name}: {env:?}");
        let s = Settings::load_from(None, env.clone()).unwrap_or_else(|e| panic!("{name}: compose environment is not valid configuration: {e}"));
        assert_eq!(s.kafka.bootstrap_servers, "kafka:19094", "{name} uses the SCRAM listener");
        assert_eq!(s.kafka.properties.get("sasl.mechanism").map(String::as_str), Some("SCRAM-SHA-512"), "{name}");
        assert_eq!(s.redis.host, "redis");
        assert_eq!(s.postgres.host, "postgres");
        assert!(s.registry.url.starts_with("http://registry:8080/"));
        assert_eq!(s.scheduler.time_zone, "Asia/Seoul");
        // Its single broker selects the replication-1 overlay explicitly (no built-in default).
        assert_eq!(s.topics.overrides.as_deref(), Some(std::path::Path::new("topics/overrides/single-broker.toml")));
    }
    let ids: Vec<String> = ["processor-1", "processor-2"]
        .iter()
        .map(|n| Settings::load_from(None, environment(&services[*n])).unwrap().processor.instance_id)
        .collect();
    assert_eq!(ids, vec!["processor-1".to_string(), "processor-2".to_string()], "stable, distinct instance ids");

    // Kafka runs single-node with transactions usable.
    let k = &services["kafka"]["environment"];
    for key in ["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] {
        assert_eq!(k[key].as_str(), Some("1"), "{key}");
    }
}
