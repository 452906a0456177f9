-- Closure-aware retention (issue 19): a path stays while a live path of its
-- cache references it. This reverse index answers "does any remaining object
-- of this cache refer to X?" with one index lookup, so GC's DELETE can
-- re-check it per row. One row per (cache, referenced hash part, referrer);
-- self-references are left out. References may name paths the cache does not
-- hold (from cache.nixos.org): ref_hash is never a foreign key.
-- Written in the transaction that writes the object (objects::upsert).
-- Mirrors migrations/sqlite/0008_object_refs.sql.

CREATE TABLE object_refs (
    cache_id  BIGINT NOT NULL,
    -- Hash part (32 characters) of a referenced store path.
    ref_hash  TEXT NOT NULL,
    object_id BIGINT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    PRIMARY KEY (cache_id, ref_hash, object_id)
);
-- The cascade (and replacing an object's references) finds rows by referrer.
CREATE INDEX object_refs_object_idx ON object_refs (object_id);

-- GC's mark reads one cache's objects in id pages.
CREATE INDEX objects_cache_id_idx ON objects (cache_id, id);

-- Existing objects: one pass, no recursion.
INSERT INTO object_refs (cache_id, ref_hash, object_id)
SELECT DISTINCT o.cache_id, left(r.name, 32), o.id
FROM objects o, unnest(string_to_array(o.refs, ' ')) AS r(name)
WHERE length(r.name) >= 32 AND left(r.name, 32) <> o.store_path_hash
ON CONFLICT DO NOTHING;
