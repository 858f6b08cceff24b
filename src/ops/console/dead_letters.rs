//! The dead letters page (`/dead-letters`): the records the processor could not accept,
//! decoded — why (code and reason), where they came from (topic, partition, offset), their
//! headers, and their key and value as far as they can be read: Avro with its writer schema
//! when the value is Confluent-framed, text when it is UTF-8, hex otherwise.
//!
//! Read in the background with the run history, incrementally and read_committed, keeping the
//! newest [`KEPT`] of the console's window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::html;

use super::{authenticate, page, when, Console};
use crate::config::{Settings, Topic};
use crate::kafka::codec::Codec;
use crate::ops::history::{self, HistoryError};
use crate::wire::internal::DeadLetter;

/// Dead letters kept and shown, newest first.
pub const KEPT: usize = 500;

/// One dead letter as shown.
#[derive(Debug, Clone)]
pub struct Shown {
    pub letter: DeadLetter,
    /// The original value, decoded as far as it goes.
    pub value: String,
    pub key: Option<String>,
}

/// The dead letters as the page shows them, and when they were last read (`None`: not yet).
pub type Read = (Arc<Vec<Shown>>, Option<DateTime<Utc>>);

/// The dead letters read so far, and where to read on.
pub struct Letters {
    next: BTreeMap<i32, i64>,
    pub shown: Vec<Shown>,
}

impl Letters {
    pub fn new() -> Letters {
        Letters { next: BTreeMap::new(), shown: Vec::new() }
    }

    /// Reads the dead letters committed since the last call (of the last `window`).
    pub async fn refresh(&mut self, settings: &Settings, codec: &Codec, window: chrono::TimeDelta) -> Result<(), HistoryError> {
        let since = Utc::now() - window;
        let (s, topic, mut next) = (settings.clone(), settings.topic(Topic::DeadLetters), std::mem::take(&mut self.next));
        let (read, next) = tokio::task::spawn_blocking(move || {
            let read = history::payloads_since(&s, &topic, since, &mut next, Duration::from_secs(30));
            (read, next)
        })
        .await
        .map_err(|e| HistoryError::Task(e.to_string()))?;
        self.next = next;
        for payload in read? {
            match codec.decode(&payload).await.map(|d| DeadLetter::from_avro(d.value)) {
                Ok(Ok(letter)) => {
                    let value = match &letter.original_value {
                        Some(v) => readable(codec, v).await,
                        None => "(no value)".into(),
                    };
                    let key = letter.original_key.as_deref().map(text_or_hex);
                    self.shown.push(Shown { letter, value, key });
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "console: skipping a malformed dead letter"),
                Err(e) if e.class() == crate::error::ErrorClass::Retry => return Err(e.into()),
                Err(e) => tracing::warn!(error = %e, "console: skipping an undecodable dead letter"),
            }
        }
        self.shown.retain(|d| d.letter.event_timestamp >= since);
        self.shown.sort_by_key(|d| std::cmp::Reverse(d.letter.event_timestamp));
        self.shown.truncate(KEPT);
        Ok(())
    }
}

/// Avro as JSON with its writer schema when it decodes, else text or hex.
async fn readable(codec: &Codec, bytes: &[u8]) -> String {
    match codec.decode(bytes).await {
        Ok(d) => format!("Avro (schema {}): {}", d.schema_id, crate::wire::avro::to_json(&d.value, &d.schema)),
        Err(_) => text_or_hex(bytes),
    }
}

fn text_or_hex(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("text: {s}"),
        Err(_) => format!("hex: {}", bytes.iter().take(512).map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

pub(super) async fn dead_letters_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&console, &headers) {
        return *r;
    }
    let tz = console.tz;
    let (letters, read): Read = console.letters.read().unwrap_or_else(|p| p.into_inner()).clone();
    let body = html! {
        p.muted {
            (letters.len()) " dead letter(s) in " (super::HISTORY_DAYS) " days, newest first (at most " (KEPT) ")"
            @match read { Some(t) => { ", read " (when(t, tz)) }, None => { " · " span.bad { "not read yet" } } }
        }
        table #dead-letters {
            thead { tr { th { "rejected" } th { "reason" } th { "from" } th { "headers" } th { "record" } } }
            tbody {
                @for d in letters.iter() {
                    tr data-event=(d.letter.event_id) {
                        td { (when(d.letter.event_timestamp, tz)) }
                        td { strong.reason-code { (d.letter.reason_code) } br; (d.letter.reason) }
                        td.source { code { (d.letter.source_topic) } br; "partition " (d.letter.source_partition) " · offset " (d.letter.source_offset) }
                        td.headers {
                            @if d.letter.headers.is_empty() { span.muted { "none" } }
                            @for (k, v) in &d.letter.headers { code { (k) "=" (v) } br; }
                        }
                        td.record {
                            @if let Some(k) = &d.key { span.muted { "key " } code { (k) } br; }
                            code.value { (d.value) }
                        }
                    }
                }
            }
        }
    };
    Html(page("Dead letters", &console, body).into_string()).into_response()
}
