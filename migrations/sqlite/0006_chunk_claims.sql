-- Write intents and deletion claims on storage objects (docs/gc.md, "Who may
-- delete an object"). Each side commits its own row before reading the
-- other's, so of an ingest writing an object and a deleter removing the same
-- key, at least one sees the other and backs off. Keys are object keys (not
-- chunk hashes), so packs holding many chunks per object use the same tables.
-- Mirrors migrations/postgres/0006_chunk_claims.sql.

-- An ingest (owner: one id per run) is about to write, or has written, the
-- object and has not committed the row that names it yet. updated_at is
-- refreshed by the ingest's heartbeat; an intent older than the grace period
-- belongs to a dead writer, and GC deletes its object (if no row needs it).
CREATE TABLE chunk_intents (
    object_key TEXT NOT NULL,
    owner      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (object_key, owner)
);
CREATE INDEX chunk_intents_owner_idx ON chunk_intents (owner);

-- A deleter (GC or verify, under the GC lease) is about to delete the object.
-- A claim outlives a crash and is finished by the next GC.
CREATE TABLE chunk_deletions (
    object_key TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
