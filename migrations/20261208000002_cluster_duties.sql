-- Work that runs once across every node sharing this database (queue
-- maintenance, retention: `duties`), done by the process that holds the
-- cluster's lead (`store::lead`). One row per duty: who ran it last and
-- when, so that a node taking the lead over runs each duty when it falls
-- due, not a whole interval later; and a row `lead`: who took the lead
-- last, and when. The service reads and writes these rows (the default
-- privileges of 20261205000004 grant it).
CREATE TABLE cluster_duties (
    duty     text        PRIMARY KEY,
    node     text        NOT NULL,
    pid      integer     NOT NULL,
    at       timestamptz NOT NULL,
    outcome  jsonb       NOT NULL DEFAULT '{}'
);
