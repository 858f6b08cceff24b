//! `SchedulerTick`: the contract between any tick producer and the processor.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use chrono::{DateTime, Utc};

use super::{derived_id, enum_value, opt_string, string_map, ts, Fields, WireError};

pub const RECORD: &str = "com.ecommerce.scheduler.SchedulerTick";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    Scheduled,
    CatchUp,
    Manual,
    /// The schema's default symbol: a trigger this build does not know (from a newer tick
    /// producer). Decoded, never written; the processor dead-letters such a tick rather than
    /// guess what it means.
    Unknown,
}

pub(crate) const TRIGGERS: [&str; 4] = ["SCHEDULED", "CATCH_UP", "MANUAL", "UNKNOWN"];

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Scheduled => "SCHEDULED",
            Trigger::CatchUp => "CATCH_UP",
            Trigger::Manual => "MANUAL",
            Trigger::Unknown => "UNKNOWN",
        }
    }

    /// The trigger of a symbol; `Unknown` for one this build does not know.
    pub fn parse(s: &str) -> Trigger {
        match s {
            "SCHEDULED" => Trigger::Scheduled,
            "CATCH_UP" => Trigger::CatchUp,
            "MANUAL" => Trigger::Manual,
            _ => Trigger::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub tick_id: String,
    pub job: String,
    pub scheduled_at: DateTime<Utc>,
    pub produced_at: DateTime<Utc>,
    pub trigger: Trigger,
    pub parameters: BTreeMap<String, String>,
    pub producer: Option<String>,
    /// The version of the schedule a SCHEDULED or CATCH_UP tick was computed from
    /// ([`schedule_version`]); `None` when not said (manual ticks, other producers).
    pub schedule_version: Option<String>,
}

/// The version of a job's schedule: what decides its fire times (cron, time zone) and which of
/// them a restarted producer publishes (catch-up policy), hashed. Equal settings give equal
/// versions on every producer.
pub fn schedule_version(cron: &str, time_zone: &str, catch_up: &str, max_catch_up: u32) -> String {
    let cron = cron.split_whitespace().collect::<Vec<_>>().join(" ");
    let id = derived_id(&["schedule", &cron, time_zone, catch_up, &max_catch_up.to_string()]);
    id.simple().to_string()[..12].to_string()
}

impl Tick {
    /// The deterministic id of a fire time: every producer computes the same one, so ticks
    /// from producers running side by side collapse into one run.
    pub fn scheduled_id(job: &str, scheduled_at: DateTime<Utc>) -> String {
        derived_id(&["tick", job, &scheduled_at.timestamp_millis().to_string()]).to_string()
    }

    /// A tick for a fire time (SCHEDULED or CATCH_UP), with its deterministic id.
    pub fn for_fire_time(job: &str, scheduled_at: DateTime<Utc>, trigger: Trigger, producer: Option<String>) -> Tick {
        Tick {
            tick_id: Tick::scheduled_id(job, scheduled_at),
            job: job.to_string(),
            scheduled_at,
            produced_at: Utc::now(),
            trigger,
            parameters: BTreeMap::new(),
            producer,
            schedule_version: None,
        }
    }

    pub fn to_avro(&self) -> Value {
        Value::Record(vec![
            ("tickId".into(), Value::String(self.tick_id.clone())),
            ("job".into(), Value::String(self.job.clone())),
            ("scheduledAt".into(), ts(self.scheduled_at)),
            ("producedAt".into(), ts(self.produced_at)),
            ("trigger".into(), enum_value(&TRIGGERS, self.trigger.as_str())),
            ("parameters".into(), string_map(&self.parameters)),
            ("producer".into(), opt_string(&self.producer)),
            ("scheduleVersion".into(), opt_string(&self.schedule_version)),
        ])
    }

    pub fn from_avro(value: Value) -> Result<Tick, WireError> {
        let mut f = Fields::of(value, RECORD)?;
        let trigger = f.string("trigger")?;
        Ok(Tick {
            tick_id: f.string("tickId")?,
            job: f.string("job")?,
            scheduled_at: f.timestamp("scheduledAt")?,
            produced_at: f.timestamp("producedAt")?,
            trigger: Trigger::parse(&trigger),
            parameters: f.string_map("parameters")?,
            producer: f.opt_string("producer")?,
            schedule_version: f.opt_string("scheduleVersion")?,
        })
    }
}
