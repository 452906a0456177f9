-- Build logs and realisations (docs/protocol.md "Build logs and
-- realisations"): small documents Nix uploads beside its NARs, kept per
-- cache and expired by GC with the cache's retention like idle paths.
-- Mirrors migrations/postgres/0014_build_logs_realisations.sql.

-- `PUT /{cache}/log/<drv>`: the log, zstd-compressed. size is its
-- uncompressed length (bounded by [http] max-log-size), stored_size the
-- blob's. used_at: the last upload or read, which retention counts from.
CREATE TABLE build_logs (
    cache_id    BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    drv_name    TEXT NOT NULL,
    log_zstd    BLOB NOT NULL,
    size        BIGINT NOT NULL,
    stored_size BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    used_at     BIGINT NOT NULL,
    PRIMARY KEY (cache_id, drv_name)
);
CREATE INDEX build_logs_used_at_idx ON build_logs (used_at);

-- `realisations/<id>.doi` and `build-trace-v2/<drv>/<output>.doi`: the
-- uploaded JSON as it came (opaque, signed by the uploader), keyed by its
-- path under the cache. out_path_hash: the store path hash of the output
-- its `outPath` names, which it is kept with; NULL when it names none
-- (kept by its own use, like a log).
CREATE TABLE realisations (
    cache_id      BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    doc_path      TEXT NOT NULL,
    document      BLOB NOT NULL,
    out_path_hash TEXT,
    created_at    BIGINT NOT NULL,
    used_at       BIGINT NOT NULL,
    PRIMARY KEY (cache_id, doc_path)
);
CREATE INDEX realisations_used_at_idx ON realisations (used_at);
CREATE INDEX realisations_out_path_idx ON realisations (cache_id, out_path_hash);
