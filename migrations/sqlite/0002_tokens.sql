-- Tokens minted by larder-admin, and revocations (Attic has none).
-- Mirrors migrations/postgres/0002_tokens.sql.

CREATE TABLE tokens (
    jti          TEXT PRIMARY KEY,
    subject      TEXT NOT NULL,
    -- The `https://jwt.attic.rs/v1` claim as JSON, in the token's order.
    permissions  TEXT NOT NULL,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX tokens_subject_idx ON tokens (subject);

-- One row per revocation: a single token (jti), or every token of a subject
-- issued before `issued_before`. `expires_at` bounds how long the row matters.
CREATE TABLE token_revocations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    jti           TEXT,
    subject       TEXT,
    issued_before BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT NOT NULL
);
