//! Topic definitions as data (`topics/*.toml`, one file per topic) and `topics apply`, which
//! makes the cluster match them: create missing topics, grow partitions, align configs.
//!
//! It never shrinks a topic (Kafka cannot remove partitions, and fewer partitions would
//! re-key every record): a spec with fewer partitions than the cluster is refused before any
//! change is made. Replication-factor differences and configs set on the cluster but absent
//! from the spec are reported as drift and left alone. Applying twice changes nothing.
//!
//! Replication is guarded the same way, before any change: a topic to be created with more
//! replicas than brokers are up is refused (naming the overlay the single local broker needs),
//! and on a cluster of three or more brokers a replication factor of 1, one below the topic
//! file's (an overlay such as `topics/overrides/single-broker.toml` left on in production) or
//! one below the topic's `min.insync.replicas` is refused unless
//! [`ApplyOptions::allow_low_replication`] says it is meant. The report also names partitions
//! whose in-sync replicas are fewer than their replicas (a broker down or lagging), fewer than
//! `min.insync.replicas` (acks=all writes fail) or without a leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// The replication factor the topic file itself asks for, before any overlay lowered it
    /// (`topics apply` refuses to go below it on a real cluster unless told to).
    #[serde(skip)]
    pub file_replication_factor: i32,
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
    #[error(
        "topic `{name}` needs {wanted} replicas but only {brokers} broker(s) are up (nothing was changed); \
         on the single-broker local stack select its overlay: \
         SJ_TOPICS__OVERRIDES=topics/overrides/single-broker.toml (or eval \"$(scripts/services.sh env)\")"
    )]
    TooFewBrokers { name: String, wanted: i32, brokers: usize },
    #[error(
        "refusing low replication on a cluster of {brokers} brokers (nothing was changed):\n{}\n\
         Use each topic file's replication (no overlay: topics.overrides unset, or SJ_TOPICS__OVERRIDES=\"\"), \
         or pass --allow-low-replication if this is really meant",
        .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    LowReplication { brokers: usize, problems: Vec<String> },
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
        spec.file_replication_factor = spec.replication_factor;
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
    /// The topic has the replication the (overlaid) spec asks, but fewer replicas than its
    /// topic file asks, on a cluster with enough brokers for the file's.
    BelowFile { name: String, actual: i32, file: i32 },
    UnmanagedConfig { name: String, key: String, value: String },
}

/// The state of an existing topic's partitions as the cluster reports it (not changed by
/// `apply`; something to look at).
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Partitions with fewer in-sync replicas than replicas; `out_of_sync` are the brokers
    /// missing from their ISRs.
    UnderReplicated { name: String, partitions: Vec<i32>, total: usize, out_of_sync: BTreeSet<i32> },
    /// Partitions with fewer in-sync replicas than `min.insync.replicas`: acks=all writes fail.
    BelowMinIsr { name: String, partitions: Vec<i32>, min_isr: i32 },
    /// Partitions without a leader: neither readable nor writable.
    Offline { name: String, partitions: Vec<i32> },
}

