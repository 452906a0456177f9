-- Closure-aware retention (issue 19): a path stays while a live path of its
-- cache references it. This reverse index answers "does any remaining object
-- of this cache refer to X?" with one index lookup, so GC's DELETE can
-- re-check it per row. One row per (cache, referenced hash part, referrer);
-- self-references are left out. References may name paths the cache does not
-- hold (from cache.nixos.org): ref_hash is never a foreign key.
-- Written in the transaction that writes the object (objects::upsert).
-- Mirrors migrations/postgres/0008_object_refs.sql.

CREATE TABLE object_refs (
    cache_id  BIGINT NOT NULL,
    -- Hash part (32 characters) of a referenced store path.
    ref_hash  TEXT NOT NULL,
    object_id BIGINT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    PRIMARY KEY (cache_id, ref_hash, object_id)
) WITHOUT ROWID;
-- The cascade (and replacing an object's references) finds rows by referrer.
CREATE INDEX object_refs_object_idx ON object_refs (object_id);

-- GC's mark reads one cache's objects in id pages.
CREATE INDEX objects_cache_id_idx ON objects (cache_id, id);

-- Existing objects: split each space-separated refs list (a linear
-- recursive split per row; SQLite has no unnest).
WITH RECURSIVE split (object_id, cache_id, self, rest, name) AS (
    SELECT id, cache_id, store_path_hash, refs || ' ', NULL FROM objects
    UNION ALL
    SELECT object_id, cache_id, self,
           substr(rest, instr(rest, ' ') + 1),
           substr(rest, 1, instr(rest, ' ') - 1)
    FROM split WHERE rest <> ''
)
INSERT OR IGNORE INTO object_refs (cache_id, ref_hash, object_id)
SELECT cache_id, substr(name, 1, 32), object_id FROM split
WHERE name IS NOT NULL AND length(name) >= 32 AND substr(name, 1, 32) <> self;
