//! A job's settings: what the engine needs of every job (enabled, schedule, timeout, batch
//! size, catch-up) and the job's own options, which the job declares — their names, defaults
//! and validation — in its module (see [`super::Job::defaults`] and [`super::Job::check`]).
//!
//! Options sit beside the common settings, so they are set the same way:
//! `[jobs.stock_sync] confirm_delay_ms = 100` in the file, or
//! `SJ_JOBS__STOCK_SYNC__CONFIRM_DELAY_MS=100` in the environment.

use std::collections::BTreeMap;

use figment::providers::Serialized;
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// When a tick producer comes back after downtime, which missed fire times it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CatchUp {
    /// Only the most recent missed fire time (the run looks at current state anyway).
    Latest,
    /// Every missed fire time, oldest first, up to `max_catch_up`.
    All,
}

impl CatchUp {
    /// As in the configuration (`latest`, `all`).
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
        }
    }
}

/// What a tick does when the job's previous run is still running (`jobs.<job>.overlap`).
/// "Running" means its run is planned and not yet finished, on any instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick's run is recorded SKIPPED (with the running run named) and does not run.
    #[default]
    Skip,
    /// The tick waits and runs right after the running run; a newer tick that comes while it
    /// waits replaces it (the older one is recorded COALESCED).
    BufferOne,
    /// Every tick waits, and they run one after another in the order they came.
    BufferAll,
    /// The running run is stopped at its next chunk boundary and recorded CANCELLED (its applied
    /// chunks are kept); the tick's run starts at once.
    CancelOther,
    /// Runs overlap: the tick's run starts whatever runs (each period is still run once).
    AllowAll,
}

impl Overlap {
    /// As in the configuration (`skip`, `buffer_one`, `buffer_all`, `cancel_other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::BufferAll => "buffer_all",
            Overlap::CancelOther => "cancel_other",
            Overlap::AllowAll => "allow_all",
        }
    }

    pub fn buffers(self) -> bool {
        matches!(self, Overlap::BufferOne | Overlap::BufferAll)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSettings {
    pub enabled: bool,
    /// 6-field cron (seconds first); empty: never scheduled, only triggered.
    pub schedule: String,
    /// A run still going after this many seconds is abandoned and recorded TIMED_OUT.
    pub timeout_secs: u64,
    /// Work-item size: ids per chunk (stock-sync: products per id range, which streams in
    /// 1,000 at a time whatever its size).
    pub batch_size: u32,
    pub catch_up: CatchUp,
    /// Upper bound on fire times published by one catch-up.
    pub max_catch_up: u32,
    /// A fire time of the schedule for which no tick arrived this many seconds after it is
    /// recorded MISSED by the processor (a late tick still runs it).
    pub missed_after_secs: u64,
    /// Pause the job after this many runs in a row ended FAILED or TIMED_OUT (an operator
    /// pause by the system, with the last error; `resume` lifts it). 0: never.
    pub pause_after_failures: u32,
    /// Publish each fire time's tick up to this many seconds late, a delay derived from the
    /// job and the fire time (redundant producers agree), for jobs whose exact second does not
    /// matter: spreads the load of jobs sharing a fire time. Keep it well below the period.
    /// 0: on the second.
    pub jitter_secs: u64,
    /// What a tick does while the job's previous run is still running: `skip`, `buffer_one`,
    /// `buffer_all`, `cancel_other` or `allow_all` (see [`Overlap`]).
    pub overlap: Overlap,
    /// The job's own options, by name (read with [`JobSettings::options`]); any other key is
    /// refused at start-up by the job's check.
    #[serde(flatten)]
    pub options: BTreeMap<String, toml::Value>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            enabled: true,
            schedule: String::new(),
            timeout_secs: 300,
            batch_size: 100,
            catch_up: CatchUp::Latest,
            max_catch_up: 1,
            missed_after_secs: 300,
            pause_after_failures: 0,
            jitter_secs: 0,
            overlap: Overlap::Skip,
            options: BTreeMap::new(),
        }
    }
}

/// The options of a job that has none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

impl JobSettings {
    /// The common settings with the options `T` holds by default (a job's declared defaults).
    pub fn with_options<T: Serialize>(mut self, options: &T) -> JobSettings {
        if let Ok(toml::Value::Table(t)) = toml::Value::try_from(options) {
            self.options = t.into_iter().collect();
        }
        self
    }

    /// The options as the job's own type `T` (`#[serde(default, deny_unknown_fields)]`).
    /// Values set from the environment are strings; they are read as the numbers or flags
    /// `T` expects. An unknown option or a value of the wrong type is an error naming it.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T, String> {
        Figment::from(Serialized::defaults(&self.options)).extract_lossy::<T>().map_err(|e| {
            e.into_iter()
                .map(|err| match err.path.last() {
                    Some(field) => format!("option `{field}`: {}", err.kind),
                    None => err.kind.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The version of this schedule read in `tz`, as every tick computed from it carries it
    /// ([`crate::wire::tick::schedule_version`]).
    pub fn schedule_version(&self, tz: chrono_tz::Tz) -> String {
        crate::wire::tick::schedule_version(&self.schedule, tz.name(), self.catch_up.as_str(), self.max_catch_up)
    }

    /// Sets option `name` (tests and the demo adjust options this way).
    pub fn set_option(&mut self, name: &str, value: impl Into<toml::Value>) {
        self.options.insert(name.to_string(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Opts {
        delay_ms: u64,
        loud: bool,
    }

    impl Default for Opts {
        fn default() -> Self {
            Opts { delay_ms: 200, loud: false }
        }
    }

    #[test]
    fn options_default_read_strings_lossily_and_refuse_unknown_names() {
        let mut s = JobSettings::default().with_options(&Opts::default());
        assert_eq!(s.options::<Opts>().unwrap(), Opts::default());
        s.set_option("delay_ms", "50");
        s.set_option("loud", "true");
        assert_eq!(s.options::<Opts>().unwrap(), Opts { delay_ms: 50, loud: true });
        s.set_option("delay_ms", "soon");
        assert!(s.options::<Opts>().unwrap_err().contains("delay_ms"));
        let mut s = JobSettings::default().with_options(&Opts::default());
        s.set_option("delay", 5);
        let e = s.options::<Opts>().unwrap_err();
        assert!(e.contains("delay"), "{e}");
        assert!(JobSettings::default().options::<NoOptions>().is_ok());
        assert!(s.options::<NoOptions>().is_err());
    }
}
