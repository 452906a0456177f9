-- Larder schema v1 (PostgreSQL). Mirrors migrations/sqlite/0001_initial.sql.
-- Times are Unix seconds. Hashes are raw bytes. Sized for hundreds of
-- millions of chunks: a chunk costs one narrow row plus two index entries, and
-- a NAR lists its chunks in one compact array instead of a row per chunk.

CREATE TABLE caches (
    id                       BIGSERIAL PRIMARY KEY,
    name                     TEXT NOT NULL UNIQUE,
    -- Nix secret key "name:base64(seed||public)"; never leaves the server.
    keypair                  TEXT NOT NULL,
    is_public                BOOLEAN NOT NULL,
    store_dir                TEXT NOT NULL,
    priority                 BIGINT NOT NULL,
    -- JSON array of key names whose signatures mark upstream paths.
    upstream_cache_key_names TEXT NOT NULL,
    -- Seconds; NULL = the global default; 0 = keep forever.
    retention_period         BIGINT,
    created_at               BIGINT NOT NULL
);

-- One row per distinct NAR (by SHA-256), shared by every cache.
CREATE TABLE nars (
    id           BIGSERIAL PRIMARY KEY,
    nar_hash     BYTEA NOT NULL UNIQUE,
    nar_size     BIGINT NOT NULL,
    -- 'staged': uncompressed at staging_key, waiting for ingest;
    -- 'ready': chunk_list is live; 'broken': verify found damage.
    state        TEXT NOT NULL,
    staging_key  TEXT,
    -- Chunk ids, 8 bytes big-endian each, in NAR order (8 B per chunk per NAR).
    chunk_list   BYTEA,
    num_chunks   BIGINT,
    -- Sum of the compressed chunk sizes: the length of nar/<hash>.nar.zst.
    file_size    BIGINT,
    created_at   BIGINT NOT NULL,
    -- Last state change; the sweeper finds staged NARs whose job was lost.
    updated_at   BIGINT NOT NULL
);
CREATE INDEX nars_unfinished_idx ON nars (updated_at) WHERE state <> 'ready';
CREATE INDEX nars_staging_key_idx ON nars (staging_key) WHERE staging_key IS NOT NULL;

-- The global chunk store. A chunk lives in its own object (pack_id NULL, key
-- derived from the hash) or at (pack_id, pack_offset, file_size) inside a pack.
CREATE TABLE chunks (
    id           BIGSERIAL PRIMARY KEY,
    chunk_hash   BYTEA NOT NULL UNIQUE,
    chunk_size   INTEGER NOT NULL,
    file_size    INTEGER NOT NULL,
    pack_id      BIGINT,
    pack_offset  BIGINT,
    -- Number of ready NARs listing this chunk; maintained in the same
    -- transactions that make a NAR ready or delete it, so no crash leaks it.
    refcount     BIGINT NOT NULL,
    -- When refcount last dropped to zero (GC waits a grace period after it).
    zero_since   BIGINT
);
CREATE INDEX chunks_unreferenced_idx ON chunks (zero_since) WHERE refcount = 0;

-- A store path in one cache.
CREATE TABLE objects (
    id               BIGSERIAL PRIMARY KEY,
    cache_id         BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    store_path_hash  TEXT NOT NULL,
    store_path       TEXT NOT NULL,
    nar_id           BIGINT NOT NULL REFERENCES nars (id),
    -- Base names, space-separated, as narinfo References.
    refs             TEXT NOT NULL,
    deriver          TEXT,
    -- Uploader's signatures, newline-separated.
    sigs             TEXT NOT NULL,
    ca               TEXT,
    system           TEXT,
    created_at       BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL,
    UNIQUE (cache_id, store_path_hash)
);
CREATE INDEX objects_nar_idx ON objects (nar_id);