/// How `apply` may act.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Report what would change without changing anything.
    pub dry_run: bool,
    /// Allow, on a cluster of three or more brokers, a replication factor of 1, below the topic
    /// file's or below `min.insync.replicas`.
    pub allow_low_replication: bool,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub changes: Vec<Change>,
    pub drift: Vec<Drift>,
    pub health: Vec<Health>,
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
                Drift::BelowFile { name, actual, file } => writeln!(
                    f,
                    "{:<10} {name} replication factor is {actual}, its topic file asks {file} (lowered by topics.overrides)",
                    "drift"
                )?,
                Drift::UnmanagedConfig { name, key, value } => {
                    writeln!(f, "{:<10} {name} {key}={value} is set on the cluster but not in the spec (kept)", "drift")?
                }
            }
        }
        let list = |ps: &[i32]| ps.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        for h in &self.health {
            match h {
                Health::UnderReplicated { name, partitions, total, out_of_sync } => writeln!(
                    f,
                    "{:<10} {name} under-replicated: {} of {total} partitions ({}) have fewer in-sync replicas than replicas (not in sync: broker {})",
                    "warning",
                    partitions.len(),
                    list(partitions),
                    out_of_sync.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )?,
                Health::BelowMinIsr { name, partitions, min_isr } => writeln!(
                    f,
                    "{:<10} {name} partitions {} have fewer than min.insync.replicas={min_isr} in sync: acks=all writes fail",
                    "warning",
                    list(partitions)
                )?,
                Health::Offline { name, partitions } => {
                    writeln!(f, "{:<10} {name} partitions {} have no leader (offline)", "warning", list(partitions))?
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

/// One partition as the metadata reports it.
struct PartitionState {
    id: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

struct Existing {
    partitions: i32,
    replication_factor: i32,
    states: Vec<PartitionState>,
}

/// [`apply_with`] without permission for low replication.
pub async fn apply(settings: &Settings, specs: &[TopicSpec], dry_run: bool) -> Result<ApplyReport, TopicsError> {
    apply_with(settings, specs, ApplyOptions { dry_run, ..ApplyOptions::default() }).await
}

/// Why `spec` is unsafe on a cluster of `brokers` (three or more), if it is.
fn low_replication(spec: &TopicSpec, brokers: usize) -> Option<String> {
    let rf = spec.replication_factor;
    let min_isr = spec.configs.get("min.insync.replicas").and_then(|v| v.trim().parse::<i32>().ok());
    let name = &spec.name;
    if rf < spec.file_replication_factor {
        Some(format!(
            "topic `{name}`: replication factor {rf} is below the {} its topic file asks (lowered by the topics.overrides overlay)",
            spec.file_replication_factor
        ))
    } else if rf == 1 {
        Some(format!("topic `{name}`: replication factor 1 keeps a single copy on a cluster of {brokers} brokers"))
    } else {
        min_isr.filter(|m| *m > rf).map(|m| {
            format!("topic `{name}`: replication factor {rf} is below its min.insync.replicas={m}: acks=all writes would always fail")
        })
    }
}

/// Makes the cluster match `specs`. Shrinks, and replication the cluster cannot give or
/// should not get (see the module docs), are refused before anything is changed.
pub async fn apply_with(settings: &Settings, specs: &[TopicSpec], options: ApplyOptions) -> Result<ApplyReport, TopicsError> {
    let dry_run = options.dry_run;
    let admin = kafka::admin(settings)?;
    let md = kafka::metadata(settings, None, ADMIN_TIMEOUT)?;
    let existing: HashMap<String, Existing> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let rf = t.partitions().first().map(|p| p.replicas().len() as i32).unwrap_or(0);
            let states = t
                .partitions()
                .iter()
                .map(|p| PartitionState { id: p.id(), leader: p.leader(), replicas: p.replicas().to_vec(), isr: p.isr().to_vec() })
                .collect();
            (t.name().to_string(), Existing { partitions: t.partitions().len() as i32, replication_factor: rf, states })
        })
        .collect();
    // The metadata lists only the brokers that are up; a stopped one still holds replicas, so
    // the cluster's size counts those too.
    let live = md.brokers().len();
    let known: BTreeSet<i32> = md
        .brokers()
        .iter()
        .map(|b| b.id())
        .chain(existing.values().flat_map(|e| e.states.iter().flat_map(|p| p.replicas.iter().copied())))
        .collect();
    let brokers = known.len();

    for spec in specs {
        match existing.get(&spec.name) {
            Some(ex) if ex.partitions > spec.partitions => {
                return Err(TopicsError::Shrink { name: spec.name.clone(), actual: ex.partitions, wanted: spec.partitions });
            }
            None if spec.replication_factor as usize > live => {
                return Err(TopicsError::TooFewBrokers { name: spec.name.clone(), wanted: spec.replication_factor, brokers: live });
            }
            _ => {}
        }
    }
    if brokers >= 3 && !options.allow_low_replication {
        let problems: Vec<String> = specs.iter().filter_map(|s| low_replication(s, brokers)).collect();
        if !problems.is_empty() {
            return Err(TopicsError::LowReplication { brokers, problems });
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
        } else if ex.replication_factor < s.file_replication_factor && brokers >= s.file_replication_factor as usize {
            // Quiet on the single local broker, which cannot give the file's replication.
            report.drift.push(Drift::BelowFile {
                name: s.name.clone(),
                actual: ex.replication_factor,
                file: s.file_replication_factor,
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
            let min_isr = current
                .get("min.insync.replicas")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(1);
            report.health.extend(health(&spec.name, &existing[&spec.name].states, min_isr));
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

/// What is wrong with a topic's partitions right now, worst first.
fn health(name: &str, states: &[PartitionState], min_isr: i32) -> Vec<Health> {
    let ids = |f: &dyn Fn(&PartitionState) -> bool| states.iter().filter(|p| f(p)).map(|p| p.id).collect::<Vec<_>>();
    let mut out = Vec::new();
    let offline = ids(&|p| p.leader < 0);
    if !offline.is_empty() {
        out.push(Health::Offline { name: name.into(), partitions: offline });
    }
    let below = ids(&|p| (p.isr.len() as i32) < min_isr);
    if !below.is_empty() {
        out.push(Health::BelowMinIsr { name: name.into(), partitions: below, min_isr });
    }
    let under = ids(&|p| p.isr.len() < p.replicas.len());
    if !under.is_empty() {
        let out_of_sync =
            states.iter().flat_map(|p| p.replicas.iter().filter(|r| !p.isr.contains(r)).copied()).collect::<BTreeSet<i32>>();
        out.push(Health::UnderReplicated { name: name.into(), partitions: under, total: states.len(), out_of_sync });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rf: i32, file_rf: i32, min_isr: &str) -> TopicSpec {
        TopicSpec {
            name: "t".into(),
            description: String::new(),
            partitions: 1,
            replication_factor: rf,
            key: "k".into(),
            value_schema: "V.avsc".into(),
            configs: [("min.insync.replicas".to_string(), min_isr.to_string())].into_iter().collect(),
            file_replication_factor: file_rf,
        }
    }

    #[test]
    fn low_replication_names_the_topic_and_why() {
        assert!(low_replication(&spec(1, 3, "1"), 3).is_some_and(|m| m.contains("topic `t`") && m.contains("below the 3 its topic file asks")));
        assert!(low_replication(&spec(1, 1, "1"), 5).is_some_and(|m| m.contains("single copy on a cluster of 5 brokers")));
        assert!(low_replication(&spec(2, 2, "3"), 3).is_some_and(|m| m.contains("min.insync.replicas=3")));
        assert_eq!(low_replication(&spec(3, 3, "2"), 3), None);
    }

    #[test]
    fn health_reports_offline_below_min_isr_and_under_replicated_partitions() {
        let p = |id, leader, isr: &[i32]| PartitionState { id, leader, replicas: vec![1, 2, 3], isr: isr.to_vec() };
        let states = [p(0, 1, &[1, 2, 3]), p(1, 1, &[1, 2]), p(2, 2, &[2]), p(3, -1, &[])];
        let h = health("t", &states, 2);
        assert_eq!(
            h,
            vec![
                Health::Offline { name: "t".into(), partitions: vec![3] },
                Health::BelowMinIsr { name: "t".into(), partitions: vec![2, 3], min_isr: 2 },
                Health::UnderReplicated { name: "t".into(), partitions: vec![1, 2, 3], total: 4, out_of_sync: [1, 2, 3].into_iter().collect() },
            ]
        );
        assert!(health("t", &states[..1], 2).is_empty());
    }
}
