-- Cancellation requests (`jobs.<job>.overlap = cancel_other`): a tick that finds a run of its
-- job still running asks it to stop. Written before the Kafka transaction of the tick that
-- decided it, keyed by the run it stops, so a retried decision writes nothing new. A chunk of
-- that run not yet started when it sees the row is recorded CANCELLED instead of applied; a
-- chunk already started completes (its effects may have begun).
CREATE TABLE IF NOT EXISTS job_run_cancels (
    run_id        text PRIMARY KEY,
    job           text NOT NULL,
    requested_by  text NOT NULL,
    reason        text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE job_run_chunks DROP CONSTRAINT IF EXISTS job_run_chunks_outcome_check;
ALTER TABLE job_run_chunks ADD CONSTRAINT job_run_chunks_outcome_check
    CHECK (outcome IN ('STARTED', 'APPLIED', 'TIMED_OUT', 'FAILED', 'CANCELLED'));
