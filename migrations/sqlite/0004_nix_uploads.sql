-- Uploads from stock `nix copy --to http://…` (issue 4) and NAR listings
-- (issue 4, item 5). Mirrors migrations/postgres/0004_nix_uploads.sql.

-- A NAR file PUT to `nar/<file>` whose narinfo has not arrived yet. Nix 2.8
-- uploads the (compressed) NAR first, then the narinfo naming it by URL.
CREATE TABLE nix_uploads (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    -- No foreign key: a destroyed cache's rows simply expire.
    cache_id     BIGINT NOT NULL,
    -- The URL's last segment, `<filehash>.nar[.xz|.zst|…]`.
    file_name    TEXT NOT NULL,
    -- SHA-256 and size of the file as uploaded (narinfo FileHash, FileSize).
    file_hash    BLOB NOT NULL,
    file_size    BIGINT NOT NULL,
    -- Detected from the bytes; Nix's name (`xz`, `zstd`, `none`, …).
    compression  TEXT NOT NULL,
    -- The decompressed NAR.
    nar_hash     BLOB NOT NULL,
    nar_size     BIGINT NOT NULL,
    -- Decompressed copy under `staging/`; NULL when the NAR was already stored.
    staging_key  TEXT,
    -- The file as uploaded (`uploads/…`); NULL for compression `none`, which
    -- Larder's own `nar/<narhash>.nar` serves.
    upload_key   TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (cache_id, file_name)
);
CREATE INDEX nix_uploads_file_hash_idx ON nix_uploads (file_hash);
CREATE INDEX nix_uploads_created_idx ON nix_uploads (created_at);

-- The URL an uploader used, kept answering in its compression until
-- expires_at, because Nix 2.8 caches the narinfo it uploaded (30 days) and
-- fetches that URL directly.
CREATE TABLE nix_upload_urls (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Set to NULL when the path leaves the cache: the URL stops answering at
    -- once and the sweeper deletes the row (and the file, once unused).
    object_id    BIGINT REFERENCES objects (id) ON DELETE SET NULL,
    cache_id     BIGINT NOT NULL,
    file_name    TEXT NOT NULL,
    file_hash    BLOB NOT NULL,
    file_size    BIGINT NOT NULL,
    compression  TEXT NOT NULL,
    nar_hash     BLOB NOT NULL,
    nar_size     BIGINT NOT NULL,
    upload_key   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    UNIQUE (object_id, file_name)
);
CREATE INDEX nix_upload_urls_file_idx ON nix_upload_urls (cache_id, file_name);
CREATE INDEX nix_upload_urls_file_hash_idx ON nix_upload_urls (file_hash);
CREATE INDEX nix_upload_urls_key_idx ON nix_upload_urls (upload_key);
CREATE INDEX nix_upload_urls_expiry_idx ON nix_upload_urls (expires_at);
CREATE INDEX nix_upload_urls_orphan_idx ON nix_upload_urls (created_at) WHERE object_id IS NULL;
CREATE INDEX nix_uploads_key_idx ON nix_uploads (upload_key);

-- `<storehash>.ls` as an uploader wrote it (`write-nar-listing=true`), per
-- cache. nar_hash is NULL until the path's narinfo arrives; the listing is
-- served only while the path's NAR has that hash.
CREATE TABLE nix_listings (
    cache_id         BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    store_path_hash  TEXT NOT NULL,
    nar_hash         BLOB,
    listing          BLOB NOT NULL,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (cache_id, store_path_hash)
);
CREATE INDEX nix_listings_created_idx ON nix_listings (created_at);

-- Listings Larder generated from a NAR (a function of the NAR, so shared by
-- every cache holding it); made on first request.
CREATE TABLE nar_listings (
    nar_id      BIGINT PRIMARY KEY REFERENCES nars (id) ON DELETE CASCADE,
    listing     BLOB NOT NULL,
    created_at  BIGINT NOT NULL
);
