-- The job lifecycle beyond claim/complete (DESIGN.md §3): scheduled runs,
-- retries that wait (`retryable`), the holder of a lease, progress, the
-- analysis a job belongs to, and results kept on the analysis so that
-- pruning finished jobs loses nothing a reader needs.

ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state IN
    ('available', 'scheduled', 'running', 'retryable', 'completed', 'discarded', 'cancelled'));

ALTER TABLE jobs
    ADD COLUMN analysis_id  uuid,
    ADD COLUMN lease_holder text,
    ADD COLUMN progress     jsonb,
    ADD COLUMN attempted_at timestamptz,
    ADD COLUMN updated_at   timestamptz NOT NULL DEFAULT now();

-- Scheduled and retryable jobs become claimable when run_at passes; the
-- claim scan reads all three waiting states through one partial index, so
-- no promoter process has to move rows first.
DROP INDEX jobs_fetch;
CREATE INDEX jobs_fetch ON jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');

DROP INDEX jobs_unique_live;
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable');

CREATE INDEX jobs_analysis ON jobs (analysis_id) WHERE analysis_id IS NOT NULL;

-- What the jobs of an analysis produced, by kind: {"detonate": {...}}.
ALTER TABLE analyses ADD COLUMN results jsonb NOT NULL DEFAULT '{}';
