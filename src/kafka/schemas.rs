//! `schemas register` and `schemas check`: the `.avsc` files in `avro/`, each under the value
//! subject of the topic that names it in `topics/`, against a Confluent-compatible registry.
//!
//! Every subject is pinned to BACKWARD compatibility (consumers on the new schema can read
//! everything already in the topic). `register` checks all subjects first and registers
//! nothing if any change is incompatible; `check` registers nothing at all. An incompatibility
//! is spelled out twice: the registry's verdict and Avro's own reader/writer resolution error.
//!
//! `check` also applies the evolution rules of [`super::schema_rules`] ([`rules`]):
//! every enum has a default symbol, every field a doc, and a field new since the registered
//! version has a default. A schema breaking one fails `check`, naming the file and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apache_avro::schema::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::config::Settings;
use crate::kafka::schema_rules::{self, Violation};
use crate::kafka::topics::TopicSpec;

pub const COMPATIBILITY: &str = "BACKWARD";
/// Tries of one registry request that got no answer (see `Registry::send`).
const SEND_ATTEMPTS: u32 = 3;

/// An error and its sources, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("schema registry at {url}: {message}")]
    Registry { url: String, message: String },
    #[error("{} subject(s) not {COMPATIBILITY} compatible, nothing registered:\n{}", .0.len(), .0.join("\n"))]
    Incompatible(Vec<String>),
}

/// A schema file and the subject it belongs to.
#[derive(Debug, Clone)]
pub struct SubjectSchema {
    pub subject: String,
    pub path: PathBuf,
    pub text: String,
    pub parsed: Schema,
}

/// Parses every `.avsc` in `dir` (so a broken unused file is caught too) and pairs the ones
/// the topics name with their subjects.
pub fn load(dir: &Path, topics: &[TopicSpec]) -> Result<Vec<SubjectSchema>, SchemaError> {
    let file_err = |path: &Path, message: String| SchemaError::File { path: path.into(), message };
    let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, format!("cannot read schemas folder: {e}")))?;
    let mut parsed: BTreeMap<String, (PathBuf, String, Schema)> = BTreeMap::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "avsc") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e.to_string()))?;
        let schema = Schema::parse_str(&text).map_err(|e| file_err(&path, format!("not a valid Avro schema: {e}")))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        parsed.insert(name, (path, text, schema));
    }
    let mut out = Vec::new();
    for t in topics {
        let (path, text, schema) = parsed.get(&t.value_schema).ok_or_else(|| {
            file_err(&dir.join(&t.value_schema), format!("named by topic `{}` but not found", t.name))
        })?;
        out.push(SubjectSchema { subject: t.value_subject(), path: path.clone(), text: text.clone(), parsed: schema.clone() });
    }
    Ok(out)
}

/// The registry's current state of one subject.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    pub id: u32,
    pub version: u32,
    pub schema: String,
}

/// What `register`/`check` found for one subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not registered yet.
    New,
    /// The registered latest version is this very schema.
    Current { id: u32, version: u32 },
    /// A compatible change from the registered latest version.
    Compatible { latest_version: u32 },
    Incompatible { latest_version: u32, reason: String },
}

/// A thin client for the registry's admin endpoints (the data path uses `codec`).
pub struct Registry {
    http: reqwest::Client,
    url: String,
    auth: Option<(String, Option<String>)>,
}

