//! The server's integration tests, as one binary: each scenario drives the
//! real router, the worker's jobs and `larder-admin` over SQLite and
//! PostgreSQL (some also over S3). One binary links the whole graph once.
//!
//! - `pipeline`: upload → staged serving → ingest → chunked serving, ranges,
//!   caching headers, the audit trail, first push wins, import from Attic;
//! - `nix_upload`: what stock `nix copy --to http://…` sends;
//! - `gc`: retention, closures, pins, chunk deletion and its races;
//! - `security`: credentials, permissions, hostile input, slow clients,
//!   signing keys at rest.

#[allow(dead_code)] // fixtures for the suites that import from Attic
mod attic_support;
#[allow(dead_code)] // serves every suite; no one suite uses all of it
mod common;

mod gc;
mod nix_upload;
mod pipeline;
mod security;
