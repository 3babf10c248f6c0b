-- The job queue (DESIGN.md §3). States are text with a CHECK so that a new
-- state is a migration, not an enum rewrite.
CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    queue        text NOT NULL,
    kind         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    state        text NOT NULL DEFAULT 'available'
                 CHECK (state IN ('available', 'running', 'completed', 'discarded', 'cancelled')),
    priority     smallint NOT NULL DEFAULT 0,
    attempt      integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    unique_key   text,
    run_at       timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    errors       jsonb NOT NULL DEFAULT '[]'::jsonb,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
) WITH (
    -- Every job row is updated several times then deleted: vacuum early.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 80
);

-- The claim scan: available jobs of a queue by priority then age.
CREATE INDEX jobs_fetch ON jobs (queue, priority DESC, run_at, id) WHERE state = 'available';
-- Expired-lease reclaim and max_running counts.
CREATE INDEX jobs_running ON jobs (queue, lease_until) WHERE state = 'running';
-- At most one live job per unique key.
CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running');
-- Retention deletes.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
