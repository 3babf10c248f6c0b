-- Several nodes may share this database: each says which one wrote an
-- analysis or an audit row. Every session of a node carries its name
-- (`node.name`) as the setting `sandgnat.node` (`store::lazy_pool`), so
-- whatever inserts the row, on any node, fills the column without naming
-- it; a session without the setting (psql, an older binary) leaves it
-- NULL rather than guessing. The default is set apart from the column,
-- so rows older than this migration stay NULL instead of taking the
-- migrating session's name.
ALTER TABLE analyses ADD COLUMN node text;
ALTER TABLE analyses
    ALTER COLUMN node SET DEFAULT NULLIF(current_setting('sandgnat.node', true), '');
ALTER TABLE analysis_audit_log ADD COLUMN node text;
ALTER TABLE analysis_audit_log
    ALTER COLUMN node SET DEFAULT NULLIF(current_setting('sandgnat.node', true), '');
