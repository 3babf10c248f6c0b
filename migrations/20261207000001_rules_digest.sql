-- Which rule set answered each analysis's YARA scan, so intake can reuse
-- an answer instead of scanning the same bytes again.
--
-- yara_rules_digest: the SHA-256 of the compiled rules (what the status
-- page shows); NULL when the scan gave no complete answer (it timed out
-- or failed) and for analyses older than this column.
-- yara_cached: the matches were copied from an earlier analysis of the
-- same bytes, name and rules, not scanned again.
ALTER TABLE analyses
    ADD COLUMN yara_rules_digest text,
    ADD COLUMN yara_cached boolean NOT NULL DEFAULT false;

-- The lookup intake makes for a sample already in the quarantine. Only
-- analyses that were scanned are candidates: an answer reused many times
-- adds nothing here.
CREATE INDEX analyses_scanned_idx
    ON analyses (sample_sha256, yara_rules_digest, filename, created_at DESC)
    WHERE yara_rules_digest IS NOT NULL AND NOT yara_cached;
