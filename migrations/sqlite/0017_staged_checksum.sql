-- The checksum of a staged copy (XXH3-64 of its bytes, shared/src/storage/
-- checksum.rs). Mirrors migrations/postgres/0017_staged_checksum.sql.
--
-- The upload that stages a NAR verifies its NarHash and computes the
-- checksum over the same bytes, recording it with the copy's staging intent
-- once the copy is complete; the transaction that records the NAR copies it
-- to the nars row along with the staging key. The ingest then checks the
-- copy it reads against the checksum instead of hashing it with SHA-256
-- again. NULL for copies staged before this migration (and for a row not
-- staged): their ingest keeps the SHA-256 check.
ALTER TABLE staging_intents ADD COLUMN staged_checksum BIGINT;
ALTER TABLE nars ADD COLUMN staged_checksum BIGINT;
