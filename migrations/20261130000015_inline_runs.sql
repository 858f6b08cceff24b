-- A run planned as one chunk is applied in its tick's own Kafka transaction
-- (`processor.inline_one_chunk_runs`). Its chunk, as planned, is written here before its
-- effects: if that transaction does not commit, the tick's retry applies this same chunk
-- again (the plan cannot be redone: the effects may have changed what it reads), whatever
-- the job's pause, overlap policy or queued ticks say by then. NULL for runs planned as work
-- items.
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS inline_item jsonb;
