-- Trust policies for CI identity tokens added by `larder-admin oidc add`
-- (docs/operations.md "Secretless CI with OIDC"); those of the config file
-- are not stored. Tokens minted by an exchange are recorded in `tokens`.
-- Mirrors migrations/postgres/0015_oidc_policies.sql.

CREATE TABLE oidc_policies (
    name         TEXT PRIMARY KEY,
    issuer       TEXT NOT NULL,
    audience     TEXT NOT NULL,
    -- Claim name -> pattern or list of patterns, as JSON.
    claims       TEXT NOT NULL,
    -- The minted token's `https://jwt.attic.rs/v1` caches claim, as JSON.
    permissions  TEXT NOT NULL,
    -- Seconds.
    max_validity BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
