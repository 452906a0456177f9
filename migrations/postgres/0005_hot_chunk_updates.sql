-- Reference-count changes must not touch any index, so PostgreSQL can update
-- chunk rows in place (HOT) instead of adding index entries on every push:
-- `refcount` leaves every index and predicate, and unreferenced chunks
-- (including those being deleted, refcount = -1) are found through
-- `zero_since`, which is set only while a chunk has no reference.
-- Mirrors migrations/sqlite/0005_hot_chunk_updates.sql.
DROP INDEX chunks_unreferenced_idx;
DROP INDEX chunks_deleting_idx;
CREATE INDEX chunks_unreferenced_idx ON chunks (zero_since) WHERE zero_since IS NOT NULL;
