-- The lease token becomes a random secret issued per claim (it was the
-- attempt number, which any bridge key could guess). Only its SHA-256 is
-- kept, as for API keys: a database reader cannot act as a holder.
ALTER TABLE jobs ADD COLUMN lease_token_hash bytea
    CHECK (lease_token_hash IS NULL OR length(lease_token_hash) = 32);
-- Jobs running when this applies have no hash: their holders' calls are
-- refused and the lease runs out into a retry, as for a lost holder.
