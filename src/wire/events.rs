//! The events the jobs publish, as typed structs: one per schema of `avro/`, field for field.
//! Jobs fill a struct and call [`emit`]; only this module turns it into an Avro
//! [`Value`](apache_avro::types::Value), so no job builds a record by hand.
//!
//! The conversion is serde's (`apache_avro::to_value`) followed by `conform`, which walks the
//! result alongside the event's schema (the `.avsc` file, embedded at build time) and gives
//! each field the Avro type the schema declares: a `timestamp-millis` from the milliseconds
//! serde wrote, an enum from its symbol, a decimal from the exact text serde wrote, at the
//! schema's own precision and scale. The records are the ones the jobs used to build by hand,
//! so the bytes on the wire are unchanged.
//!
//! `conform` is strict where Avro's resolution is lenient: a struct field the schema lacks, a
//! schema field the struct lacks (even one with a default), a different order or type, a
//! symbol the enum does not have — all are errors naming the field. `Value::resolve` would
//! not do: it drops unknown fields, fills defaults, and (apache-avro 0.22) refuses a decimal
//! whose minimal two's complement bytes are shorter than the precision could need, e.g. 0 as
//! `decimal(15,2)`.
//!
//! The tests check every struct against its file, so a schema change the struct does not
//! follow fails the build's tests rather than a job in production.
//!
//! **Evolution** (docs/decisions/2026-11-29-schema-evolution.md): every enum of the schemas
//! ends with the default symbol `UNKNOWN`, which a reader gets for a symbol added after its
//! schema was built. Each Rust enum here has the matching `Unknown` variant, and
//! deserializing an unknown symbol gives it (`#[serde(other)]`), so Rust readers degrade the
//! same way. Jobs never write it: `conform` refuses an event carrying an enum's default
//! symbol. `eventId` fields carry the `uuid` logical type: `conform` refuses an id that is
//! not a UUID in canonical form (lowercase, hyphenated) and keeps it as text, the same bytes.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use apache_avro::schema::{Name, NamespaceRef, ResolvedSchema, Schema, SchemaKind, UuidSchema};
use apache_avro::types::{Value, ValueKind};
use apache_avro::writer::datum::GenericDatumWriter;
use chrono::serde::ts_milliseconds;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize, Serializer};

use crate::wire::avro::decimal_to_avro;
use super::{Emit, Payload, Topic};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The embedded `.avsc` does not parse: a broken build, found by the tests.
    #[error("{file}: not a valid Avro schema: {message}")]
    Schema { file: &'static str, message: String },
    #[error("{file}: cannot serialize the event: {message}")]
    Serialize { file: &'static str, message: String },
    /// The event does not have the shape its schema promises (a struct out of step with its
    /// file), or a value does not fit its field (e.g. money beyond the decimal's precision).
    #[error("{file}: field `{path}`: {message}")]
    Mismatch { file: &'static str, path: String, message: String },
}

/// An event the jobs publish: its topic, its key, and the schema it is written with.
pub trait Event: Serialize {
    const TOPIC: Topic;

    /// Written straight from its fields ([`Payload::Direct`]): only for events with no field
    /// the value path converts (decimals, dates written as strings), each proven byte-identical
    /// to the value path by a test.
    const DIRECT: bool = false;

    /// The event's `.avsc` file, embedded.
    fn schema() -> &'static Avsc;

    /// The Kafka key (the topic's documented key field).
    fn key(&self) -> String;
}

/// The record to emit for `event` (taken, not cloned: a direct event is kept as it is until
/// it is encoded).
pub fn emit<E: Event + Debug + Send + Sync + 'static>(event: E) -> Result<Emit, EventError> {
    let key = event.key();
    let value = if E::DIRECT { Payload::Direct(Arc::new(event)) } else { Payload::Value(value_of(&event)?) };
    Ok(Emit { topic: E::TOPIC, key, value })
}

/// An event that writes itself with a schema ([`Event::DIRECT`]).
pub trait Direct: Debug + Send + Sync {
    /// Appends the event's Avro encoding under `writer`'s schema (the topic's registered one).
    fn write(&self, writer: &GenericDatumWriter<'_>, out: &mut Vec<u8>) -> apache_avro::AvroResult<usize>;
    /// The event as an Avro value, as the value path builds it.
    fn value(&self) -> Result<Value, EventError>;
}

impl<E: Event + Debug + Send + Sync> Direct for E {
    fn write(&self, writer: &GenericDatumWriter<'_>, out: &mut Vec<u8>) -> apache_avro::AvroResult<usize> {
        writer.write_ser(out, self)
    }

    fn value(&self) -> Result<Value, EventError> {
        value_of(self)
    }
}

/// `event` as the Avro value its schema describes.
pub fn value_of<E: Event>(event: &E) -> Result<Value, EventError> {
    let avsc = E::schema();
    let parsed = avsc.parsed()?;
    let value = apache_avro::to_value(event).map_err(|e| EventError::Serialize { file: avsc.file, message: e.to_string() })?;
    conform(value, &parsed.schema, &parsed.names, None).map_err(|m| EventError::Mismatch {
        file: avsc.file,
        path: m.path(),
        message: m.message,
    })
}

/// A schema file compiled into the binary, parsed on first use.
pub struct Avsc {
    pub file: &'static str,
    pub text: &'static str,
    parsed: OnceLock<Result<Parsed, String>>,
}

/// A parsed schema and its named types (what a reference within it points to).
struct Parsed {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl Avsc {
    const fn new(file: &'static str, text: &'static str) -> Avsc {
        Avsc { file, text, parsed: OnceLock::new() }
    }

    pub fn schema(&self) -> Result<&Schema, EventError> {
        Ok(&self.parsed()?.schema)
    }

    fn parsed(&self) -> Result<&Parsed, EventError> {
        let parsed = self.parsed.get_or_init(|| {
            let schema = Schema::parse_str(self.text).map_err(|e| e.to_string())?;
            let names = ResolvedSchema::try_from(&schema)
                .map_err(|e| e.to_string())?
                .get_names()
                .iter()
                .map(|(n, s)| (n.clone(), (*s).clone()))
                .collect();
            Ok(Parsed { schema, names })
        });
        parsed.as_ref().map_err(|message| EventError::Schema { file: self.file, message: message.clone() })
    }
}

static ORDER_CANCELLED: Avsc = Avsc::new("OrderCancelled.avsc", include_str!("../../avro/OrderCancelled.avsc"));
static ORDER_EXPIRATION_NOTIFICATION: Avsc =
    Avsc::new("OrderExpirationNotification.avsc", include_str!("../../avro/OrderExpirationNotification.avsc"));
static STOCK_SYNC_ALERT: Avsc = Avsc::new("StockSyncAlert.avsc", include_str!("../../avro/StockSyncAlert.avsc"));
static STOCK_SYNC_RUN_SUMMARY: Avsc = Avsc::new("StockSyncRunSummary.avsc", include_str!("../../avro/StockSyncRunSummary.avsc"));
static DAILY_STATISTICS: Avsc = Avsc::new("DailyStatistics.avsc", include_str!("../../avro/DailyStatistics.avsc"));
static JOB_REPORT: Avsc = Avsc::new("JobReport.avsc", include_str!("../../avro/JobReport.avsc"));

/// serde has no decimal type: money travels as its exact text, and [`conform`] turns it into
/// the schema's decimal at the schema's precision and scale (refusing, never rounding).
fn exact<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// The default symbol every enum of the schemas ends with (see the module's docs).
pub const UNKNOWN: &str = "UNKNOWN";

/// How `DailyStatistics` writes its date (field and key), as the jobs' periods do.
const DATE_FORMAT: &str = "%Y-%m-%d";

fn iso_date<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&d.format(DATE_FORMAT))
}

// ---------------------------------------------------------------------------------------
// order.cancelled

/// `order.cancelled` (`OrderCancelled.avsc`): an order was cancelled; the Product Service
/// restores DB stock from it. Key: `orderId`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// Deterministic UUIDv5 of the decision (run + order): a re-emission carries the same id.
    pub event_id: String,
    #[serde(with = "ts_milliseconds")]
    pub event_timestamp: DateTime<Utc>,
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<CancelledItem>,
    pub cancellation_reason: CancellationReason,
    #[serde(with = "ts_milliseconds")]
    pub cancelled_at: DateTime<Utc>,
}

