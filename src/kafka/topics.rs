//! Topic definitions as data (`topics/*.toml`, one file per topic) and `topics apply`, which
//! makes the cluster match them: create missing topics, grow partitions, align configs.
//!
//! It never shrinks a topic (Kafka cannot remove partitions, and fewer partitions would
//! re-key every record): a spec with fewer partitions than the cluster is refused before any
//! change is made. Replication-factor differences and configs set on the cluster but absent
//! from the spec are reported as drift and left alone. Applying twice changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::{AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use serde::Deserialize;

use crate::config::Settings;
use crate::kafka::{self, KafkaClientError};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One topic as written in `topics/<name>.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// What the record key is (documentation for consumers, e.g. `orderId`).
    pub key: String,
    /// The `.avsc` file (in the schemas folder) of the record value; registered under the
    /// subject `<name>-value` (TopicNameStrategy).
    pub value_schema: String,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    pub fn value_subject(&self) -> String {
        format!("{}-value", self.name)
    }
}

/// An overlay applied to every topic, e.g. replication 1 for a single local broker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverrides {
    pub replication_factor: Option<i32>,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("{path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error(
        "refusing to shrink topic `{name}` from {actual} to {wanted} partitions: Kafka cannot remove \
         partitions and fewer partitions would move keys; raise `partitions` in topics/{name}.toml \
         back to {actual} (nothing was changed)"
    )]
    Shrink { name: String, actual: i32, wanted: i32 },
    #[error("topic `{name}`: {message}")]
    Apply { name: String, message: String },
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
}

/// The topic definitions as configured: `topics.dir`, the `topics.overrides` overlay and the
/// `topics.prefix`.
pub fn configured_specs(settings: &crate::config::Settings) -> Result<Vec<TopicSpec>, TopicsError> {
    let mut specs = load_specs(&settings.topics.dir, settings.topics.overrides.as_deref())?;
    for s in &mut specs {
        s.name = format!("{}{}", settings.topics.prefix, s.name);
    }
    Ok(specs)
}

/// Reads every `*.toml` directly in `dir` (not subfolders) and applies `overrides`.
pub fn load_specs(dir: &Path, overrides: Option<&Path>) -> Result<Vec<TopicSpec>, TopicsError> {
    let spec_err = |path: &Path, message: String| TopicsError::Spec { path: path.into(), message };
    let entries = std::fs::read_dir(dir).map_err(|e| spec_err(dir, format!("cannot read topics folder: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let overlay: TopicOverrides = match overrides {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| spec_err(path, format!("cannot read overrides: {e}")))?;
            toml::from_str(&text).map_err(|e| spec_err(path, e.to_string()))?
        }
        None => TopicOverrides::default(),
    };
    let mut specs = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| spec_err(&path, e.to_string()))?;
        let mut spec: TopicSpec = toml::from_str(&text).map_err(|e| spec_err(&path, e.to_string()))?;
        validate_spec(&spec).map_err(|m| spec_err(&path, m))?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if stem != spec.name {
            return Err(spec_err(&path, format!("file must be named `{}.toml` after the topic it defines", spec.name)));
        }
        if let Some(rf) = overlay.replication_factor {
            spec.replication_factor = rf;
        }
        for (k, v) in &overlay.configs {
            spec.configs.insert(k.clone(), v.clone());
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(spec_err(dir, "no topic definitions (*.toml) found".into()));
    }
    Ok(specs)
}

fn validate_spec(spec: &TopicSpec) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if spec.name.is_empty() || spec.name.len() > 249 || !spec.name.chars().all(legal) {
        return Err(format!("`name = {:?}` is not a legal Kafka topic name", spec.name));
    }
    if spec.partitions < 1 {
        return Err(format!("`partitions = {}` must be at least 1", spec.partitions));
    }
    if spec.replication_factor < 1 {
        return Err(format!("`replication_factor = {}` must be at least 1", spec.replication_factor));
    }
    Ok(())
}

/// One thing `apply` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Created { name: String, partitions: i32, replication_factor: i32 },
    GrewPartitions { name: String, from: i32, to: i32 },
    SetConfig { name: String, key: String, from: Option<String>, to: String },
}

/// Differences `apply` reports but does not change.
#[derive(Debug, Clone, PartialEq)]
pub enum Drift {
    ReplicationFactor { name: String, actual: i32, wanted: i32 },
    UnmanagedConfig { name: String, key: String, value: String },
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub changes: Vec<Change>,
    pub drift: Vec<Drift>,
    pub unchanged: Vec<String>,
    pub dry_run: bool,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = |done: &'static str, planned: &'static str| if self.dry_run { planned } else { done };
        for c in &self.changes {
            match c {
                Change::Created { name, partitions, replication_factor } => writeln!(
                    f,
                    "{:<10} {name} ({partitions} partitions, replication {replication_factor})",
                    verb("created", "create")
                )?,
                Change::GrewPartitions { name, from, to } => {
                    writeln!(f, "{:<10} {name} partitions {from} -> {to}", verb("grew", "grow"))?
                }
                Change::SetConfig { name, key, from, to } => writeln!(
                    f,
                    "{:<10} {name} {key}: {} -> {to}",
                    verb("set", "set"),
                    from.as_deref().unwrap_or("(default)")
                )?,
            }
        }
        for d in &self.drift {
            match d {
                Drift::ReplicationFactor { name, actual, wanted } => writeln!(
                    f,
                    "{:<10} {name} replication factor is {actual}, spec says {wanted} (not changed: needs a partition reassignment)",
                    "drift"
                )?,
                Drift::UnmanagedConfig { name, key, value } => {
                    writeln!(f, "{:<10} {name} {key}={value} is set on the cluster but not in the spec (kept)", "drift")?
                }
            }
        }
        if self.changes.is_empty() {
            writeln!(f, "no changes ({} topics up to date)", self.unchanged.len())?;
        } else if !self.unchanged.is_empty() {
            writeln!(f, "{} other topics up to date", self.unchanged.len())?;
        }
        Ok(())
    }
}

struct Existing {
    partitions: i32,
    replication_factor: i32,
}

/// Makes the cluster match `specs`. Shrinks are refused before anything is changed.
pub async fn apply(settings: &Settings, specs: &[TopicSpec], dry_run: bool) -> Result<ApplyReport, TopicsError> {
    let admin = kafka::admin(settings)?;
    let md = kafka::metadata(settings, None, ADMIN_TIMEOUT)?;
    let existing: HashMap<String, Existing> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let rf = t.partitions().first().map(|p| p.replicas().len() as i32).unwrap_or(0);
            (t.name().to_string(), Existing { partitions: t.partitions().len() as i32, replication_factor: rf })
        })
        .collect();

    for spec in specs {
        if let Some(ex) = existing.get(&spec.name) {
            if ex.partitions > spec.partitions {
                return Err(TopicsError::Shrink { name: spec.name.clone(), actual: ex.partitions, wanted: spec.partitions });
            }
        }
    }

    let mut report = ApplyReport { dry_run, ..ApplyReport::default() };
    let opts = kafka::admin_options(ADMIN_TIMEOUT);

    let missing: Vec<&TopicSpec> = specs.iter().filter(|s| !existing.contains_key(&s.name)).collect();
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic> = missing
            .iter()
            .map(|s| {
                let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication_factor));
                for (k, v) in &s.configs {
                    t = t.set(k, v);
                }
                t
            })
            .collect();
        if !dry_run {
            let results = admin
                .create_topics(new_topics.iter(), &opts)
                .await
                .map_err(|e| KafkaClientError::kafka("create topics", e))?;
            for r in results {
                if let Err((name, code)) = r {
                    // A concurrent `apply` may have won the race; that is the state we wanted.
                    if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                        return Err(TopicsError::Apply { name, message: format!("create failed: {code}") });
                    }
                }
            }
        }
        for s in &missing {
            report.changes.push(Change::Created {
                name: s.name.clone(),
                partitions: s.partitions,
                replication_factor: s.replication_factor,
            });
        }
    }

    let present: Vec<&TopicSpec> = specs.iter().filter(|s| existing.contains_key(&s.name)).collect();
    let grow: Vec<(&TopicSpec, i32)> = present
        .iter()
        .filter_map(|s| {
            let ex = &existing[&s.name];
            (ex.partitions < s.partitions).then_some((*s, ex.partitions))
        })
        .collect();
    if !grow.is_empty() && !dry_run {
        let parts: Vec<NewPartitions> = grow.iter().map(|(s, _)| NewPartitions::new(&s.name, s.partitions as usize)).collect();
        let results = admin
            .create_partitions(parts.iter(), &opts)
            .await
            .map_err(|e| KafkaClientError::kafka("create partitions", e))?;
        for r in results {
            if let Err((name, code)) = r {
                return Err(TopicsError::Apply { name, message: format!("growing partitions failed: {code}") });
            }
        }
    }
    for (s, from) in &grow {
        report.changes.push(Change::GrewPartitions { name: s.name.clone(), from: *from, to: s.partitions });
    }

    for s in &present {
        let ex = &existing[&s.name];
        if ex.replication_factor != s.replication_factor {
            report.drift.push(Drift::ReplicationFactor {
                name: s.name.clone(),
                actual: ex.replication_factor,
                wanted: s.replication_factor,
            });
        }
    }

    if !present.is_empty() {
        let resources: Vec<ResourceSpecifier> = present.iter().map(|s| ResourceSpecifier::Topic(&s.name)).collect();
        let described = admin
            .describe_configs(resources.iter(), &opts)
            .await
            .map_err(|e| KafkaClientError::kafka("describe configs", e))?;
        let mut alters: Vec<(String, BTreeMap<String, String>)> = Vec::new();
        for (spec, res) in present.iter().zip(described) {
            let res = res.map_err(|code| TopicsError::Apply {
                name: spec.name.clone(),
                message: format!("describe configs failed: {code}"),
            })?;
            let current = res.entry_map();
            // The legacy AlterConfigs call replaces the topic's whole dynamic config, so the
            // request carries every dynamic entry we keep, not only the ones we change.
            let mut full: BTreeMap<String, String> = BTreeMap::new();
            for e in res.entries.iter().filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_sensitive) {
                if let Some(v) = &e.value {
                    full.insert(e.name.clone(), v.clone());
                    if !spec.configs.contains_key(&e.name) {
                        report.drift.push(Drift::UnmanagedConfig {
                            name: spec.name.clone(),
                            key: e.name.clone(),
                            value: v.clone(),
                        });
                    }
                }
            }
            let mut changed = false;
            for (k, v) in &spec.configs {
                let now = current.get(k.as_str()).and_then(|e| e.value.clone());
                let is_dynamic = current.get(k.as_str()).is_some_and(|e| e.source == ConfigSource::DynamicTopic);
                if now.as_deref() != Some(v.as_str()) || !is_dynamic {
                    // A default that happens to equal the spec is left as is; only real
                    // differences are changes.
                    if now.as_deref() != Some(v.as_str()) {
                        report.changes.push(Change::SetConfig {
                            name: spec.name.clone(),
                            key: k.clone(),
                            from: now,
                            to: v.clone(),
                        });
                        changed = true;
                    }
                }
                full.insert(k.clone(), v.clone());
            }
            if changed {
                alters.push((spec.name.clone(), full));
            } else if !grow.iter().any(|(g, _)| g.name == spec.name) {
                report.unchanged.push(spec.name.clone());
            }
        }
        if !alters.is_empty() && !dry_run {
            let configs: Vec<AlterConfig> = alters
                .iter()
                .map(|(name, entries)| {
                    let mut a = AlterConfig::new(ResourceSpecifier::Topic(name));
                    for (k, v) in entries {
                        a = a.set(k, v);
                    }
                    a
                })
                .collect();
            let results = admin
                .alter_configs(configs.iter(), &opts)
                .await
                .map_err(|e| KafkaClientError::kafka("alter configs", e))?;
            for (r, (name, _)) in results.into_iter().zip(&alters) {
                if let Err((_, code)) = r {
                    return Err(TopicsError::Apply { name: name.clone(), message: format!("altering configs failed: {code}") });
                }
            }
        }
    }
    Ok(report)
}
