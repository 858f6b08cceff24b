-- Reports built by the report jobs, stored before they are emitted: every attempt of a report
-- run emits the stored body, so a retried chunk never sends a different report under the
-- same eventId (the run history it summarises keeps growing after the report's time).
CREATE TABLE IF NOT EXISTS job_reports (
    run_id      text PRIMARY KEY,
    report_type text NOT NULL,
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