/// One line of a cancelled order (`CancelledItem`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelledItem {
    pub product_id: String,
    pub quantity: i32,
}

/// Why an order was cancelled (`CancellationReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancellationReason {
    PaymentTimeout,
    UserRequested,
    StockUnavailable,
    SystemError,
    /// The schema's default symbol: what a reader gets for a reason added after its schema.
    /// Never written.
    #[serde(other)]
    Unknown,
}

impl CancellationReason {
    /// Every symbol a job may write, in the schema's order (all but `Unknown`).
    pub const ALL: [CancellationReason; 4] = [
        CancellationReason::PaymentTimeout,
        CancellationReason::UserRequested,
        CancellationReason::StockUnavailable,
        CancellationReason::SystemError,
    ];
}

impl Event for OrderCancelled {
    const TOPIC: Topic = Topic::OrderCancelled;
    const DIRECT: bool = true;

    fn schema() -> &'static Avsc {
        &ORDER_CANCELLED
    }

    fn key(&self) -> String {
        self.order_id.clone()
    }
}

// ---------------------------------------------------------------------------------------
// order.expiration.notification

/// `order.expiration.notification` (`OrderExpirationNotification.avsc`): tells the
/// Notification Service to push the customer a message about an order that expired unpaid.
/// Key: `orderId`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderExpirationNotification {
    /// Deterministic UUIDv5 of the decision (run + order).
    pub event_id: String,
    #[serde(with = "ts_milliseconds")]
    pub event_timestamp: DateTime<Utc>,
    pub order_id: String,
    pub user_id: String,
    /// Text shown to the customer.
    pub expiration_reason: String,
    #[serde(with = "ts_milliseconds")]
    pub expired_at: DateTime<Utc>,
}

impl Event for OrderExpirationNotification {
    const TOPIC: Topic = Topic::OrderExpirationNotification;
    const DIRECT: bool = true;

    fn schema() -> &'static Avsc {
        &ORDER_EXPIRATION_NOTIFICATION
    }

    fn key(&self) -> String {
        self.order_id.clone()
    }
}

// ---------------------------------------------------------------------------------------
// stock.sync.alert

/// `stock.sync.alert` (`StockSyncAlert.avsc`): one stock mismatch between PostgreSQL
/// (trusted) and Redis found by a stock-sync run, and what was done about it. Key: `productId`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockSyncAlert {
    /// Deterministic UUIDv5 of (run, productId).
    pub event_id: String,
    #[serde(with = "ts_milliseconds")]
    pub event_timestamp: DateTime<Utc>,
    pub product_id: String,
    /// Expected Redis stock computed from the DB.
    pub db_stock: i32,
    /// Observed `stock:{productId}`; `None` when the key was missing.
    pub redis_stock: Option<i32>,
    /// `db_stock - redis_stock` (`db_stock` when the key was missing).
    pub discrepancy: i32,
    pub action: SyncAction,
    pub severity: Severity,
    #[serde(with = "ts_milliseconds")]
    pub detected_at: DateTime<Utc>,
    /// `REDIS_KEY_MISSING`, `REDIS_DRIFT`, `STALE_RESERVATION`, `MISSING_RESERVATION`,
    /// `INVALID_DB_VALUE` or `UNKNOWN` (a string in the schema, not an enum).
    pub cause: String,
    pub run_id: String,
    /// Always 0 since alerts leave with their range, before the run's total is known (kept
    /// for wire compatibility): the total and the urgency are in [`StockSyncRunSummary`].
    pub mismatches_in_run: i32,
}

/// `stock.sync.run.summary` (`StockSyncRunSummary.avsc`): one per stock-sync run — urgent or
/// not, what it found by cause and what was done. Key: `runId`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockSyncRunSummary {
    /// Deterministic UUIDv5 of the run.
    pub event_id: String,
    #[serde(with = "ts_milliseconds")]
    pub event_timestamp: DateTime<Utc>,
    pub run_id: String,
    /// The fire time the run stands for.
    pub period: String,
    /// More than `urgent_after_mismatches` mismatches.
    pub urgent: bool,
    /// CRITICAL when urgent, else from what the alerts report.
    pub severity: Severity,
    pub urgent_after_mismatches: i32,
    /// The number of the run's alerts.
    pub mismatches: i64,
    /// Mismatches per cause symbol.
    pub mismatches_by_cause: BTreeMap<String, i64>,
    /// Alerts reporting `REDIS_RESTORED`, `REPAIR_DEFERRED`, `MANUAL_REVIEW_REQUIRED`.
    pub restored: i64,
    pub deferred: i64,
    pub manual_review: i64,
}

impl Event for StockSyncRunSummary {
    const TOPIC: Topic = Topic::StockSyncRunSummary;

    fn schema() -> &'static Avsc {
        &STOCK_SYNC_RUN_SUMMARY
    }

    fn key(&self) -> String {
        self.run_id.clone()
    }
}

