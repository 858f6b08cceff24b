//! Cron schedules (6 fields, seconds first) evaluated in a configured time zone.
//!
//! Daylight-saving transitions follow croner's rules for fixed-time jobs: a fire time that
//! falls into a spring-forward gap runs at the first instant after the gap (never skipped),
//! and one in a fall-back overlap runs once (never twice). Interval jobs (`*/10` minutes)
//! keep their cadence in real time. Fire times are returned as UTC instants.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

#[derive(Debug, thiserror::Error)]
#[error("`{expr}` is not a 6-field cron expression (seconds first): {message}")]
pub struct ScheduleError {
    pub expr: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    expr: String,
}

impl Schedule {
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let err = |message: String| ScheduleError { expr: expr.to_string(), message };
        if expr.split_whitespace().count() != 6 {
            return Err(err(format!("has {} fields", expr.split_whitespace().count())));
        }
        let cron = CronParser::builder().seconds(Seconds::Required).build().parse(expr).map_err(|e| err(e.to_string()))?;
        Ok(Schedule { cron, tz, expr: expr.to_string() })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t.with_timezone(&self.tz), false).ok().map(|d| d.with_timezone(&Utc))
    }

    /// Fire times in `(after, until]`, oldest first.
    pub fn fire_times(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let next = self.next_after(cursor)?;
            if next > until {
                return None;
            }
            cursor = next;
            Some(next)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn seed_schedules_parse_and_fire() {
        let s = Schedule::parse("0 */10 * * * *", Tz::UTC).unwrap();
        assert_eq!(s.next_after(utc("2026-11-25T10:03:00Z")), Some(utc("2026-11-25T10:10:00Z")));
        assert_eq!(s.next_after(utc("2026-11-25T10:10:00Z")), Some(utc("2026-11-25T10:20:00Z")));
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        let daily = Schedule::parse("0 0 0 * * *", seoul).unwrap();
        // Midnight in Seoul is 15:00 UTC the day before.
        assert_eq!(daily.next_after(utc("2026-11-25T10:00:00Z")), Some(utc("2026-11-25T15:00:00Z")));
    }

    #[test]
    fn five_fields_or_garbage_are_refused() {
        assert!(Schedule::parse("*/10 * * * *", Tz::UTC).is_err());
        assert!(Schedule::parse("0 0 25 * * *", Tz::UTC).is_err());
        assert!(Schedule::parse("every ten minutes", Tz::UTC).is_err());
    }

    /// A daily job at 02:30 local fires once per local day across both transitions.
    fn daily_across_dst(zone: &str, spring: (i32, u32, u32), fall: (i32, u32, u32)) {
        let tz: Tz = zone.parse().unwrap();
        let s = Schedule::parse("0 30 2 * * *", tz).unwrap();
        for (y, m, d) in [spring, fall] {
            let day = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let noon = |date: chrono::NaiveDate| {
                tz.from_local_datetime(&date.and_hms_opt(12, 0, 0).unwrap()).unwrap().with_timezone(&Utc)
            };
            let (start, end) = (noon(day - chrono::Days::new(2)), noon(day + chrono::Days::new(2)));
            let fires: Vec<_> = s.fire_times(start, end).map(|t| t.with_timezone(&tz)).collect();
            let days: Vec<_> = fires.iter().map(|t| t.date_naive()).collect();
            let mut unique = days.clone();
            unique.dedup();
            assert_eq!(fires.len(), 4, "{zone} {y}-{m}-{d}: one fire per local day: {fires:?}");
            assert_eq!(unique.len(), 4, "{zone}: no day twice: {fires:?}");
        }
    }

    #[test]
    fn daily_jobs_fire_once_per_local_day_across_dst_in_berlin() {
        daily_across_dst("Europe/Berlin", (2026, 3, 29), (2026, 10, 25));
    }

    #[test]
    fn daily_jobs_fire_once_per_local_day_across_dst_in_new_york() {
        daily_across_dst("America/New_York", (2026, 3, 8), (2026, 11, 1));
    }

    #[test]
    fn midnight_daily_job_in_a_zone_with_dst_fires_every_day() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let s = Schedule::parse("0 0 0 * * *", tz).unwrap();
        let start = utc("2026-10-30T00:00:00Z");
        let end = utc("2026-11-04T00:00:00Z");
        let fires: Vec<_> = s.fire_times(start, end).collect();
        assert_eq!(fires.len(), 5, "{fires:?}");
    }
}
