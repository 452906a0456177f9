-- Chunk packs (docs/architecture.md "Packs"): many chunks' zstd frames back to
-- back in one storage object, packs/<id>, with an index of what it holds at
-- its end. A chunk row locates its frame by (pack_id, pack_offset, file_size);
-- chunks stored one per object before packs keep pack_id NULL.
-- Mirrors migrations/sqlite/0011_packs.sql.

-- One row per pack some committed chunk row has named. The writer chooses
-- the id (time-ordered, random low bits), so a pack needs no row before its
-- first commit; until then its write intent (chunk_intents, key packs/<id>)
-- is what records it. live_chunks/live_bytes count the chunk rows located
-- in it and their stored bytes, changed in the transactions that insert,
-- delete or move those rows: size - live_bytes is dead space, what
-- compaction reclaims. retired_at: when compaction moved its last live
-- chunk out; the object is deleted a grace period later.
CREATE TABLE packs (
    id          BIGINT PRIMARY KEY,
    size        BIGINT NOT NULL,
    chunks      BIGINT NOT NULL,
    live_chunks BIGINT NOT NULL DEFAULT 0,
    live_bytes  BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);

-- The chunks a pack holds: what a deleter checks before deleting a pack
-- object, and what compaction moves. Partial, so legacy one-object chunks
-- cost nothing; refcount stays outside every index (HOT updates).
CREATE INDEX chunks_pack_id_idx ON chunks (pack_id) WHERE pack_id IS NOT NULL;

-- Pack ids, handed out once each across every worker of the cluster (never
-- reused, also after a crash), so two writers never share a key.
CREATE TABLE pack_ids (
    id BIGSERIAL PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- Chunk objects `larder-admin repack` moved into packs: no row names them
-- any more, and GC deletes them (through the deletion protocol) once older
-- than the grace period, so downloads that read the old location finish.
CREATE TABLE retired_objects (
    object_key TEXT PRIMARY KEY,
    retired_at BIGINT NOT NULL
);