/// What the run did about a mismatch (`SyncAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncAction {
    /// Redis now holds the expected value (the repair's compare-and-set was applied).
    RedisRestored,
    /// Nothing was written: a person must look (invalid DB value, non-integer counter).
    ManualReviewRequired,
    /// The repair was not made by this run — Redis moved between confirmation and the
    /// compare-and-set, or an earlier attempt's mismatch could not be confirmed again — and is
    /// left for the next run.
    RepairDeferred,
    /// The schema's default symbol: what a reader gets for an action added after its schema.
    /// Never written (nor stored in `stock_sync_mismatches`).
    #[serde(other)]
    Unknown,
}

impl SyncAction {
    /// Every symbol a job may write, in the schema's order (all but `Unknown`).
    pub const ALL: [SyncAction; 3] = [SyncAction::RedisRestored, SyncAction::ManualReviewRequired, SyncAction::RepairDeferred];

    /// The schema's symbol, also how `stock_sync_mismatches.action` stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncAction::RedisRestored => "REDIS_RESTORED",
            SyncAction::ManualReviewRequired => "MANUAL_REVIEW_REQUIRED",
            SyncAction::RepairDeferred => "REPAIR_DEFERRED",
            SyncAction::Unknown => UNKNOWN,
        }
    }

    /// The action a job wrote (`None` for anything else, `UNKNOWN` included: it is never
    /// stored).
    pub fn from_symbol(s: &str) -> Option<SyncAction> {
        SyncAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// How urgent an alert is (`Severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
    /// The schema's default symbol: what a reader gets for a severity added after its schema.
    /// Never written.
    #[serde(other)]
    Unknown,
}

impl Severity {
    /// Every symbol a job may write, in the schema's order (all but `Unknown`).
    pub const ALL: [Severity; 4] = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];
}

impl Event for StockSyncAlert {
    const TOPIC: Topic = Topic::StockSyncAlert;
    const DIRECT: bool = true;

    fn schema() -> &'static Avsc {
        &STOCK_SYNC_ALERT
    }

    fn key(&self) -> String {
        self.product_id.clone()
    }
}

// ---------------------------------------------------------------------------------------
// daily.statistics

/// `daily.statistics` (`DailyStatistics.avsc`): sales figures of one calendar day in the
/// configured time zone, emitted once per date. Key: `date`. Money is exact: `Decimal` here,
/// the schema's `decimal` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DailyStatistics {
    /// Deterministic UUIDv5 of the date.
    pub event_id: String,
    #[serde(with = "ts_milliseconds")]
    pub event_timestamp: DateTime<Utc>,
    /// Written `YYYY-MM-DD`.
    #[serde(serialize_with = "iso_date")]
    pub date: NaiveDate,
    /// Orders created that day.
    pub total_orders: i64,
    /// Sum of `total_amount` of orders paid that day; `decimal(15,2)`.
    #[serde(serialize_with = "exact")]
    pub total_sales: Decimal,
    /// `total_sales` / orders paid that day, rounded half-even to cents (0 when none);
    /// `decimal(10,2)`.
    #[serde(serialize_with = "exact")]
    pub avg_order_amount: Decimal,
    pub top_products: Vec<TopProduct>,
    #[serde(with = "ts_milliseconds")]
    pub generated_at: DateTime<Utc>,
    /// Orders cancelled that day.
    pub cancelled_orders: i64,
    /// Sum refunded that day; `decimal(15,2)`.
    #[serde(serialize_with = "exact")]
    pub refund_amount: Decimal,
    /// IANA name of the zone `date` was counted in (`scheduler.time_zone`), e.g. `Asia/Seoul`.
    pub time_zone: String,
}

/// One entry of `topProducts`; also the JSON shape stored in `daily_statistics.top_products`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopProduct {
    pub product_id: String,
    pub product_name: String,
    pub total_sold: i64,
}

impl Event for DailyStatistics {
    const TOPIC: Topic = Topic::DailyStatistics;

    fn schema() -> &'static Avsc {
        &DAILY_STATISTICS
    }

    fn key(&self) -> String {
        self.date.format(DATE_FORMAT).to_string()
    }
}

// ---------------------------------------------------------------------------------------
// job.report

/// `job.report` (`JobReport.avsc`): a report for people built from the run history; the
/// Notification Service delivers it. Key: `reportType`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// UUIDv5 of the report run: the same report is never two events.
    pub event_id: String,
    #[serde(with = "ts_milliseconds")]
    pub event_timestamp: DateTime<Utc>,
    pub report_type: ReportType,
    /// The job reported on.
    pub job: String,
    #[serde(with = "ts_milliseconds")]
    pub window_start: DateTime<Utc>,
    /// Runs planned in `[window_start, window_end)` are reported.
    #[serde(with = "ts_milliseconds")]
    pub window_end: DateTime<Utc>,
    pub runs: i32,
    pub succeeded: i32,
    /// FAILED or TIMED_OUT runs: alert-worthy.
    pub failed: i32,
    /// Planned but not finished when the report was made.
    pub unfinished: i32,
    /// The runs' counters summed, plus report-specific figures.
    pub counts: BTreeMap<String, i64>,
    /// One line per failed run or item needing a person.
    pub problems: Vec<String>,
    pub title: String,
    /// The report as plain text for a message.
    pub text: String,
}

/// Which report (`ReportType`); also stored, as its symbol, in `job_reports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReportType {
    StockSyncSummary,
    DailyStatisticsReport,
    /// The schema's default symbol: what a reader gets for a report type added after its
    /// schema. Never written.
    #[serde(other)]
    Unknown,
}

impl ReportType {
    /// Every symbol a job may write, in the schema's order (all but `Unknown`).
    pub const ALL: [ReportType; 2] = [ReportType::StockSyncSummary, ReportType::DailyStatisticsReport];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportType::StockSyncSummary => "STOCK_SYNC_SUMMARY",
            ReportType::DailyStatisticsReport => "DAILY_STATISTICS_REPORT",
            ReportType::Unknown => UNKNOWN,
        }
    }
}

impl Event for JobReport {
    const TOPIC: Topic = Topic::JobReport;

    fn schema() -> &'static Avsc {
        &JOB_REPORT
    }

    fn key(&self) -> String {
        self.report_type.as_str().to_string()
    }
}

// ---------------------------------------------------------------------------------------
// serde's value → the schema's value

/// Where in the record a value did not fit, innermost first while unwinding.
struct Mismatch {
    path: Vec<String>,
    message: String,
}

impl Mismatch {
    fn new(message: impl Into<String>) -> Mismatch {
        Mismatch { path: Vec::new(), message: message.into() }
    }

    fn at(mut self, step: impl Into<String>) -> Mismatch {
        self.path.push(step.into());
        self
    }

    fn path(&self) -> String {
        let mut out = String::new();
        for step in self.path.iter().rev() {
            if !out.is_empty() && !step.starts_with('[') {
                out.push('.');
            }
            out.push_str(step);
        }
        out
    }
}

