-- The processor's run bookkeeping. Rows are written only when applying work items that came
-- out of committed plan transactions (a chunk, or the plan's seal carrying the chunk count),
-- so an aborted or fenced plan can never leave a row that counts. Finalisation is claimed by
-- exactly one chunk (finalized_by); a retry of that chunk claims it again, deterministically.

CREATE TABLE IF NOT EXISTS job_runs (
    run_id        text PRIMARY KEY,
    job           text NOT NULL,
    period        text NOT NULL,
    chunk_count   integer NOT NULL CHECK (chunk_count >= 0),
    planned_at    timestamptz NOT NULL,
    sealed_at     timestamptz NOT NULL,
    finalized_by  integer
);

CREATE TABLE IF NOT EXISTS job_run_chunks (
    run_id       text NOT NULL,
    chunk_index  integer NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('APPLIED', 'TIMED_OUT', 'FAILED')),
    counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
    message      text,
    applied_at   timestamptz NOT NULL,
    PRIMARY KEY (run_id, chunk_index)
);
