//! `POST /_api/v1/get-missing-paths`: which of these paths the cache lacks.

use axum::Json;
use axum::extract::State;

use larder_core::nix::store_path::StorePathHash;
use larder_core::wire::{GetMissingPathsRequest, GetMissingPathsResponse};
use larder_shared::db::chunks::BATCH;
use larder_shared::db::{objects, unix_now};
use larder_shared::retention::Retention;

use crate::auth::{Credentials, Need, Push};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::AppState;

/// Most hashes accepted per request.
pub const MAX_HASHES: usize = 100_000;

/// The handler; needs `w` (it answers a pusher's question). Paths found
/// present are marked used.
pub async fn get_missing_paths(
    State(state): State<AppState>,
    credentials: Credentials,
    JsonBody(req): JsonBody<GetMissingPathsRequest>,
) -> ApiResult<Json<GetMissingPathsResponse>> {
    let name = req
        .cache
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid cache name: {e}")))?;
    if req.store_path_hashes.len() > MAX_HASHES {
        return Err(ApiError::PayloadTooLarge(format!(
            "at most {MAX_HASHES} hashes per request"
        )));
    }
    let hashes = req
        .store_path_hashes
        .iter()
        .map(|h| h.parse::<StorePathHash>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))?;
    let cache = credentials.authorize(&state, &name, Push::ANY_OF).await?;
    // A path found present counts as used (synchronously, before it is
    // reported present): the pusher is about to upload paths that refer to
    // it, so GC must not expire it meanwhile (docs/gc.md "Closures").
    let now = unix_now();
    let touch = Retention::of(&cache, &state.config.garbage_collection)
        .refresh_before(now)
        .map(|older_than| (now, older_than));
    let mut conn = state.db.conn().await?;
    let mut missing = Vec::new();
    for batch in hashes.chunks(BATCH) {
        missing.extend(objects::missing(conn.raw(), cache.id, batch, touch).await?);
    }
    Ok(Json(GetMissingPathsResponse {
        missing_paths: missing.iter().map(|h| h.to_string()).collect(),
    }))
}
