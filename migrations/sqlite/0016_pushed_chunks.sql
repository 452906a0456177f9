-- Chunks sent by chunk-level push (docs/protocol.md "Chunk-level push") and
-- not yet expired. Mirrors migrations/postgres/0016_pushed_chunks.sql.
--
-- A batch of verified zstd frames is one staging object (object_key); each
-- row locates one frame in it. A row counts as present only for the same
-- pusher (token subject) pushing to the same cache, never for anyone else:
-- no cross-tenant oracle. Rows of one object share created_at; the sweeper
-- deletes them once older than the GC grace period, handing the object to a
-- staging intent in the same transaction, then deletes the object. No
-- foreign key to caches: a destroyed cache's rows still expire and free
-- their objects.
CREATE TABLE pushed_chunks (
    cache_id     BIGINT NOT NULL,
    pusher       TEXT NOT NULL,
    chunk_hash   BLOB NOT NULL,
    object_key   TEXT NOT NULL,
    frame_offset BIGINT NOT NULL,
    frame_len    BIGINT NOT NULL,
    chunk_size   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (cache_id, pusher, chunk_hash)
);
CREATE INDEX pushed_chunks_created_idx ON pushed_chunks (created_at);
CREATE INDEX pushed_chunks_object_idx ON pushed_chunks (object_key);
