-- Attic's current schema on PostgreSQL (zhaofengli/attic server/src/database/migration),
-- written out as SQL; shared by server/tests and the e2e crate.
CREATE TABLE cache (
  id BIGSERIAL PRIMARY KEY, name VARCHAR(50) NOT NULL UNIQUE, keypair VARCHAR NOT NULL,
  is_public BOOLEAN NOT NULL, store_dir VARCHAR NOT NULL, priority INTEGER NOT NULL,
  upstream_cache_key_names VARCHAR NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
  deleted_at TIMESTAMP WITH TIME ZONE NULL, retention_period INTEGER NULL);
CREATE INDEX "idx-cache-name" ON cache (name);
CREATE TABLE nar (
  id BIGSERIAL PRIMARY KEY, state CHAR(1) NOT NULL, nar_hash VARCHAR NOT NULL,
  nar_size BIGINT NOT NULL, compression VARCHAR NOT NULL, num_chunks INTEGER NOT NULL,
  completeness_hint BOOLEAN NOT NULL DEFAULT TRUE, holders_count INTEGER NOT NULL DEFAULT 0,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL);
CREATE INDEX "idx-nar-nar-hash" ON nar (nar_hash);
CREATE TABLE object (
  id BIGSERIAL PRIMARY KEY,
  cache_id BIGINT NOT NULL REFERENCES cache (id) ON DELETE CASCADE,
  nar_id BIGINT NOT NULL REFERENCES nar (id) ON DELETE CASCADE,
  store_path_hash VARCHAR(32) NOT NULL, store_path VARCHAR NOT NULL, "references" VARCHAR NOT NULL,
  system VARCHAR, deriver VARCHAR, sigs VARCHAR NOT NULL, ca VARCHAR,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL, last_accessed_at TIMESTAMP WITH TIME ZONE NULL,
  created_by VARCHAR NULL);
CREATE UNIQUE INDEX "idx-object-cache-hash" ON object (cache_id, store_path_hash);
CREATE TABLE chunk (
  id BIGSERIAL PRIMARY KEY, state CHAR(1) NOT NULL, chunk_hash VARCHAR NOT NULL,
  chunk_size BIGINT NOT NULL, file_hash VARCHAR NULL, file_size BIGINT NULL,
  compression VARCHAR NOT NULL, remote_file VARCHAR NOT NULL, remote_file_id VARCHAR NOT NULL UNIQUE,
  holders_count INTEGER NOT NULL DEFAULT 0, created_at TIMESTAMP WITH TIME ZONE NOT NULL);
CREATE INDEX "idx-chunk-chunk-hash" ON chunk (chunk_hash);
CREATE TABLE chunkref (
  id BIGSERIAL PRIMARY KEY,
  nar_id BIGINT NOT NULL REFERENCES nar (id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  chunk_id BIGINT NULL REFERENCES chunk (id) ON DELETE SET NULL,
  chunk_hash VARCHAR NOT NULL, compression VARCHAR NOT NULL);
CREATE INDEX "idx-chunkref-nar-id" ON chunkref (nar_id);
