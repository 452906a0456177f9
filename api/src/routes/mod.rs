//! Handlers, one file per area; the route table is in `app.rs`.

pub mod binary_cache;
pub mod cache_config;
pub mod caches;
pub mod health;
pub mod missing_paths;
pub mod upload_path;
