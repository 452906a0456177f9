-- Audit trail (issue 19 item 3): who pushed, deleted, replaced, configured,
-- minted, revoked; what each GC pass deleted. Append-only: Larder's code
-- only ever inserts into audit_log (an operator-run
-- `larder-admin audit --prune-before` is the one DELETE).
-- Mirrors migrations/postgres/0009_audit.sql.

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    -- 'push', 'replace', 'delete', 'cache-create', … (shared/src/audit.rs).
    kind        TEXT NOT NULL,
    -- The cache's name, not its id: the log outlives a destroyed cache.
    cache       TEXT,
    -- Who: a token's subject and id, or the operator/process for CLI and GC.
    subject     TEXT,
    jti         TEXT,
    client_addr TEXT,
    store_path  TEXT,
    -- `sha256:<nix-base32>`, as narinfo prints it.
    nar_hash    TEXT,
    -- Kind-specific fields as a JSON object; never a token or a secret key.
    detail      TEXT NOT NULL
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_subject_idx ON audit_log (subject, at);
CREATE INDEX audit_log_cache_idx ON audit_log (cache, at);

-- Who pushed the path (a token's subject; Attic's created_by on import);
-- NULL for paths pushed before this migration.
ALTER TABLE objects ADD COLUMN created_by TEXT;

-- Last time a request carried the token, written at most once per token per
-- `[access] flush-interval` per API replica; NULL = never seen.
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
