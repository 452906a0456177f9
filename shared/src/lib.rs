//! larder-shared: everything the API server, the workers and the CLIs agree on.
//!
//! Layers depend one way: `nix` (formats) and `storage` know nothing of the
//! database; `db` knows the formats; `config` ties settings together.

pub mod audit;
pub mod bootstrap;
pub mod cache_name;
pub mod chunk;
pub mod config;
pub mod db;
pub mod jobs;
pub mod nix;
pub mod retention;
pub mod signing_keys;
pub mod storage;
pub mod token;

pub use cache_name::CacheName;
