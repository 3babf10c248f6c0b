-- The read side (lookups, lists, the change feed). Every filter of
-- GET /v1/analyses and every lookup is served by an index, and every
-- change to an analysis is stamped with the transaction that made it.

-- The feed's position: the id of the transaction that last changed the
-- row, then the row's id. Transaction ids are handed out in order, and
-- every transaction below a snapshot's xmin has ended, so a reader that
-- only takes rows below the xmin of its snapshot never passes over a
-- change that commits later (a long transaction stamps its rows with its
-- own, older id, and holds the xmin down until it ends).
ALTER TABLE analyses ADD COLUMN change_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX analyses_change_idx ON analyses (change_xid, id);

CREATE FUNCTION analyses_stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER analyses_stamp_change
    BEFORE UPDATE ON analyses
    FOR EACH ROW EXECUTE FUNCTION analyses_stamp_change();

-- Lookups by the other two hashes.
CREATE INDEX samples_sha1_idx ON samples (sha1);
CREATE INDEX samples_md5_idx ON samples (md5);

-- Lists are newest first; each equality filter leads an index that
-- already holds that order, so a page is a short index range.
DROP INDEX analyses_sample_idx;
CREATE INDEX analyses_sample_idx ON analyses (sample_sha256, created_at, id);
CREATE INDEX analyses_status_idx ON analyses (status, created_at, id);
CREATE INDEX analyses_tlp_idx ON analyses (tlp, created_at, id);
CREATE INDEX analyses_key_idx ON analyses (api_key_id, created_at, id);
-- Containment filters: a tag, a YARA rule name (`[{"rule": "X"}]`).
CREATE INDEX analyses_tags_idx ON analyses USING gin (tags);
CREATE INDEX analyses_yara_idx ON analyses USING gin (yara_matches jsonb_path_ops);
