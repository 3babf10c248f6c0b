-- The stored-answer lookup (src/intake/known.rs) orders by
-- (created_at DESC, id), an order only this index gives. Ordered by
-- created_at alone, the planner could also walk analyses_created_idx
-- backwards; once statistics say a sample is common (one resubmitted
-- many times: every later analysis of it is a cached one, outside this
-- index), it did, reading every analysis made since the scanned one on
-- each resubmission.
DROP INDEX analyses_scanned_idx;
CREATE INDEX analyses_scanned_idx
    ON analyses (sample_sha256, yara_rules_digest, filename, created_at DESC, id)
    WHERE yara_rules_digest IS NOT NULL AND NOT yara_cached;
