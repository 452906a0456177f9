-- Cold recompression (docs/gc.md "Recompression"): GC rewrites packs that
-- have gone cold at `[compression] archive-level`, so a chunk's stored frame
-- (its size and location) can change after NARs listing it were laid out.
-- Mirrors migrations/sqlite/0013_recompression.sql.

-- The zstd level a pack's frames were written at; NULL for packs written
-- before this migration (at the ingest level). Recompression picks packs
-- below the archive level.
ALTER TABLE packs ADD COLUMN level SMALLINT;

-- Bumped by every transaction that changes a chunk's stored size. A NAR's
-- stored layout (chunk_sizes, frames_digest, file_size) is trusted only if
-- computed at the current epoch: one counter instead of a chunk-to-NAR
-- index (a chunk is listed by any number of NARs). A stale layout is
-- recomputed from the chunk rows by the next download.
CREATE TABLE layout_epoch (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO layout_epoch (id, epoch) VALUES (1, 0);

-- The epoch a NAR's layout was computed at (read before the chunk rows it
-- was computed from, so a concurrent change can only make it look stale).
ALTER TABLE nars ADD COLUMN layout_epoch BIGINT NOT NULL DEFAULT 0;

-- A recompressed chunk's previous frame, in the pack it was moved out of
-- (retired, deleted a grace period later): a download that laid the NAR
-- out just before the move still streams the bytes its Content-Length
-- promised. Forgotten after the grace period.
CREATE TABLE replaced_frames (
    chunk_id    BIGINT NOT NULL,
    pack_id     BIGINT NOT NULL,
    pack_offset BIGINT NOT NULL,
    file_size   INTEGER NOT NULL,
    replaced_at BIGINT NOT NULL,
    PRIMARY KEY (chunk_id, pack_id)
);
CREATE INDEX replaced_frames_replaced_at_idx ON replaced_frames (replaced_at);
