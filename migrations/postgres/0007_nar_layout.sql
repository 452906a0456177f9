-- What serving a ready NAR needs, stored in its row at ingest (issue 18), so
-- a download reads one nars row instead of every chunk row before its first
-- byte. Both NULL for NARs ingested before this migration (and while staged
-- or broken): the API then loads the chunk rows and backfills them.
-- Mirrors migrations/sqlite/0007_nar_layout.sql.

-- Per chunk in NAR order, 8 bytes: uncompressed size (u32 big-endian), then
-- stored zstd frame size (u32 big-endian). A range seeks by these sums.
ALTER TABLE nars ADD COLUMN chunk_sizes BYTEA;
-- SHA-256 over each chunk's (hash, stored size, pack id, pack offset) in NAR
-- order: the .nar.zst ETag, exactly as computed from the chunk rows.
ALTER TABLE nars ADD COLUMN frames_digest BYTEA;
