-- Sessions of the operator's status page (`GET /status`). The browser
-- holds a random token in a cookie; only its SHA-256 is stored, so a copy
-- of this table opens no session. A session dies with its key (revoked:
-- the join in `status::session::resolve`; deleted: the cascade), at its
-- expiry, or at logout.
CREATE TABLE status_sessions (
    token_hash  bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    api_key_id  bigint      NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX status_sessions_expires_idx ON status_sessions (expires_at);
