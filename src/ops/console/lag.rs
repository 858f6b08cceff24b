//! The lag page (`/lag`): how far behind the processor group is on its inputs (ticks, work
//! items) and each configured downstream group (`metrics.downstream_groups`: Analytics,
//! Notification) on its topic, with a chart of the last [`POINTS`] measurements.
//!
//! Measured every `metrics.lag_interval_secs` from outside the groups, as the metrics
//! exporter does ([`LagMonitor`]): committed offsets against high watermarks, so a
//! transaction marker at a partition's end may count as 1. The history lives in the console's
//! memory only; it starts empty when the console starts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::{authenticate, page, when, Console};
use crate::runtime::metrics::LagMonitor;

/// Measurements kept per (group, topic).
pub const POINTS: usize = 240;

/// One group's lag on one topic over time: (when, lag), oldest first.
pub type Series = VecDeque<(DateTime<Utc>, i64)>;

/// The lag measured so far.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Per (group, topic).
    pub series: BTreeMap<(String, String), Series>,
    /// What the last round could not measure.
    pub errors: Vec<String>,
    pub last: Option<DateTime<Utc>>,
}

impl Samples {
    fn add(&mut self, at: DateTime<Utc>, measured: Vec<Result<(String, String, i64), String>>) {
        self.errors.clear();
        for m in measured {
            match m {
                Ok((group, topic, lag)) => {
                    let s = self.series.entry((group, topic)).or_default();
                    s.push_back((at, lag));
                    while s.len() > POINTS {
                        s.pop_front();
                    }
                }
                Err(e) => self.errors.push(e),
            }
        }
        self.last = Some(at);
    }
}

/// Measures lag into `console.lag` until the console stops.
pub(super) async fn watch(console: Arc<Console>) {
    let every = Duration::from_secs(console.settings.metrics.lag_interval_secs.max(1));
    let monitor = loop {
        match LagMonitor::new(&console.settings) {
            Ok(m) => break Arc::new(m),
            Err(e) => {
                console.lag.write().unwrap_or_else(|p| p.into_inner()).errors = vec![format!("cannot measure lag: {e}")];
                tokio::time::sleep(every).await;
            }
        }
    };
    loop {
        let (m, s) = (monitor.clone(), console.settings.clone());
        match tokio::task::spawn_blocking(move || m.measure_all(&s, Duration::from_secs(10))).await {
            Ok(measured) => console.lag.write().unwrap_or_else(|p| p.into_inner()).add(Utc::now(), measured),
            Err(e) => tracing::warn!(error = %e, "console: lag measurement task failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// A small line chart of `points` (no JavaScript): lag against time, from 0 to the largest.
fn chart(points: &Series) -> Markup {
    const W: f64 = 320.0;
    const H: f64 = 48.0;
    let (Some(first), Some(last)) = (points.front(), points.back()) else { return html! {} };
    let span = (last.0 - first.0).num_milliseconds().max(1) as f64;
    let top = points.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let xy: Vec<String> = points
        .iter()
        .map(|(t, lag)| {
            let x = if points.len() == 1 { W } else { (*t - first.0).num_milliseconds() as f64 / span * W };
            // Below the label: from y = 14 (the largest) to y = H - 1 (zero).
            format!("{x:.1},{:.1}", H - 1.0 - (*lag as f64 / top * (H - 15.0)))
        })
        .collect();
    html! {
        svg.chart width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(format!("lag over the last {} measurements, at most {}", points.len(), top as i64)) {
            rect x="0" y="0" width=(W) height=(H) fill="#f9fafb" {}
            polyline fill="none" stroke="#2563eb" stroke-width="1.5" points=(xy.join(" ")) {}
            text x="4" y="10" font-size="9" fill="#6b7280" { "max " (top as i64) " · last " (((last.0 - first.0).num_seconds() + 59) / 60) " min" }
        }
    }
}

pub(super) async fn lag_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&console, &headers) {
        return *r;
    }
    let tz = console.tz;
    let samples = console.lag.read().unwrap_or_else(|p| p.into_inner()).clone();
    let body = html! {
        p.muted {
            "measured every " (console.settings.metrics.lag_interval_secs.max(1)) " s"
            @match samples.last { Some(t) => { ", last at " (when(t, tz)) }, None => { " · not measured yet" } }
            @if console.settings.metrics.downstream_groups.trim().is_empty() { " · no downstream groups configured (metrics.downstream_groups)" }
        }
        @for e in &samples.errors { p.bad { (e) } }
        p.muted { "Offsets count transaction markers: a caught-up partition of a transactional topic (work items, events) may show 1." }
        table #lag {
            thead { tr { th { "group" } th { "topic" } th { "lag now" } th { "history" } } }
            tbody {
                @for ((group, topic), points) in &samples.series {
                    tr data-group=(group) data-topic=(topic) {
                        td { (group) @if *group == console.settings.processor.group_id { br; span.muted { "the processors" } } }
                        td { code { (topic) } }
                        td.lag { (points.back().map_or(0, |p| p.1)) }
                        td { (chart(points)) }
                    }
                }
            }
        }
    };
    Html(page("Lag", &console, body).into_string()).into_response()
}
