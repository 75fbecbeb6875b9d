-- Bulk operations by query: jobs that abort, retry, hold or release every saga a filter
-- selects, beside the compensation replay; and jobs an operator pauses and resumes. A paused
-- job is not claimed by any replica; the one working it stops before its next item (the item's
-- transaction is fenced by the job row being `running`).
ALTER TABLE operator_jobs DROP CONSTRAINT operator_jobs_kind_check;
ALTER TABLE operator_jobs ADD CONSTRAINT operator_jobs_kind_check
    CHECK (kind IN ('replay_compensations', 'abort', 'retry', 'hold', 'release'));
ALTER TABLE operator_jobs DROP CONSTRAINT operator_jobs_state_check;
ALTER TABLE operator_jobs ADD CONSTRAINT operator_jobs_state_check
    CHECK (state IN ('running', 'paused', 'completed', 'cancelled'));
-- Who paused or resumed it last, and why.
ALTER TABLE operator_jobs ADD COLUMN paused_by text, ADD COLUMN pause_reason text;
