-- A chunk is marked STARTED before its effects, so a retry after the run's deadline still
-- completes it (its effects may have happened) instead of abandoning them.
ALTER TABLE job_run_chunks DROP CONSTRAINT IF EXISTS job_run_chunks_outcome_check;
ALTER TABLE job_run_chunks ADD CONSTRAINT job_run_chunks_outcome_check
    CHECK (outcome IN ('STARTED', 'APPLIED', 'TIMED_OUT', 'FAILED'));
