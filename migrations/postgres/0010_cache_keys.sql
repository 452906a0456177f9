-- Signing keys at rest and rotation (issue 19 items 4, 5). Mirrors
-- migrations/sqlite/0010_cache_keys.sql.
--
-- A cache has one or more signing keys; narinfos carry a signature of every
-- active key (retires_at NULL or in the future), newest first. A key's secret
-- is either sealed with the key-encryption key ("v1:…", see
-- shared/src/signing_keys/kek.rs) or lives in a file on the server
-- (key_file). Once retired, both are cleared: the row keeps only the name and
-- public key (so stale signatures of that name are never republished).
CREATE TABLE cache_keys (
    id          BIGSERIAL PRIMARY KEY,
    cache_id    BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    key_name    TEXT NOT NULL,
    -- "name:base64(32 bytes)"; '' only for a row this migration copied, until
    -- the start-up step fills it.
    public_key  TEXT NOT NULL,
    -- "v1:base64(nonce||ciphertext)"; "plain:<name>:<base64>" only between
    -- this migration and the next start of a Larder process with the KEK.
    secret      TEXT,
    key_file    TEXT,
    created_at  BIGINT NOT NULL,
    retires_at  BIGINT,
    UNIQUE (cache_id, key_name)
);

-- The plain keys move here marked "plain:"; SQL cannot encrypt them, so every
-- Larder process seals them with the KEK when it opens the database
-- (shared/src/signing_keys/at_rest.rs), then rewrites the tables so no plain
-- bytes stay behind (VACUUM FULL zeroes the dropped column too).
INSERT INTO cache_keys (cache_id, key_name, public_key, secret, created_at)
SELECT id, split_part(keypair, ':', 1), '', 'plain:' || keypair, created_at
FROM caches ORDER BY id;

ALTER TABLE caches DROP COLUMN keypair;
