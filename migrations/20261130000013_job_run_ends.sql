-- How each run ended, for failure streaks (`jobs.<job>.pause_after_failures`): one row per run
-- that ended SUCCEEDED, FAILED or TIMED_OUT, written by the transaction plan that emits its
-- result, before the Kafka commit. Keyed by the run, so a retried finalisation (its Kafka
-- transaction aborted) finds its first row and reports the same streak.
CREATE TABLE IF NOT EXISTS job_run_ends (
    run_id    text PRIMARY KEY,
    job       text NOT NULL,
    outcome   text NOT NULL CHECK (outcome IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT')),
    message   text,
    ended_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS job_run_ends_by_job ON job_run_ends (job, ended_at);
