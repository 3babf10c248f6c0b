-- The processes that serve requests (workers, recorder, runners) parse
-- hostile input, so they must not hold the credentials that own the
-- schema: an owner can disable the audit trail's triggers, rewrite it, or
-- drop tables. They connect as a login role that is a member of the group
-- role `sandgnat_service`, which gets here what the service needs and no
-- more: rows of its tables, and only SELECT and INSERT on the audit trail.
-- Migrations keep running as the owner (`database.migrate_url`).

-- Roles are cluster-wide and several databases may be migrated at once
-- (tests do): an advisory lock is per database and does not serialise
-- them, so a concurrent creation is caught instead. An owner without
-- CREATEROLE needs the role made beforehand (the package's post-install
-- does it; README, "Database roles").
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sandgnat_service') THEN
        BEGIN
            CREATE ROLE sandgnat_service NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'the group role sandgnat_service does not exist and % may not create it', current_user
                    USING HINT = 'as a superuser or CREATEROLE role: CREATE ROLE sandgnat_service NOLOGIN; then migrate again';
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO sandgnat_service;

GRANT SELECT, INSERT, UPDATE, DELETE ON api_keys, samples, analyses, jobs, idempotency_keys
    TO sandgnat_service;
-- Evidence: appended and read, never changed (its triggers refuse it for
-- the owner too; this keeps a service role from even trying, and from
-- disabling them, which only an owner may).
GRANT SELECT, INSERT ON analysis_audit_log TO sandgnat_service;
-- `/readyz` and the commands compare the schema's version with the binary's.
GRANT SELECT ON _sqlx_migrations TO sandgnat_service;

GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO sandgnat_service;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO sandgnat_service;

-- Tables a later migration adds get rows for the service by default;
-- one that must be append-only revokes what it must not allow (the test
-- `store::role::tests::every_table_grants_the_service_its_share` lists
-- every table and fails on one it does not know).
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO sandgnat_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO sandgnat_service;
