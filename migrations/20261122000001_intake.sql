-- Intake: API keys, samples, analyses and their append-only audit trail.

CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    role        text        NOT NULL CHECK (role IN ('submitter', 'reader', 'bridge', 'admin')),
    -- SHA-256 of the key; the key itself is shown once and never stored.
    key_hash    bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- The first characters of the key, so operators can tell keys apart.
    key_prefix  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE samples (
    sha256        text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    sha1          text        NOT NULL CHECK (sha1 ~ '^[0-9a-f]{40}$'),
    md5           text        NOT NULL CHECK (md5 ~ '^[0-9a-f]{32}$'),
    size          bigint      NOT NULL CHECK (size > 0),
    file_type     text        NOT NULL,
    storage_path  text        NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE analyses (
    id             uuid        PRIMARY KEY,
    sample_sha256  text        NOT NULL REFERENCES samples (sha256),
    api_key_id     bigint      REFERENCES api_keys (id),
    client_ip      text,
    filename       text,
    tags           text[]      NOT NULL DEFAULT '{}',
    tlp            text        NOT NULL DEFAULT 'amber'
                   CHECK (tlp IN ('clear', 'white', 'green', 'amber', 'amber+strict', 'red')),
    priority       smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    status         text        NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    yara_matches   jsonb       NOT NULL DEFAULT '[]',
    callback_url   text,
    request_id     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analyses_sample_idx ON analyses (sample_sha256);
CREATE INDEX analyses_created_idx ON analyses (created_at, id);

CREATE TABLE analysis_audit_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    analysis_id  uuid        NOT NULL REFERENCES analyses (id),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor        text        NOT NULL,
    event        text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}',
    request_id   text
);
CREATE INDEX analysis_audit_log_analysis_idx ON analysis_audit_log (analysis_id, id);

-- The audit trail is evidence: the database itself refuses to change it.
CREATE FUNCTION analysis_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'analysis_audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER analysis_audit_log_no_change
    BEFORE UPDATE OR DELETE ON analysis_audit_log
    FOR EACH ROW EXECUTE FUNCTION analysis_audit_log_append_only();
CREATE TRIGGER analysis_audit_log_no_truncate
    BEFORE TRUNCATE ON analysis_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION analysis_audit_log_append_only();
