-- daily-statistics: the time zone each stored date was counted in, so every emission of a
-- row (retries, re-emissions) names the zone its figures were counted in even if
-- `scheduler.time_zone` changed since. Rows stored before this column were counted in the
-- zone configured then; 'UTC' is what the default configuration of that time said, and what
-- the DailyStatistics schema's `timeZone` default tells consumers about older records.
ALTER TABLE daily_statistics ADD COLUMN IF NOT EXISTS time_zone text NOT NULL DEFAULT 'UTC';
