-- The chunk list a staged copy was verified as, when a chunk-level push
-- committed it. Mirrors migrations/sqlite/0019_staged_chunks.sql.
--
-- A chunk-level push's commit verifies the NAR over the chunk sequence the
-- client cut (shared/src/db/staged_chunks.rs: 32-byte SHA-256 and 4-byte
-- size per chunk); it is recorded with the copy's checksum on its staging
-- intent, and the transaction that records the NAR copies it to the nars
-- row, as it does the checksum. The ingest then takes the chunks from the
-- list instead of cutting and hashing the staged copy again: it reads only
-- the chunks the store lacks. Cleared when the NAR is ready; NULL for
-- copies uploaded whole (their ingest cuts them).
ALTER TABLE staging_intents ADD COLUMN staged_chunks BYTEA;
ALTER TABLE nars ADD COLUMN staged_chunks BYTEA;
