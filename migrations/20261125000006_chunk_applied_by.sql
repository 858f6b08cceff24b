-- Which processor instance applied each chunk: shows how work spreads over instances.
ALTER TABLE job_run_chunks ADD COLUMN IF NOT EXISTS applied_by text;
