//! The operator console (`scheduled-jobs console`): server-rendered pages over what the system
//! already records — the schedules (configuration, pauses in PostgreSQL, run results), the
//! runs (run results and the run ledger, read_committed; a run's chunks, events and job
//! records in PostgreSQL: [`run`]), the dead letters ([`dead_letters`]) and consumer-group lag
//! ([`lag`]) — and the operator's actions.
//!
//! Actions (trigger now, pause with a reason, resume, re-run a period with `force`) go through
//! the CLI's own code paths ([`crate::runtime::tick::trigger`], [`crate::runtime::control`]), so
//! they are exactly as safe as the commands. They need `console.password`: without it every
//! action is refused (403) and the pages are readable without logging in; with it every page
//! and action needs HTTP basic authentication as `console.username`, who the actions are
//! logged and recorded as. A form carries a token drawn when the console starts and shown only
//! on its pages; a POST without it, or from another origin, is refused (CSRF). Bound to
//! loopback unless told otherwise; it renders no setting but job schedules, so no secret can
//! appear.
//!
//! Run history and dead letters are read in the background every [`REFRESH`], each read
//! taking only what was committed since the last ([`history::Feed`]), and pages render from
//! that copy, so a page load does not read Kafka.

mod dead_letters;
mod lag;
mod run;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::config::{job_key, Settings};
use crate::kafka::codec::Codec;
use crate::ops::history::{self, RunRow};
use crate::runtime::control::{self, Pause};
use crate::schedule::Schedule;

/// How often the run history is read again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How far back the runs page looks.
const HISTORY_DAYS: i64 = 7;
/// Rows on one runs page.
const PAGE: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console: cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("console: {0}")]
    Serve(std::io::Error),
    #[error("console: invalid listen address `{0}` (expected ip:port, e.g. 127.0.0.1:9470)")]
    Address(String),
}

/// The latest run history read, newest first, and when it was read (or why the last read
/// failed).
type History = (Arc<Vec<RunRow>>, Result<DateTime<Utc>, String>);

struct Console {
    settings: Settings,
    tz: Tz,
    db: sqlx::PgPool,
    runs: RwLock<History>,
    /// The dead letters read, and when they were last read.
    letters: RwLock<dead_letters::Read>,
    lag: RwLock<lag::Samples>,
    /// The forms' anti-CSRF token.
    csrf: String,
}

impl Console {
    /// The run history as last read, newest first.
    fn runs(&self) -> Arc<Vec<RunRow>> {
        self.runs.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }
}

/// A console served in the background of another command (`console.in_run`); stops when
/// dropped.
pub struct Background(pub tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The console's listener on `listen` (`ip:port`; port 0 picks a free one).
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ConsoleError> {
    let addr: SocketAddr = listen.parse().map_err(|_| ConsoleError::Address(listen.to_string()))?;
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ConsoleError::Listen { addr: listen.to_string(), source })
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    tz: Tz,
    db: sqlx::PgPool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let bound = listener.local_addr().map_err(ConsoleError::Serve)?;
    tracing::info!(address = %bound, "console listening");
    eprintln!("console: http://{bound}/");
    let csrf = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let console = Arc::new(Console {
        settings,
        tz,
        db,
        runs: RwLock::new((Arc::new(Vec::new()), Err("not read yet".into()))),
        letters: RwLock::new(dead_letters::Read::default()),
        lag: RwLock::new(lag::Samples::default()),
        csrf,
    });
    let reader = tokio::spawn(read_history(console.clone()));
    let lag = tokio::spawn(lag::watch(console.clone()));
    let app = axum::Router::new()
        .route("/", get(schedules_page))
        .route("/runs", get(runs_page))
        .route("/runs/{run_id}", get(run::run_page))
        .route("/dead-letters", get(dead_letters::dead_letters_page))
        .route("/lag", get(lag::lag_page))
        .route("/ticks/{tick_id}", get(tick_page))
        .route("/jobs/{job}/{action}", post(act))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(console);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(ConsoleError::Serve);
    reader.abort();
    lag.abort();
    served
}