/// `value` (as `apache_avro::to_value` made it from an event) with the Avro types `schema`
/// declares. Only the shapes the events use are accepted; anything else is a mismatch.
fn conform<S: Borrow<Schema>>(value: Value, schema: &Schema, names: &HashMap<Name, S>, ns: NamespaceRef) -> Result<Value, Mismatch> {
    match (schema, value) {
        (Schema::Ref { name }, v) => {
            let name = name.fully_qualified_name(ns);
            let target = names.get(name.as_ref()).ok_or_else(|| Mismatch::new(format!("unknown type `{}`", name.fullname(None))))?;
            conform(v, target.borrow(), names, name.namespace())
        }
        (Schema::Union(u), v) => {
            // serde writes an Option as a union that assumes null comes first; the index is
            // recomputed from the schema's variants.
            let inner = match v {
                Value::Union(_, inner) => *inner,
                other => other,
            };
            let variants = u.variants();
            if inner == Value::Null {
                let i = variants
                    .iter()
                    .position(|s| matches!(s, Schema::Null))
                    .ok_or_else(|| Mismatch::new("null, but the union has no null"))?;
                return Ok(Value::Union(i as u32, Box::new(Value::Null)));
            }
            let candidates: Vec<usize> = (0..variants.len()).filter(|i| !matches!(variants[*i], Schema::Null)).collect();
            match candidates.as_slice() {
                [i] => Ok(Value::Union(*i as u32, Box::new(conform(inner, &variants[*i], names, ns)?))),
                _ => candidates
                    .iter()
                    .find_map(|i| conform(inner.clone(), &variants[*i], names, ns).ok().map(|v| Value::Union(*i as u32, Box::new(v))))
                    .ok_or_else(|| Mismatch::new(format!("{:?} fits no variant of the union", ValueKind::from(&inner)))),
            }
        }
        (Schema::Null, v @ Value::Null)
        | (Schema::Boolean, v @ Value::Boolean(_))
        | (Schema::Int, v @ Value::Int(_))
        | (Schema::Long, v @ Value::Long(_))
        | (Schema::Float, v @ Value::Float(_))
        | (Schema::Double, v @ Value::Double(_))
        | (Schema::Bytes, v @ Value::Bytes(_))
        | (Schema::String, v @ Value::String(_)) => Ok(v),
        // Milliseconds only: a struct writing milliseconds into a micros field would be wrong
        // by a factor of 1,000 without any error.
        (Schema::TimestampMillis, Value::Long(ms)) => Ok(Value::TimestampMillis(ms)),
        (Schema::Decimal(d), Value::String(text)) => {
            let value: Decimal = text.parse().map_err(|e| Mismatch::new(format!("`{text}` is not a decimal: {e}")))?;
            let scale = u32::try_from(d.scale).map_err(|_| Mismatch::new(format!("scale {} is out of range", d.scale)))?;
            decimal_to_avro(value, d.precision, scale).map_err(|e| Mismatch::new(e.to_string()))
        }
        // The default symbol is for readers meeting a newer symbol; a writer never means it.
        (Schema::Enum(e), Value::String(symbol)) if e.default.as_ref() == Some(&symbol) => Err(Mismatch::new(format!(
            "`{symbol}` is the default symbol of {}, for readers only: an event never carries it",
            e.name.fullname(None)
        ))),
        (Schema::Enum(e), Value::String(symbol)) => match e.symbols.iter().position(|s| *s == symbol) {
            Some(i) => Ok(Value::Enum(i as u32, symbol)),
            None => Err(Mismatch::new(format!("`{symbol}` is not a symbol of {}", e.name.fullname(None)))),
        },
        // Kept as its text, in the canonical form, so the bytes are those of a plain string
        // and a writer whose registered schema still says `string` accepts it too.
        (Schema::Uuid(UuidSchema::String), Value::String(text)) => match uuid::Uuid::parse_str(&text) {
            Ok(id) if id.hyphenated().to_string() == text => Ok(Value::String(text)),
            Ok(id) => Err(Mismatch::new(format!("`{text}` is not a UUID in canonical form (`{id}`)"))),
            Err(e) => Err(Mismatch::new(format!("`{text}` is not a UUID: {e}"))),
        },
        (Schema::Array(a), Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| conform(item, &a.items, names, ns).map_err(|m| m.at(format!("[{i}]"))))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        (Schema::Map(m), Value::Map(entries)) => entries
            .into_iter()
            .map(|(k, v)| match conform(v, &m.types, names, ns) {
                Ok(v) => Ok((k, v)),
                Err(e) => Err(e.at(format!("[{k:?}]"))),
            })
            .collect::<Result<_, _>>()
            .map(Value::Map),
        (Schema::Record(r), Value::Record(fields)) => {
            // Field for field, in the schema's order: a default does not excuse a missing
            // field, because the struct is meant to say everything the schema does.
            let same = fields.len() == r.fields.len() && fields.iter().zip(&r.fields).all(|((n, _), f)| *n == f.name);
            if !same {
                let expected: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
                let found: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                let missing: Vec<&&str> = expected.iter().filter(|n| !found.contains(n)).collect();
                let extra: Vec<&&str> = found.iter().filter(|n| !expected.contains(n)).collect();
                return Err(Mismatch::new(format!(
                    "{} expects fields {expected:?}, the struct has {found:?} (missing {missing:?}, not in the schema {extra:?})",
                    r.name.fullname(None)
                )));
            }
            let ns = r.name.namespace().or(ns);
            fields
                .into_iter()
                .zip(&r.fields)
                .map(|((name, v), f)| match conform(v, &f.schema, names, ns) {
                    Ok(v) => Ok((name, v)),
                    Err(e) => Err(e.at(name)),
                })
                .collect::<Result<_, _>>()
                .map(Value::Record)
        }
        (schema, v) => Err(Mismatch::new(format!("{:?} where the schema has {:?}", ValueKind::from(&v), SchemaKind::from(schema)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use std::str::FromStr;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// The event's value checked against the `.avsc` file as the registry would have it (read
    /// from `avro/` now, not the copy embedded at build time), encoded, decoded, and returned
    /// decoded.
    fn round_trip<E: Event>(event: &E) -> Value {
        let file = E::schema().file;
        let text = std::fs::read_to_string(format!("{}/avro/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(text, E::schema().text, "{file} changed since the build");
        let schema = Schema::parse_str(&text).unwrap();
        let value = value_of(event).unwrap_or_else(|e| panic!("{e}"));
        assert!(value.validate(&schema), "{file}: {value:?}");
        let bytes = GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(value.clone()).unwrap();
        let decoded = GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut bytes.as_slice()).unwrap();
        let decoded = uuids_as_strings(decoded);
        assert_eq!(decoded, value, "{file}: decoding gives back what was encoded");
        decoded
    }

    fn field<'v>(value: &'v Value, name: &str) -> &'v Value {
        match value {
            Value::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1,
            other => panic!("not a record: {other:?}"),
        }
    }

    fn money(value: &Value, name: &str) -> Decimal {
        match field(value, name) {
            Value::Decimal(d) => crate::wire::avro::decimal_from_avro(d, 2).unwrap(),
            other => panic!("{name} is not a decimal: {other:?}"),
        }
    }

    /// The symbols of the schema's enum `field`, in order.
    fn symbols(schema: &Schema, field: &str) -> Vec<String> {
        let Schema::Record(r) = schema else { panic!("not a record schema") };
        let f = r.fields.iter().find(|f| f.name == field).unwrap_or_else(|| panic!("no {field}"));
        match &f.schema {
            Schema::Enum(e) => e.symbols.clone(),
            other => panic!("{field} is not an enum: {other:?}"),
        }
    }

    /// Every Rust variant in the schema's order, then `Unknown` as the schema's default and
    /// last symbol: none missing, none extra, same names.
    fn same_symbols<T: Serialize>(all: &[T], unknown: T, schema: &Schema, field: &str) {
        let ours: Vec<String> = all
            .iter()
            .chain([&unknown])
            .map(|v| match apache_avro::to_value(v).unwrap() {
                Value::String(s) => s,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ours, symbols(schema, field), "{field}");
        let Schema::Record(r) = schema else { panic!() };
        let Schema::Enum(e) = &r.fields.iter().find(|f| f.name == field).unwrap().schema else { panic!() };
        assert_eq!(e.default.as_deref(), Some(UNKNOWN), "{field}: the default symbol");
    }

    /// A `uuid` field decodes as a UUID; the events hold it as its (canonical) text.
    fn uuids_as_strings(v: Value) -> Value {
        match v {
            Value::Uuid(u) => Value::String(u.to_string()),
            Value::Record(fields) => Value::Record(fields.into_iter().map(|(n, v)| (n, uuids_as_strings(v))).collect()),
            other => other,
        }
    }

    const ID_1: &str = "6f1c3c1e-59a4-5b0e-9a53-0d2c4e3b1a01";
    const ID_2: &str = "6f1c3c1e-59a4-5b0e-9a53-0d2c4e3b1a02";
    const ID_3: &str = "6f1c3c1e-59a4-5b0e-9a53-0d2c4e3b1a03";
    const ID_4: &str = "6f1c3c1e-59a4-5b0e-9a53-0d2c4e3b1a04";
    const ID_5: &str = "6f1c3c1e-59a4-5b0e-9a53-0d2c4e3b1a05";

    fn cancelled(reason: CancellationReason, items: Vec<CancelledItem>) -> OrderCancelled {
        OrderCancelled {
            event_id: ID_1.into(),
            event_timestamp: at(1_764_028_800_123),
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            items,
            cancellation_reason: reason,
            cancelled_at: at(1_764_028_800_123),
        }
    }

    fn alert(redis_stock: Option<i32>, action: SyncAction, severity: Severity) -> StockSyncAlert {
        StockSyncAlert {
            event_id: ID_2.into(),
            event_timestamp: at(1_764_028_800_000),
            product_id: "p-1".into(),
            db_stock: -3,
            redis_stock,
            discrepancy: i32::MIN,
            action,
            severity,
            detected_at: at(-1),
            cause: "REDIS_DRIFT".into(),
            run_id: "r-1".into(),
            mismatches_in_run: i32::MAX,
        }
    }

    fn statistics(sales: &str, avg: &str, refund: &str, top: Vec<TopProduct>) -> DailyStatistics {
        DailyStatistics {
            event_id: ID_3.into(),
            event_timestamp: at(1_764_028_800_000),
            date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
            total_orders: i64::MAX,
            total_sales: dec(sales),
            avg_order_amount: dec(avg),
            top_products: top,
            generated_at: at(1_764_028_800_000),
            cancelled_orders: 0,
            refund_amount: dec(refund),
            time_zone: "Asia/Seoul".into(),
        }
    }

    fn report(report_type: ReportType, counts: &[(&str, i64)], problems: &[&str]) -> JobReport {
        JobReport {
            event_id: ID_4.into(),
            event_timestamp: at(1_764_028_800_000),
            report_type,
            job: "stock-sync".into(),
            window_start: at(1_763_942_400_000),
            window_end: at(1_764_028_800_000),
            runs: 3,
            succeeded: 1,
            failed: 1,
            unfinished: 1,
            counts: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            problems: problems.iter().map(|p| p.to_string()).collect(),
            title: "재고 동기화 결과 요약".into(),
            text: "".into(),
        }
    }

    #[test]
    fn order_cancelled_follows_its_schema() {
        let schema = ORDER_CANCELLED.schema().unwrap();
        same_symbols(&CancellationReason::ALL, CancellationReason::Unknown, schema, "cancellationReason");
        for (i, reason) in CancellationReason::ALL.into_iter().enumerate() {
            let items = if i % 2 == 0 {
                Vec::new()
            } else {
                vec![CancelledItem { product_id: "p-1".into(), quantity: 2 }, CancelledItem { product_id: "p-2".into(), quantity: -1 }]
            };
            let event = cancelled(reason, items.clone());
            let decoded = round_trip(&event);
            assert_eq!(field(&decoded, "cancellationReason"), &Value::Enum(i as u32, symbols(schema, "cancellationReason")[i].clone()));
            assert_eq!(field(&decoded, "cancelledAt"), &Value::TimestampMillis(1_764_028_800_123));
            let Value::Array(decoded_items) = field(&decoded, "items") else { panic!() };
            assert_eq!(decoded_items.len(), items.len());
            assert_eq!(emit(event.clone()).unwrap().key, "o-1");
        }
    }

    #[test]
    fn order_expiration_notification_follows_its_schema() {
        let event = OrderExpirationNotification {
            event_id: ID_5.into(),
            event_timestamp: at(0),
            order_id: "o-2".into(),
            user_id: "u-2".into(),
            expiration_reason: "주문이 자동 취소되었습니다 (결제 시간 초과)".into(),
            expired_at: at(1_764_028_800_999),
        };
        let decoded = round_trip(&event);
        assert_eq!(field(&decoded, "expiredAt"), &Value::TimestampMillis(1_764_028_800_999));
        let e = emit(event.clone()).unwrap();
        assert_eq!((e.topic, e.key.as_str()), (Topic::OrderExpirationNotification, "o-2"));
    }

    #[test]
    fn stock_sync_alert_follows_its_schema() {
        let schema = STOCK_SYNC_ALERT.schema().unwrap();
        same_symbols(&SyncAction::ALL, SyncAction::Unknown, schema, "action");
        same_symbols(&Severity::ALL, Severity::Unknown, schema, "severity");
        for a in SyncAction::ALL {
            assert_eq!(SyncAction::from_symbol(a.as_str()), Some(a));
        }
        assert_eq!(SyncAction::from_symbol("NOPE"), None);
        assert_eq!(SyncAction::from_symbol(UNKNOWN), None, "never stored");
        for action in SyncAction::ALL {
            for severity in Severity::ALL {
                for redis in [None, Some(0), Some(-7), Some(i32::MAX)] {
                    let decoded = round_trip(&alert(redis, action, severity));
                    let expected = match redis {
                        None => Value::Union(0, Box::new(Value::Null)),
                        Some(n) => Value::Union(1, Box::new(Value::Int(n))),
                    };
                    assert_eq!(field(&decoded, "redisStock"), &expected);
                    assert_eq!(field(&decoded, "action"), &Value::Enum(action as u32, action.as_str().into()));
                    assert_eq!(field(&decoded, "detectedAt"), &Value::TimestampMillis(-1));
                }
            }
        }
        assert_eq!(emit(alert(None, SyncAction::RedisRestored, Severity::Low)).unwrap().key, "p-1");
    }

    #[test]
    fn daily_statistics_follows_its_schema_with_exact_money() {
        let top = vec![
            TopProduct { product_id: "p-1".into(), product_name: "키보드".into(), total_sold: 7 },
            TopProduct { product_id: "p-2".into(), product_name: "".into(), total_sold: i64::MAX },
        ];
        let cases = [
            ("0", "0.00", "0", Vec::new()),
            ("1234567890123.45", "99999999.99", "0.01", top.clone()),
            ("-1234567890123.45", "-99999999.99", "-0.01", top.clone()),
            ("9999999999999.99", "12.3400", "-128", Vec::new()),
            ("127", "128", "-129", top),
        ];
        for (sales, avg, refund, top) in cases {
            let event = statistics(sales, avg, refund, top.clone());
            let decoded = round_trip(&event);
            assert_eq!(money(&decoded, "totalSales"), dec(sales), "{sales}");
            assert_eq!(money(&decoded, "avgOrderAmount"), dec(avg), "{avg}");
            assert_eq!(money(&decoded, "refundAmount"), dec(refund), "{refund}");
            assert_eq!(field(&decoded, "date"), &Value::String("2026-11-24".into()));
            let Value::Array(products) = field(&decoded, "topProducts") else { panic!() };
            assert_eq!(products.len(), top.len());
            assert_eq!(emit(event.clone()).unwrap().key, "2026-11-24");
        }
        // Money that does not fit the schema's decimal is refused, never rounded.
        for (sales, avg, refund, path) in [
            ("0.001", "0", "0", "totalSales"),
            ("0", "100000000.00", "0", "avgOrderAmount"),
            ("0", "0", "10000000000000.00", "refundAmount"),
        ] {
            match value_of(&statistics(sales, avg, refund, Vec::new())) {
                Err(EventError::Mismatch { path: p, .. }) => assert_eq!(p, path),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn job_report_follows_its_schema() {
        let schema = JOB_REPORT.schema().unwrap();
        same_symbols(&ReportType::ALL, ReportType::Unknown, schema, "reportType");
        for t in ReportType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()), "stored as its symbol");
            for (counts, problems) in [(vec![], vec![]), (vec![("mismatches", 3), ("cause.REDIS_DRIFT", -1)], vec!["a", "b"])] {
                let event = report(t, &counts, &problems);
                let decoded = round_trip(&event);
                let Value::Map(m) = field(&decoded, "counts") else { panic!() };
                assert_eq!(m.len(), counts.len());
                assert_eq!(emit(event.clone()).unwrap().key, t.as_str());
            }
        }
    }

    /// The records exactly as the jobs built them by hand before these structs (copied from
    /// the code this module replaced): same values, same bytes.
    #[test]
    fn the_records_are_the_ones_the_jobs_built_by_hand() {
        use crate::wire::avro::decimal_to_avro;
        use crate::wire::{enum_value, long_map, ts};
        fn same<E: Event>(event: &E, by_hand: Value) {
            let schema = E::schema().schema().unwrap();
            let ours = value_of(event).unwrap();
            assert_eq!(ours, by_hand, "{}", E::schema().file);
            let w = GenericDatumWriter::builder(schema).build().unwrap();
            assert_eq!(w.write_value_to_vec(ours).unwrap(), w.write_value_to_vec(by_hand).unwrap(), "{}", E::schema().file);
        }
        let t = at(1_764_028_800_123);

        let items = vec![CancelledItem { product_id: "p-1".into(), quantity: 2 }, CancelledItem { product_id: "p-2".into(), quantity: 1 }];
        let hand_items = items
            .iter()
            .map(|i| {
                Value::Record(vec![("productId".into(), Value::String(i.product_id.clone())), ("quantity".into(), Value::Int(i.quantity))])
            })
            .collect();
        same(
            &cancelled(CancellationReason::PaymentTimeout, items),
            Value::Record(vec![
                ("eventId".into(), Value::String(ID_1.into())),
                ("eventTimestamp".into(), ts(t)),
                ("orderId".into(), Value::String("o-1".into())),
                ("userId".into(), Value::String("u-1".into())),
                ("items".into(), Value::Array(hand_items)),
                (
                    "cancellationReason".into(),
                    enum_value(&["PAYMENT_TIMEOUT", "USER_REQUESTED", "STOCK_UNAVAILABLE", "SYSTEM_ERROR", "UNKNOWN"], "PAYMENT_TIMEOUT"),
                ),
                ("cancelledAt".into(), ts(t)),
            ]),
        );

        same(
            &OrderExpirationNotification {
                event_id: ID_5.into(),
                event_timestamp: t,
                order_id: "o-2".into(),
                user_id: "u-2".into(),
                expiration_reason: "주문이 자동 취소되었습니다 (결제 시간 초과)".into(),
                expired_at: t,
            },
            Value::Record(vec![
                ("eventId".into(), Value::String(ID_5.into())),
                ("eventTimestamp".into(), ts(t)),
                ("orderId".into(), Value::String("o-2".into())),
                ("userId".into(), Value::String("u-2".into())),
                ("expirationReason".into(), Value::String("주문이 자동 취소되었습니다 (결제 시간 초과)".into())),
                ("expiredAt".into(), ts(t)),
            ]),
        );

        for redis in [None, Some(4)] {
            let a = alert(redis, SyncAction::ManualReviewRequired, Severity::Critical);
            same(
                &a,
                Value::Record(vec![
                    ("eventId".into(), Value::String(ID_2.into())),
                    ("eventTimestamp".into(), ts(a.event_timestamp)),
                    ("productId".into(), Value::String("p-1".into())),
                    ("dbStock".into(), Value::Int(-3)),
                    (
                        "redisStock".into(),
                        match redis {
                            None => Value::Union(0, Box::new(Value::Null)),
                            Some(v) => Value::Union(1, Box::new(Value::Int(v))),
                        },
                    ),
                    ("discrepancy".into(), Value::Int(i32::MIN)),
                    ("action".into(), enum_value(&["REDIS_RESTORED", "MANUAL_REVIEW_REQUIRED", "REPAIR_DEFERRED", "UNKNOWN"], "MANUAL_REVIEW_REQUIRED")),
                    ("severity".into(), enum_value(&["LOW", "MEDIUM", "HIGH", "CRITICAL", "UNKNOWN"], "CRITICAL")),
                    ("detectedAt".into(), ts(a.detected_at)),
                    ("cause".into(), Value::String("REDIS_DRIFT".into())),
                    ("runId".into(), Value::String("r-1".into())),
                    ("mismatchesInRun".into(), Value::Int(i32::MAX)),
                ]),
            );
        }

        let top = vec![TopProduct { product_id: "p-1".into(), product_name: "키보드".into(), total_sold: 7 }];
        for (sales, avg, refund) in [("0", "0.00", "0"), ("-1234567890123.45", "12.3400", "128"), ("1234567890123.45", "-0.01", "-129")] {
            let d = statistics(sales, avg, refund, top.clone());
            let decimal = |v: &str, precision| decimal_to_avro(dec(v), precision, 2).unwrap();
            same(
                &d,
                Value::Record(vec![
                    ("eventId".into(), Value::String(ID_3.into())),
                    ("eventTimestamp".into(), ts(d.generated_at)),
                    ("date".into(), Value::String("2026-11-24".into())),
                    ("totalOrders".into(), Value::Long(i64::MAX)),
                    ("totalSales".into(), decimal(sales, 15)),
                    ("avgOrderAmount".into(), decimal(avg, 10)),
                    (
                        "topProducts".into(),
                        Value::Array(vec![Value::Record(vec![
                            ("productId".into(), Value::String("p-1".into())),
                            ("productName".into(), Value::String("키보드".into())),
                            ("totalSold".into(), Value::Long(7)),
                        ])]),
                    ),
                    ("generatedAt".into(), ts(d.generated_at)),
                    ("cancelledOrders".into(), Value::Long(0)),
                    ("refundAmount".into(), decimal(refund, 15)),
                    ("timeZone".into(), Value::String("Asia/Seoul".into())),
                ]),
            );
        }

        // One count at most: a map's entries are written in hash order, by hand as now.
        for counts in [vec![], vec![("mismatches", 3)]] {
            let r = report(ReportType::DailyStatisticsReport, &counts, &["a", "b"]);
            same(
                &r,
                Value::Record(vec![
                    ("eventId".into(), Value::String(ID_4.into())),
                    ("eventTimestamp".into(), ts(r.event_timestamp)),
                    ("reportType".into(), enum_value(&["STOCK_SYNC_SUMMARY", "DAILY_STATISTICS_REPORT", "UNKNOWN"], "DAILY_STATISTICS_REPORT")),
                    ("job".into(), Value::String("stock-sync".into())),
                    ("windowStart".into(), ts(r.window_start)),
                    ("windowEnd".into(), ts(r.window_end)),
                    ("runs".into(), Value::Int(3)),
                    ("succeeded".into(), Value::Int(1)),
                    ("failed".into(), Value::Int(1)),
                    ("unfinished".into(), Value::Int(1)),
                    ("counts".into(), long_map(&r.counts)),
                    ("problems".into(), Value::Array(vec![Value::String("a".into()), Value::String("b".into())])),
                    ("title".into(), Value::String(r.title.clone())),
                    ("text".into(), Value::String(String::new())),
                ]),
            );
        }
    }

    /// The check is strict: a struct out of step with its schema (here the schema moves on)
    /// is an error naming the field, not a record the registry's defaults quietly complete.
    #[test]
    fn a_schema_the_struct_does_not_follow_is_refused() {
        let value = || apache_avro::to_value(alert(Some(1), SyncAction::RedisRestored, Severity::High)).unwrap();
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut json: serde_json::Value = serde_json::from_str(STOCK_SYNC_ALERT.text).unwrap();
            edit(&mut json);
            let schema = Schema::parse(&json).unwrap();
            conform(value(), &schema, &HashMap::<Name, Schema>::new(), None).map(|_| ()).map_err(|m| (m.path(), m.message))
        };
        assert_eq!(with(&|_| {}), Ok(()));
        let added =
            with(&|j| j["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "note", "type": "string", "default": ""})));
        assert!(added.unwrap_err().1.contains("missing [\"note\"]"));
        let removed = with(&|j| {
            j["fields"].as_array_mut().unwrap().pop();
        });
        assert!(removed.unwrap_err().1.contains("not in the schema [\"mismatchesInRun\"]"));
        let symbol = with(&|j| j["fields"][6]["type"]["symbols"] = serde_json::json!(["RESTORED", "MANUAL_REVIEW_REQUIRED", "UNKNOWN"]));
        assert_eq!(symbol.unwrap_err().0, "action");
        let retyped = with(&|j| j["fields"][3]["type"] = serde_json::json!("long"));
        assert_eq!(retyped.unwrap_err().0, "dbStock");
        let micros = with(&|j| j["fields"][8]["type"] = serde_json::json!({"type": "long", "logicalType": "timestamp-micros"}));
        assert_eq!(micros.unwrap_err().0, "detectedAt");
    }

    /// `UNKNOWN` is for readers: an event carrying it, or an id that is not a UUID, is refused
    /// naming the field.
    #[test]
    fn events_never_carry_the_default_symbol_and_ids_are_uuids() {
        for (event, path) in [
            (alert(None, SyncAction::Unknown, Severity::Low), "action"),
            (alert(None, SyncAction::RedisRestored, Severity::Unknown), "severity"),
            (StockSyncAlert { event_id: "e-2".into(), ..alert(None, SyncAction::RedisRestored, Severity::Low) }, "eventId"),
            (StockSyncAlert { event_id: ID_2.to_uppercase(), ..alert(None, SyncAction::RedisRestored, Severity::Low) }, "eventId"),
        ] {
            match value_of(&event) {
                Err(EventError::Mismatch { path: p, message, .. }) => assert_eq!(p, path, "{message}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(value_of(&cancelled(CancellationReason::Unknown, Vec::new())).is_err());
        assert!(value_of(&report(ReportType::Unknown, &[], &[])).is_err());
    }

    /// A consumer built with today's schema reads a record written with a newer schema that
    /// added a symbol: Avro's resolution (what a consumer with a reader schema does) gives the
    /// default symbol, and the Rust enum gives `Unknown`. Without the default, the same read
    /// fails: the consumer would be stuck on the record.
    #[test]
    fn an_old_reader_decodes_a_newer_symbol_as_unknown() {
        let reader = STOCK_SYNC_ALERT.schema().unwrap();
        let writer = {
            let mut json: serde_json::Value = serde_json::from_str(STOCK_SYNC_ALERT.text).unwrap();
            json["fields"][6]["type"]["symbols"] =
                serde_json::json!(["REDIS_RESTORED", "MANUAL_REVIEW_REQUIRED", "REPAIR_DEFERRED", "REDIS_REBUILT", "UNKNOWN"]);
            json["fields"][7]["type"]["symbols"] = serde_json::json!(["LOW", "MEDIUM", "HIGH", "CRITICAL", "PAGE_NOW", "UNKNOWN"]);
            Schema::parse(&json).unwrap()
        };
        let mut record = value_of(&alert(Some(3), SyncAction::RedisRestored, Severity::High)).unwrap();
        let Value::Record(fields) = &mut record else { panic!() };
        fields[6].1 = Value::Enum(3, "REDIS_REBUILT".into());
        fields[7].1 = Value::Enum(4, "PAGE_NOW".into());
        let bytes = GenericDatumWriter::builder(&writer).build().unwrap().write_value_to_vec(record).unwrap();

        let read = |reader: &Schema| GenericDatumReader::builder(&writer).reader_schema(reader).build().unwrap().read_value(&mut bytes.as_slice());
        let decoded = read(reader).unwrap();
        assert_eq!(field(&decoded, "action"), &Value::Enum(3, UNKNOWN.into()));
        assert_eq!(field(&decoded, "severity"), &Value::Enum(4, UNKNOWN.into()));
        assert_eq!(apache_avro::from_value::<SyncAction>(field(&decoded, "action")).unwrap(), SyncAction::Unknown);
        assert_eq!(apache_avro::from_value::<Severity>(field(&decoded, "severity")).unwrap(), Severity::Unknown);
        assert_eq!(field(&decoded, "productId"), &Value::String("p-1".into()), "the rest of the record reads as written");
        // Symbols the reader knows decode as before.
        assert_eq!(apache_avro::from_value::<SyncAction>(&Value::Enum(2, "REPAIR_DEFERRED".into())).unwrap(), SyncAction::RepairDeferred);

        let mut json: serde_json::Value = serde_json::from_str(STOCK_SYNC_ALERT.text).unwrap();
        for i in [6, 7] {
            let symbols = json["fields"][i]["type"]["symbols"].as_array_mut().unwrap();
            symbols.pop();
            json["fields"][i]["type"].as_object_mut().unwrap().remove("default");
        }
        let without_default = Schema::parse(&json).unwrap();
        assert!(read(&without_default).is_err(), "a reader enum without a default cannot read a newer symbol");
    }

    #[test]
    fn paths_name_nested_fields() {
        let mut json: serde_json::Value = serde_json::from_str(ORDER_CANCELLED.text).unwrap();
        json["fields"][4]["type"]["items"]["fields"][1]["type"] = serde_json::json!("long");
        let schema = Schema::parse(&json).unwrap();
        let value = apache_avro::to_value(cancelled(
            CancellationReason::PaymentTimeout,
            vec![CancelledItem { product_id: "p".into(), quantity: 1 }],
        ))
        .unwrap();
        let m = conform(value, &schema, &HashMap::<Name, Schema>::new(), None).err().unwrap();
        assert_eq!(m.path(), "items[0].quantity");
    }
}

#[cfg(test)]
mod direct {
    use super::*;

    /// `E`'s direct writing gives the bytes of its value path, under its schema.
    fn same_bytes<E: Event + Debug + Send + Sync>(event: &E) {
        let schema = E::schema().schema().unwrap();
        let writer = GenericDatumWriter::builder(schema).build().unwrap();
        let mut by_value = Vec::new();
        writer.write_value(&mut by_value, value_of(event).unwrap()).unwrap();
        let mut direct = Vec::new();
        Direct::write(event, &writer, &mut direct).unwrap();
        assert_eq!(direct, by_value, "{event:?}");
    }

    #[test]
    fn order_events_written_directly_are_byte_identical_to_their_values() {
        let at = DateTime::from_timestamp_millis(1_764_028_800_123).unwrap();
        let lines = [
            vec![],
            vec![CancelledItem { product_id: "p-1".into(), quantity: 1 }],
            vec![
                CancelledItem { product_id: "p-000123 ü".into(), quantity: i32::MAX },
                CancelledItem { product_id: "".into(), quantity: i32::MIN },
                CancelledItem { product_id: "p-3".into(), quantity: 0 },
            ],
        ];
        for items in lines {
            for reason in CancellationReason::ALL {
                same_bytes(&OrderCancelled {
                    event_id: "6ba6fe1f-3d3e-5d70-8ca6-03e7be9072c8".into(),
                    event_timestamp: at,
                    order_id: "o-42".into(),
                    user_id: "u-7".into(),
                    items: items.clone(),
                    cancellation_reason: reason,
                    cancelled_at: DateTime::from_timestamp_millis(-1).unwrap(),
                });
            }
        }
        same_bytes(&OrderExpirationNotification {
            event_id: "6ba6fe1f-3d3e-5d70-8ca6-03e7be9072c8".into(),
            event_timestamp: at,
            order_id: "o-42".into(),
            user_id: "u-7".into(),
            expiration_reason: "주문이 자동 취소되었습니다 (결제 시간 초과)".into(),
            expired_at: at,
        });
    }

    #[test]
    fn a_stock_sync_alert_written_directly_is_byte_identical_to_its_value() {
        for redis_stock in [None, Some(-7), Some(i32::MAX)] {
            for action in SyncAction::ALL {
                for severity in Severity::ALL {
                    same_bytes(&StockSyncAlert {
                        event_id: "6ba6fe1f-3d3e-5d70-8ca6-03e7be9072c8".into(),
                        event_timestamp: DateTime::from_timestamp_millis(1_764_028_800_123).unwrap(),
                        product_id: "p-000123 ü".into(),
                        db_stock: 10,
                        redis_stock,
                        discrepancy: i32::MIN,
                        action,
                        severity,
                        detected_at: DateTime::from_timestamp_millis(-1).unwrap(),
                        cause: "REDIS_KEY_MISSING".into(),
                        run_id: "r-1".into(),
                        mismatches_in_run: 0,
                    });
                }
            }
        }
    }
}
