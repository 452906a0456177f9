//! The JSON of the Attic/Larder push API under `/_api/v1` (docs/protocol.md,
//! "Attic wire format"), one definition for the server that answers and the
//! `larder` client that asks, so the two cannot drift apart.
//!
//! These are the plain JSON shapes (strings, numbers, options): the server
//! validates them into its own types after parsing, and the client stays
//! lenient where a newer server may say more (unknown fields are ignored
//! everywhere; unknown upload kinds are [`UploadKind::Other`]).

pub mod cache_config;
pub mod caches;
pub mod chunk_push;
pub mod error;
pub mod missing_paths;
pub mod oidc;
pub mod upload;

pub use cache_config::{CacheConfig, KeypairConfig, RetentionPeriodConfig};
pub use caches::{CacheStats, CacheSummary, Pin, PinRequest};
pub use error::ErrorBody;
pub use missing_paths::{GetMissingPathsRequest, GetMissingPathsResponse};
pub use oidc::{OidcExchangeRequest, OidcExchangeResponse};
pub use upload::{UploadKind, UploadPathNarInfo, UploadPathResult};