impl Registry {
    pub fn new(settings: &Settings) -> Result<Registry, SchemaError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(settings.registry.timeout_ms))
            .build()
            .map_err(|e| SchemaError::Registry { url: settings.registry.url.clone(), message: e.to_string() })?;
        let auth = settings
            .registry
            .username
            .clone()
            .map(|u| (u, settings.registry.password.as_ref().map(|p| p.expose_secret().to_string())));
        Ok(Registry { http, url: settings.registry.url.clone(), auth })
    }

    fn err(&self, message: impl Into<String>) -> SchemaError {
        SchemaError::Registry { url: self.url.clone(), message: message.into() }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.url, path)).header("Accept", CONTENT_TYPE);
        if let Some((u, p)) = &self.auth {
            r = r.basic_auth(u, p.as_deref());
        }
        r
    }

    /// Sends `r`; a request that never got an answer (connection refused or reset, timed out)
    /// is sent again, at most [`SEND_ATTEMPTS`] times in all, with a pause between: every call
    /// of this API is safe to repeat (a registration of the same schema answers the same id),
    /// and a registry busy with a collection or a restart is back within seconds. The error
    /// names the cause chain (reqwest's own message alone says only "error sending request").
    async fn send(&self, what: &str, r: reqwest::RequestBuilder) -> Result<(StatusCode, String), SchemaError> {
        let mut attempt = 1;
        let resp = loop {
            let this = r.try_clone().ok_or_else(|| self.err(format!("{what}: the request cannot be repeated")))?;
            match this.send().await {
                Ok(resp) => break resp,
                Err(e) if attempt < SEND_ATTEMPTS && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tracing::warn!(request = what, attempt, error = %chain(&e), "schema registry did not answer; asking again");
                    tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.err(format!("{what}: {}", chain(&e)))),
            }
        };
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.err(format!("{what}: {}", chain(&e))))?;
        Ok((status, body))
    }

    pub async fn latest(&self, subject: &str) -> Result<Option<Registered>, SchemaError> {
        let what = format!("get latest of {subject}");
        let (status, body) = self.send(&what, self.req(reqwest::Method::GET, &format!("/subjects/{subject}/versions/latest"))).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_str(&body).map(Some).map_err(|e| self.err(format!("{what}: {e}: {body}"))),
            s => Err(self.err(format!("{what}: HTTP {s}: {body}"))),
        }
    }

    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), SchemaError> {
        let what = format!("set compatibility of {subject}");
        let r = self
            .req(reqwest::Method::PUT, &format!("/config/{subject}"))
            .header("Content-Type", CONTENT_TYPE)
            .body(json!({ "compatibility": level }).to_string());
        let (status, body) = self.send(&what, r).await?;
        if !status.is_success() {
            return Err(self.err(format!("{what}: HTTP {status}: {body}")));
        }
        Ok(())
    }

    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, SchemaError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let what = format!("register {subject}");
        let r = self
            .req(reqwest::Method::POST, &format!("/subjects/{subject}/versions"))
            .header("Content-Type", CONTENT_TYPE)
            .body(json!({ "schema": schema, "schemaType": "AVRO" }).to_string());
        let (status, body) = self.send(&what, r).await?;
        if !status.is_success() {
            return Err(self.err(format!("{what}: HTTP {status}: {body}")));
        }
        serde_json::from_str::<Id>(&body).map(|i| i.id).map_err(|e| self.err(format!("{what}: {e}: {body}")))
    }

    /// The registry's verdict on `schema` against the subject's latest version, with its
    /// messages when it gives any.
    pub async fn compatible(&self, subject: &str, schema: &str) -> Result<(bool, Vec<String>), SchemaError> {
        #[derive(Deserialize)]
        struct Verdict {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        let what = format!("check compatibility of {subject}");
        let r = self
            .req(reqwest::Method::POST, &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"))
            .header("Content-Type", CONTENT_TYPE)
            .body(json!({ "schema": schema, "schemaType": "AVRO" }).to_string());
        let (status, body) = self.send(&what, r).await?;
        if !status.is_success() {
            return Err(self.err(format!("{what}: HTTP {status}: {body}")));
        }
        let v: Verdict = serde_json::from_str(&body).map_err(|e| self.err(format!("{what}: {e}: {body}")))?;
        Ok((v.is_compatible, v.messages))
    }

    /// Compares one local schema with the registry.
    pub async fn status(&self, s: &SubjectSchema) -> Result<Status, SchemaError> {
        let Some(latest) = self.latest(&s.subject).await? else {
            return Ok(Status::New);
        };
        let registered = Schema::parse_str(&latest.schema)
            .map_err(|e| self.err(format!("registered schema of {} does not parse: {e}", s.subject)))?;
        // Canonical form, as the registry itself identifies schemas (Apicurio answers a
        // registration that differs only in docs, defaults or aliases with the existing id):
        // such a change is no new version, and the repository's file stays the documentation.
        if registered.canonical_form() == s.parsed.canonical_form() {
            return Ok(Status::Current { id: latest.id, version: latest.version });
        }
        let (ok, messages) = self.compatible(&s.subject, &s.text).await?;
        // Avro's own resolution rules say *why*; the registry has the final word.
        let local = SchemaCompatibility::can_read(&registered, &s.parsed).err().map(|e| e.to_string());
        if ok {
            Ok(Status::Compatible { latest_version: latest.version })
        } else {
            let mut reason = Vec::new();
            if let Some(l) = local {
                reason.push(format!("a reader with the new schema cannot read data written with version {}: {l}", latest.version));
            }
            if !messages.is_empty() {
                reason.push(format!("registry: {}", messages.join("; ")));
            }
            if reason.is_empty() {
                reason.push("the registry reports it incompatible".into());
            }
            Ok(Status::Incompatible { latest_version: latest.version, reason: reason.join("; ") })
        }
    }
}

/// One line of `register`/`check` output.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub subject: String,
    pub path: PathBuf,
    pub status: Status,
    /// Set by `register`: the id the subject's schema now has.
    pub id: Option<u32>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        match (&self.status, self.id) {
            (Status::New, Some(id)) => write!(f, "registered  {} <- {file} (id {id})", self.subject),
            (Status::New, None) => write!(f, "new         {} <- {file} (not registered yet)", self.subject),
            (Status::Current { id, version }, _) => {
                write!(f, "unchanged   {} <- {file} (id {id}, version {version})", self.subject)
            }
            (Status::Compatible { latest_version }, Some(id)) => {
                write!(f, "evolved     {} <- {file} (id {id}, compatible with version {latest_version})", self.subject)
            }
            (Status::Compatible { latest_version }, None) => {
                write!(f, "compatible  {} <- {file} (changes version {latest_version} compatibly)", self.subject)
            }
            (Status::Incompatible { latest_version, reason }, _) => {
                write!(f, "INCOMPATIBLE {} <- {file} vs version {latest_version}: {reason}", self.subject)
            }
        }
    }
}

