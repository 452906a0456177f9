-- Staging objects no row holds (docs/gc.md "Staging objects"), so that the
-- sweeper finds abandoned ones through the database instead of listing
-- staging/ every minute (issue 11). Mirrors migrations/postgres/0012_staging_intents.sql.
--
-- A table of its own rather than chunk_intents with an owner 'staging': a
-- staging object is held by a nars row (not a chunk row), expires after
-- [staging] max-age (not the GC grace period) and is deleted by every
-- worker's sweeper without the GC lease. In chunk_intents, GC would take a
-- stale one for an interrupted chunk write and check only chunk rows.
--
-- A row is committed before the upload writes the object's first byte, and
-- deleted in the transaction that commits the nars row naming the key (the
-- row then keeps the object) or, once the object is deleted, by whoever
-- deleted it. deleting_at is set when a holder lets the key go (an ingest
-- finished with the staged copy, GC deleted its NAR) or the sweeper takes
-- it as abandoned (created_at older than max-age): no row may name the key
-- after that, its commit fails instead, and the next sweep finishes the
-- deletion if its deleter died.
CREATE TABLE staging_intents (
    object_key  TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    deleting_at BIGINT
);
CREATE INDEX staging_intents_created_idx ON staging_intents (created_at)
    WHERE deleting_at IS NULL;
CREATE INDEX staging_intents_deleting_idx ON staging_intents (deleting_at)
    WHERE deleting_at IS NOT NULL;

-- Pending `nix copy` uploads staged before this migration: their copies get
-- intents now, so the narinfo that records them can take them over.
INSERT INTO staging_intents (object_key, created_at)
    SELECT staging_key, MIN(created_at) FROM nix_uploads
    WHERE staging_key IS NOT NULL GROUP BY staging_key;
