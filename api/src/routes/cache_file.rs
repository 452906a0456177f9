//! `PUT /{cache}/nix-cache-info` and `PUT /{cache}/{file}`: the small files
//! stock `nix copy` writes beside its NARs, dispatched by name.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use larder_core::nix::store_path::StorePathHash;

use crate::auth::{CacheAccess, Push};
use crate::body::read_limited;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::routes::{listing, nix_narinfo};
use crate::state::AppState;

/// Largest `nix-cache-info` body read (and ignored).
const MAX_CACHE_INFO: usize = 64 * 1024;

/// `PUT /{cache}/nix-cache-info` (`w`): Nix 2.8 writes it when its GET of
/// the file fails. A no-op for an existing cache; never creates one.
pub async fn put_nix_cache_info(_access: CacheAccess<Push>, body: Body) -> ApiResult<StatusCode> {
    read_limited(body, MAX_CACHE_INFO, "nix-cache-info").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /{cache}/{file}` (`w`): `<storehash>.narinfo` or `<storehash>.ls`,
/// decoded as their `Content-Encoding` says.
pub async fn put(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let parse = |h: &str| {
        h.parse::<StorePathHash>()
            .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))
    };
    if let Some(hash) = file.strip_suffix(".narinfo") {
        return nix_narinfo::put(&state, &access, parse(hash)?, &headers, body).await;
    }
    if let Some(hash) = file.strip_suffix(".ls") {
        return listing::put(&state, &access, parse(hash)?, &headers, body).await;
    }
    Err(ApiError::NotFound)
}