/// Keeps the run history and the dead letters fresh.
async fn read_history(console: Arc<Console>) {
    let window = TimeDelta::days(HISTORY_DAYS);
    let mut feed = None;
    let mut letters = dead_letters::Letters::new();
    loop {
        if feed.is_none() {
            match history::Feed::new(&console.settings, window) {
                Ok(f) => feed = Some(f),
                Err(e) => console.runs.write().unwrap_or_else(|p| p.into_inner()).1 = Err(e.to_string()),
            }
        }
        if let Some(f) = feed.as_mut() {
            let read = f.refresh().await;
            let mut runs = console.runs.write().unwrap_or_else(|p| p.into_inner());
            match read {
                Ok(rows) => *runs = (Arc::new(rows), Ok(Utc::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "console: reading the run history failed; showing the last copy");
                    runs.1 = Err(e.to_string());
                }
            }
        }
        match Codec::new(&console.settings) {
            Ok(codec) => match letters.refresh(&console.settings, &codec, window).await {
                Ok(()) => {
                    *console.letters.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(letters.shown.clone()), Some(Utc::now()));
                }
                Err(e) => tracing::warn!(error = %e, "console: reading the dead letters failed; showing the last copy"),
            },
            Err(e) => tracing::warn!(error = %e, "console: no codec for the dead letters"),
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// One job on the schedules page.
struct JobView {
    name: String,
    schedule: String,
    overlap: &'static str,
    enabled: bool,
    pause: Option<Pause>,
    next: Vec<DateTime<Utc>>,
    last: Option<RunRow>,
    last_success: Option<DateTime<Utc>>,
    /// Why the job needs a look, if it does.
    alarm: Option<String>,
}

fn page(title: &str, console: &Console, body: Markup) -> Markup {
    page_with(title, console, false, body)
}

/// A page; `refresh`: it reloads itself every second (a run still going, no JavaScript).
fn page_with(title: &str, console: &Console, refresh: bool, body: Markup) -> Markup {
    let read = console.runs.read().unwrap_or_else(|p| p.into_inner()).1.clone();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content="1"; }
                title { (title) " · scheduled-jobs" }
                style { (CSS) }
            }
            body {
                nav {
                    strong { "scheduled-jobs" }
                    a href="/" { "Schedules" }
                    a href="/runs" { "Runs" }
                    a href="/dead-letters" { "Dead letters" }
                    a href="/lag" { "Lag" }
                    span.muted { "time zone " (console.tz.name()) }
                    @match &read {
                        Ok(at) => span.muted { "history read " (at.with_timezone(&console.tz).format("%H:%M:%S")) },
                        Err(e) => span.bad { "history not read: " (e) },
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

const CSS: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1c1c1c; }
nav { display: flex; gap: 1.2em; align-items: baseline; padding: .6em 1.2em; background: #1f2937; color: #e5e7eb; }
nav a { color: #93c5fd; text-decoration: none; } nav .muted { color: #9ca3af; }
main { padding: 0 1.2em 2em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e5e7eb; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
.muted { color: #6b7280; } .bad, tr.alarm td.name { color: #b91c1c; font-weight: 600; }
tr.alarm { background: #fef2f2; }
.outcome-SUCCEEDED { color: #047857; } .outcome-FAILED, .outcome-TIMED_OUT, .outcome-MISSED { color: #b91c1c; font-weight: 600; }
.outcome-RUNNING { color: #1d4ed8; }
form.filters { margin: .8em 0; display: flex; gap: .8em; }
code { font-size: 12px; }
td.record { min-width: 28em; } code.value { white-space: pre-wrap; word-break: break-word; }
svg.chart { display: block; }
";

fn when(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn age(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

/// The jobs of the configuration as the schedules page shows them.
async fn job_views(console: &Console) -> Result<Vec<JobView>, sqlx::Error> {
    let now = Utc::now();
    let runs = console.runs();
    let mut views = Vec::new();
    for job in crate::jobs::catalog() {
        let name = job.name().to_string();
        let Some(settings) = console.settings.job(&name) else { continue };
        if !settings.enabled && crate::config::off_by_default(&job_key(&name)) {
            // A test job left off: not part of this configuration.
            continue;
        }
        let schedule = Schedule::parse(&settings.schedule, console.tz).ok().filter(|_| !settings.schedule.trim().is_empty());
        let mut next = Vec::new();
        if let Some(s) = &schedule {
            let mut t = now;
            while next.len() < 5 {
                match s.next_after(t) {
                    Some(n) => {
                        next.push(n);
                        t = n;
                    }
                    None => break,
                }
            }
        }
        let of_job: Vec<&RunRow> = runs.iter().filter(|r| r.job == name).collect();
        let last = of_job.first().map(|r| (*r).clone());
        let last_success = of_job.iter().find(|r| r.outcome == "SUCCEEDED").map(|r| r.started_at);
        let pause = control::paused(&console.db, &name).await?;
        let mut alarm = None;
        if let Some(missed) = of_job.iter().find(|r| r.outcome == "MISSED") {
            if last_success.is_none_or(|s| s < missed.started_at) {
                alarm = Some(format!("fire time {} missed, no success since", missed.period));
            }
        }
        if schedule.is_some() && alarm.is_none() {
            // Allowed since the last success: a period between two fire times, the grace before
            // a fire time counts as missed, and the run's timeout.
            let period = match (next.first(), next.get(1)) {
                (Some(a), Some(b)) => *b - *a,
                _ => TimeDelta::days(1),
            };
            let allowed = period + TimeDelta::seconds(settings.missed_after_secs.min(i64::MAX as u64) as i64) + TimeDelta::seconds(settings.timeout_secs.min(i64::MAX as u64) as i64);
            match last_success {
                Some(at) if now - at > allowed && settings.enabled && pause.is_none() => {
                    alarm = Some(format!("last success {} (more than {} min ago)", age(at), allowed.num_minutes()));
                }
                _ => {}
            }
        }
        views.push(JobView { name, schedule: settings.schedule.clone(), overlap: settings.overlap.as_str(), enabled: settings.enabled, pause, next, last, last_success, alarm });
    }
    Ok(views)
}

/// Who is asking, when the console has a password: `Err` is the answer to give instead.
/// `Ok(None)`: no password configured (pages only).
fn authenticate(console: &Console, headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(password) = &console.settings.console.password else { return Ok(None) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{}:{}", console.settings.console.username, password.expose_secret());
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => Ok(Some(console.settings.console.username.clone())),
        _ => Err(Box::new((StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"scheduled-jobs console\", charset=\"UTF-8\"")], "authentication required\n").into_response())),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hidden field every action form carries.
fn csrf_field(console: &Console) -> Markup {
    html! { input type="hidden" name="csrf" value=(console.csrf); }
}

async fn schedules_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let user = match authenticate(&console, &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let views = match job_views(&console).await {
        Ok(v) => v,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("PostgreSQL: {e}")).into_response(),
    };
    let tz = console.tz;
    let body = html! {
        table #schedules {
            thead { tr { th { "job" } th { "schedule" } th { "state" } th { "next fire times" } th { "last run" } th { "last success" } @if user.is_some() { th { "actions" } } } }
            tbody {
                @for v in &views {
                    tr.alarm[v.alarm.is_some()] data-job=(v.name) {
                        td.name { (v.name) @if let Some(a) = &v.alarm { br; span.bad.alarm-reason { (a) } } }
                        td {
                            @if v.schedule.is_empty() { span.muted { "triggered only" } } @else { code { (v.schedule) } }
                            br; span.muted { "overlap: " (v.overlap) }
                        }
                        td.state {
                            @if !v.enabled { "disabled" }
                            @else if let Some(p) = &v.pause {
                                span.bad { "paused" } " by " (p.paused_by) " since " (when(p.paused_at, tz))
                                @if let Some(r) = &p.reason { br; span.muted { (r) } }
                            }
                            @else { "enabled" }
                        }
                        td.next { @for t in &v.next { time datetime=(t.to_rfc3339()) { (when(*t, tz)) } br; } }
                        td {
                            @if let Some(r) = &v.last {
                                span class=(format!("outcome-{}", r.outcome)) { (r.outcome) } " " span.muted { (age(r.started_at)) }
                            } @else { span.muted { "none in " (HISTORY_DAYS) " days" } }
                        }
                        td { @if let Some(t) = v.last_success { (age(t)) } @else { span.muted { "—" } } }
                        @if user.is_some() {
                            td.actions {
                                @if v.enabled {
                                    form method="post" action=(format!("/jobs/{}/trigger", v.name)) { (csrf_field(&console)) button.trigger type="submit" { "trigger now" } }
                                    @if v.pause.is_some() {
                                        form method="post" action=(format!("/jobs/{}/resume", v.name)) { (csrf_field(&console)) button.resume type="submit" { "resume" } }
                                    } @else {
                                        form method="post" action=(format!("/jobs/{}/pause", v.name)) {
                                            (csrf_field(&console))
                                            input name="reason" placeholder="reason" required;
                                            button.pause type="submit" { "pause" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Html(page("Schedules", &console, body).into_string()).into_response()
}

#[derive(Debug, Deserialize)]
struct RunFilter {
    job: Option<String>,
    outcome: Option<String>,
    /// Runs started at or after, local time `YYYY-MM-DDTHH:MM` (a `datetime-local` input).
    from: Option<String>,
    /// Runs started before, local time.
    to: Option<String>,
}

/// A `datetime-local` value (`YYYY-MM-DDTHH:MM`, seconds allowed) in `tz`; `Ok(None)` when empty.
fn local_time(field: &str, value: Option<&str>, tz: Tz) -> Result<Option<DateTime<Utc>>, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    let naive = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| format!("{field}: `{v}` is not a date and time (expected YYYY-MM-DDTHH:MM)"))?;
    // A time skipped by a DST change has no instant: refused; a repeated one: its first.
    naive
        .and_local_timezone(tz)
        .earliest()
        .map(|t| Some(t.to_utc()))
        .ok_or_else(|| format!("{field}: {v} does not exist in {}", tz.name()))
}

async fn runs_page(State(console): State<Arc<Console>>, headers: HeaderMap, Query(filter): Query<RunFilter>) -> Response {
    let user = match authenticate(&console, &headers) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let tz = console.tz;
    let job = filter.job.filter(|j| !j.is_empty());
    let outcome = filter.outcome.filter(|o| !o.is_empty());
    let (from, to) = match (local_time("from", filter.from.as_deref(), tz), local_time("to", filter.to.as_deref(), tz)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let runs = console.runs();
    let in_range = |r: &&RunRow| from.is_none_or(|f| r.started_at >= f) && to.is_none_or(|t| r.started_at < t);
    let shown: Vec<&RunRow> = runs
        .iter()
        .filter(|r| job.as_deref().is_none_or(|j| r.job == j))
        .filter(|r| outcome.as_deref().is_none_or(|o| r.outcome == o))
        .filter(in_range)
        .take(PAGE)
        .collect();
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for r in runs.iter().filter(|r| job.as_deref().is_none_or(|j| r.job == j)).filter(in_range) {
        *by_outcome.entry(r.outcome.as_str()).or_default() += 1;
    }
    let timeouts: BTreeMap<String, u64> =
        console.settings.jobs.iter().map(|(k, s)| (k.clone(), s.timeout_secs)).collect();
    let body = html! {
        form.filters method="get" action="/runs" {
            label { "job " input name="job" value=(job.clone().unwrap_or_default()); }
            label { "outcome " input name="outcome" value=(outcome.clone().unwrap_or_default()); }
            label { "from " input type="datetime-local" name="from" value=(filter.from.clone().unwrap_or_default()); }
            label { "to " input type="datetime-local" name="to" value=(filter.to.clone().unwrap_or_default()); }
            button type="submit" { "filter" }
            span.muted { @for (o, n) in &by_outcome { (o) " " (n) " · " } (runs.len()) " runs in " (HISTORY_DAYS) " days" }
        }
        table #runs {
            thead { tr { th { "started" } th { "job" } th { "period" } th { "trigger" } th { "outcome" } th { "duration / timeout" } th { "counts" } th { "message" } } }
            tbody {
                @for r in &shown {
                    tr data-run=(r.run_id) {
                        td { a href=(format!("/runs/{}", r.run_id)) { (when(r.started_at, tz)) } }
                        td { (r.job) }
                        td { code { (r.period) } }
                        td { (r.trigger) }
                        td class=(format!("outcome-{}", r.outcome)) { (r.outcome) }
                        td { (history::duration_text(r)) " / " (timeouts.get(&job_key(&r.job)).map_or("?".to_string(), |t| format!("{t} s"))) }
                        td { code { (history::counts_text(r)) } }
                        td { (r.message.clone().unwrap_or_default()) }
                        @if user.is_some() && r.outcome != "RUNNING" {
                            td {
                                form method="post" action=(format!("/jobs/{}/rerun", r.job)) {
                                    (csrf_field(&console))
                                    input type="hidden" name="period_of" value=(r.tick_id);
                                    button.rerun type="submit" title="run this period again as a new attempt (force=true)" { "re-run" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Html(page("Runs", &console, body).into_string()).into_response()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    /// Missing: refused like a wrong one (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
    /// `rerun`: the tick id of a run whose period to run again.
    period_of: Option<String>,
}

/// An action on a job: `trigger`, `pause`, `resume` or `rerun`, by the authenticated user.
async fn act(State(console): State<Arc<Console>>, headers: HeaderMap, Path((job, action)): Path<(String, String)>, Form(form): Form<ActionForm>) -> Response {
    let user = match authenticate(&console, &headers) {
        Ok(Some(u)) => u,
        Ok(None) => return (StatusCode::FORBIDDEN, "actions are disabled: set console.password (and console.username) to enable them\n").into_response(),
        Err(r) => return *r,
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let same_origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_none_or(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")) == Some(host));
    if !same_origin || !constant_time_eq(form.csrf.as_bytes(), console.csrf.as_bytes()) {
        tracing::warn!(user = %user, job = %job, action = %action, "console action refused: missing or wrong CSRF token, or another origin");
        return (StatusCode::FORBIDDEN, "refused: the form is not this console's (CSRF)\n").into_response();
    }
    let Some(settings) = console.settings.job(&job) else {
        return (StatusCode::NOT_FOUND, format!("unknown job `{job}`\n")).into_response();
    };
    if !settings.enabled {
        return (StatusCode::CONFLICT, format!("job `{job}` is disabled\n")).into_response();
    }
    let by = format!("{user} (console)");
    let result: Result<Response, String> = match action.as_str() {
        "trigger" | "rerun" => {
            let (at, params) = if action == "rerun" {
                // The period of a run in the history, run again as a new attempt: a manual tick at
                // its fire time with force=true, as `trigger --at T --param force=true`.
                let runs = console.runs();
                let Some(run) = form.period_of.as_deref().and_then(|t| runs.iter().find(|r| r.tick_id == t && r.job == job)) else {
                    return (StatusCode::NOT_FOUND, "no such run in the history\n").into_response();
                };
                let force = ("force".to_string(), "true".to_string());
                if let Ok(at) = run.period.parse::<DateTime<Utc>>() {
                    (Some(at), BTreeMap::from([force]))
                } else if chrono::NaiveDate::parse_from_str(&run.period, "%Y-%m-%d").is_ok() {
                    // A date period (daily-statistics): that date again, as
                    // `trigger --param date=D --param force=true`.
                    (None, BTreeMap::from([force, ("date".to_string(), run.period.clone())]))
                } else {
                    return (StatusCode::BAD_REQUEST, format!("period {} is neither a fire time nor a date: re-run it with `trigger --param` from the CLI\n", run.period)).into_response();
                }
            } else {
                (None, BTreeMap::new())
            };
            match crate::runtime::tick::trigger(&console.settings, &job, at, params).await {
                Ok(t) => {
                    tracing::info!(user = %user, job = %job, action = %action, tick_id = %t.tick_id, "console action");
                    Ok(Redirect::to(&format!("/ticks/{}", t.tick_id)).into_response())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        "pause" => {
            let reason = form.reason.filter(|r| !r.trim().is_empty());
            match control::pause(&console.db, &job, &by, reason.as_deref()).await {
                Ok(_) => {
                    tracing::info!(user = %user, job = %job, action = "pause", reason = ?reason, "console action");
                    Ok(Redirect::to("/").into_response())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        "resume" => match control::resume(&console.db, &job).await {
            Ok(_) => {
                tracing::info!(user = %user, job = %job, action = "resume", "console action");
                Ok(Redirect::to("/").into_response())
            }
            Err(e) => Err(e.to_string()),
        },
        other => return (StatusCode::NOT_FOUND, format!("unknown action `{other}`\n")).into_response(),
    };
    result.unwrap_or_else(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("{action} {job}: {e}\n")).into_response())
}

/// A triggered tick's run as it goes: reloads itself every second until the run has ended.
async fn tick_page(State(console): State<Arc<Console>>, headers: HeaderMap, Path(tick_id): Path<String>) -> Response {
    if let Err(r) = authenticate(&console, &headers) {
        return *r;
    }
    let tz = console.tz;
    let run = console.runs().iter().find(|r| r.tick_id == tick_id).cloned();
    let ended = run.as_ref().is_some_and(|r| r.outcome != "RUNNING");
    let body = html! {
        p { "tick " code { (tick_id) } }
        @match &run {
            None => p #progress.muted { "waiting for the processor to plan it…" },
            Some(r) => p #progress {
                (r.job) " " code { (r.period) } ": "
                span class=(format!("outcome-{}", r.outcome)) { (r.outcome) }
                " · started " (when(r.started_at, tz)) " · " (history::duration_text(r)) " · " code { (history::counts_text(r)) }
                @if let Some(m) = &r.message { br; span.muted { (m) } }
                br; a href=(format!("/runs/{}", r.run_id)) { "the run's page" }
            },
        }
        p { a href="/runs" { "all runs" } }
    };
    Html(page_with("Run", &console, !ended, body).into_string()).into_response()
}
