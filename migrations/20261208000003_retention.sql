-- Retention (`retention.sample_days`, `sandgnat samples purge`, `DELETE
-- /v1/samples/{sha256}/content`): a sample's bytes may be deleted while
-- its row, hashes, analyses and audit trail stay. The row says so first
-- (`content_purged`, committed before the bytes go), so it never claims
-- bytes that are gone; a submission that stores the bytes again sets it
-- back (`intake::record`).
ALTER TABLE samples
    ADD COLUMN content_purged boolean NOT NULL DEFAULT false,
    ADD COLUMN purged_at timestamptz;

-- The retention pass: samples whose bytes are still kept, oldest first.
CREATE INDEX samples_kept_last_seen_idx ON samples (last_seen) WHERE NOT content_purged;
