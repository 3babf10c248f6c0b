-- Idempotent submissions (the IETF httpapi Idempotency-Key draft): the
-- first submission made with a key, per API key, so that a retry with the
-- same key gets the first answer instead of a second analysis. Written in
-- the submission's own statement (intake/record.rs); kept at least a day,
-- then pruned by the analyses' maintenance.
CREATE TABLE idempotency_keys (
    api_key_id      bigint      NOT NULL REFERENCES api_keys (id),
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- What the key was first used for: a retry with other bytes is refused.
    request_sha256  text        NOT NULL CHECK (request_sha256 ~ '^[0-9a-f]{64}$'),
    analysis_id     uuid        NOT NULL REFERENCES analyses (id),
    -- The 202 body given the first time, given again to every retry.
    response        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
