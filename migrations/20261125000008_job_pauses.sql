-- Jobs an operator paused (`scheduled-jobs pause <job>`). While a row exists, the processor
-- answers the job's ticks with a SKIPPED run result ("paused") and records no run, so the
-- skipped periods can still run later (replay, or `trigger --at`).
CREATE TABLE IF NOT EXISTS job_pauses (
    job        text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL,
    reason     text
);
