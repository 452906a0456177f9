//! Handlers, one file per area; the route table is in `app.rs`.

pub mod binary_cache;
pub mod build_log;
pub mod cache_config;
pub mod cache_file;
pub mod caches;
pub mod chunk_push;
pub mod health;
pub mod listing;
pub mod metrics;
pub mod missing_paths;
pub mod nar;
pub mod nix_narinfo;
pub mod nix_upload;
pub mod oidc;
pub mod realisation;
pub mod upload_path;
