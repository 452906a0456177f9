//! larder-core: the formats every Larder program agrees on, and nothing
//! that does I/O.
//!
//! Nix's own formats (`nix`), cache names, and (in `wire`) the JSON of the
//! Attic/Larder push API. No database, job queue, RSA or async runtime: the
//! `larder` client and the fuzz targets link this crate alone, and the
//! server-side crates build on it (nix-compat's place in snix).

pub mod cache_name;
pub mod chunk;
pub mod nix;
pub mod wire;

pub use cache_name::CacheName;
