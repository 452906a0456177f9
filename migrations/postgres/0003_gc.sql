-- Garbage collection, pins and cluster-wide leases.
-- Mirrors migrations/sqlite/0003_gc.sql.

-- Expiry scans objects of one cache by last activity (push or access;
-- last_accessed_at is kept >= created_at).
CREATE INDEX objects_expiry_idx ON objects (cache_id, last_accessed_at);

-- A named pin keeps a path and its closure in that cache from expiring.
CREATE TABLE pins (
    cache_id        BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    store_path_hash TEXT NOT NULL,
    store_path      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (cache_id, name)
);

-- Leases make periodic jobs run once cluster-wide: a holder owns the lease
-- until expires_at (renewed while working); a dead holder's lease lapses.
CREATE TABLE leases (
    name             TEXT PRIMARY KEY,
    holder           TEXT,
    expires_at       BIGINT NOT NULL,
    last_finished_at BIGINT
);

-- Chunks being deleted (refcount = -1) are finished first by the next GC.
CREATE INDEX chunks_deleting_idx ON chunks (id) WHERE refcount < 0;
