//! larder-api: the HTTP server as a library. [`server`] opens its state and
//! serves it; [`app::router`] is the route table; errors become HTTP only in
//! [`error`]. The binaries (larder-server) add in-process workers.

pub mod access;
pub mod app;
pub mod attic_import;
pub mod auth;
pub mod body;
pub mod body_rate;
pub mod byte_range;
pub mod cache_catalog;
pub mod cache_control;
pub mod chunk_push;
pub mod client_addr;
pub mod content_encoding;
pub mod error;
pub mod extract;
pub mod http_server;
pub mod metrics;
pub mod nar_url;
pub mod narinfo_signatures;
pub mod narinfo_texts;
pub mod nix_client;
pub mod nix_staging;
pub mod record;
pub mod revocations;
pub mod routes;
pub mod server;
pub mod staging;
pub mod staging_quota;
pub mod state;
pub mod upload_decode;
pub mod upload_meta;
pub mod verified_tokens;