/// Checks every subject; registers nothing.
pub async fn check(registry: &Registry, schemas: &[SubjectSchema]) -> Result<Vec<Outcome>, SchemaError> {
    let mut out = Vec::with_capacity(schemas.len());
    for s in schemas {
        let status = registry.status(s).await?;
        out.push(Outcome { subject: s.subject.clone(), path: s.path.clone(), status, id: None });
    }
    Ok(out)
}

/// The evolution rules for every subject's schema: enum defaults and field docs from the file
/// alone, new fields against the subject's latest registered version (none registered:
/// nothing to compare).
pub async fn rules(registry: &Registry, schemas: &[SubjectSchema]) -> Result<Vec<Violation>, SchemaError> {
    let mut out = Vec::new();
    for s in schemas {
        out.extend(schema_rules::lint(&s.path, &s.parsed));
        if let Some(latest) = registry.latest(&s.subject).await? {
            let registered = Schema::parse_str(&latest.schema)
                .map_err(|e| registry.err(format!("registered schema of {} does not parse: {e}", s.subject)))?;
            out.extend(schema_rules::new_fields_without_default(&s.path, &s.parsed, &registered, latest.version));
        }
    }
    Ok(out)
}

/// Checks every subject, then (only if none is incompatible) pins BACKWARD and registers.
pub async fn register(registry: &Registry, schemas: &[SubjectSchema]) -> Result<Vec<Outcome>, SchemaError> {
    let mut outcomes = check(registry, schemas).await?;
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.status, Status::Incompatible { .. }))
        .map(|o| o.to_string())
        .collect();
    if !bad.is_empty() {
        return Err(SchemaError::Incompatible(bad));
    }
    for (o, s) in outcomes.iter_mut().zip(schemas) {
        registry.set_compatibility(&s.subject, COMPATIBILITY).await?;
        o.id = Some(match o.status {
            Status::Current { id, .. } => id,
            _ => registry.register(&s.subject, &s.text).await?,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that does not answer is asked again, then named with the cause.
    #[tokio::test]
    async fn a_request_without_an_answer_is_repeated_then_fails_naming_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap();
        let mut settings = Settings::default();
        settings.registry.url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
        let registry = Registry::new(&settings).unwrap();
        let started = std::time::Instant::now();
        let err = registry.latest("s-value").await.unwrap_err().to_string();
        // Pauses of 0.5 s and 1 s between the three attempts.
        assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
        assert!(err.contains("get latest of s-value") && err.to_lowercase().contains("refused"), "{err}");
    }
}
