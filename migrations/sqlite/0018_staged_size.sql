-- The size of a verified staged copy no NAR row holds yet. Mirrors
-- migrations/postgres/0018_staged_size.sql.
--
-- Recorded with the copy's checksum once the copy is complete and verified
-- (shared/src/db/staging_intents.rs), so the staging quota counts copies
-- that wait for their recording as well as NARs that wait for ingest: a
-- chunk-level push's prepared NAR waits for its publish, a stock
-- `nix copy` NAR for its narinfo. NULL for an upload still streaming and
-- for intents written before this migration.
ALTER TABLE staging_intents ADD COLUMN staged_size BIGINT;
