//! larder-shared: the server side's I/O, shared by the API, the workers and
//! `larder-admin` (configuration, tokens, chunking, storage, the database,
//! job payloads). The formats it stores live in `larder-core`.
//!
//! Layers depend one way: `storage` knows nothing of the database; `db`
//! knows the formats; `config` ties settings together.

pub mod audit;
pub mod background;
pub mod bootstrap;
pub mod chunk;
pub mod chunk_store;
pub mod config;
pub mod db;
pub mod jobs;
pub mod metrics;
pub mod oidc;
pub mod pack;
pub mod retention;
pub mod signing_keys;
pub mod storage;
pub mod token;
