//! Chunk-level push, `/_api/larder/v1/caches/{cache}/…` (docs/protocol.md
//! "Chunk-level push"); each route needs `w`, and every one answers 404
//! while `[chunk-push] enabled = false`, which is how `larder push` tells a
//! server without it (and falls back to `upload-path`).
//!
//! - `GET chunk-push`: the cache's chunking parameters and the limits.
//! - `POST chunks/missing`: which of a NAR's chunks the client must send.
//! - `POST chunks`: a batch of zstd frames, verified, kept for a grace period.
//! - `POST nars`: the NAR as its chunk list, verified whole, then recorded
//!   as an upload-path upload is.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use futures::TryStreamExt;
use tracing::instrument;

use larder_core::chunk::ChunkHash;
use larder_core::nix::store_path::StorePath;
use larder_core::wire::chunk_push::{
    ChunkBatchResponse, ChunkParamsResponse, CommitNarRequest, MissingChunksRequest,
    MissingChunksResponse,
};
use larder_core::wire::{UploadKind, UploadPathResult};
use larder_shared::audit::PushRoute;
use larder_shared::db::caches::CacheRecord;
use larder_shared::token::Permission;

use crate::auth::{CacheAccess, Push};
use crate::body::read_limited;
use crate::chunk_push::presence::{self, Asker};
use crate::chunk_push::{assemble, batch, pusher};
use crate::error::{ApiError, ApiResult};
use crate::routes::upload_path::{self, BodyStream};
use crate::state::AppState;

/// Most chunk hashes in one missing-chunks request (a 1 MiB JSON body).
const MAX_MISSING: usize = 10_000;
/// Most chunks in one commit: 32 GiB of NAR at the default 64 KiB average.
const MAX_COMMIT: usize = 500_000;
/// Largest missing-chunks request body.
const MISSING_BODY: usize = 2 * 1024 * 1024;
/// Largest commit body (metadata and chunk list).
const COMMIT_BODY: usize = 40 * 1024 * 1024;

/// 404 unless chunk push is enabled.
fn enabled(state: &AppState) -> ApiResult<()> {
    if state.config.chunk_push.enabled {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

/// `GET /_api/larder/v1/caches/{cache}/chunk-push`.
pub async fn params(
    State(state): State<AppState>,
    _access: CacheAccess<Push>,
) -> ApiResult<Json<ChunkParamsResponse>> {
    enabled(&state)?;
    let p = state.config.chunking.params();
    Ok(Json(ChunkParamsResponse {
        nar_size_threshold: p.nar_size_threshold,
        min_size: p.min_size,
        avg_size: p.avg_size,
        max_size: p.max_size,
        max_batch_bytes: state.config.chunk_push.max_batch_bytes,
        max_missing_chunks: MAX_MISSING,
        max_commit_chunks: MAX_COMMIT,
        zstd_level: state.config.compression.level,
    }))
}

/// `POST /_api/larder/v1/caches/{cache}/chunks/missing`.
#[instrument(skip_all, fields(cache = %access.cache.name))]
pub async fn missing(
    State(state): State<AppState>,
    access: CacheAccess<Push>,
    body: Body,
) -> ApiResult<Json<MissingChunksResponse>> {
    enabled(&state)?;
    let body = read_limited(body, MISSING_BODY, "missing-chunks request").await?;
    let req: MissingChunksRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid missing-chunks request: {e}")))?;
    if req.chunks.len() > MAX_MISSING {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} chunk hashes; at most {MAX_MISSING} per request",
            req.chunks.len()
        )));
    }
    let path = store_path(&access.cache, &req.store_path)?;
    let hashes = parse_hashes(&req.chunks)?;
    let pusher = pusher(&access.credentials);
    let asker = asker(&access, &path, &pusher);
    let present = presence::present(&state.db, asker, &hashes).await?;
    let missing = hashes
        .iter()
        .filter(|h| !present.contains_key(h))
        .map(ToString::to_string)
        .collect();
    Ok(Json(MissingChunksResponse { missing }))
}

/// `POST /_api/larder/v1/caches/{cache}/chunks`.
#[instrument(skip_all, fields(cache = %access.cache.name))]
pub async fn upload(
    State(state): State<AppState>,
    access: CacheAccess<Push>,
    body: Body,
) -> ApiResult<Json<ChunkBatchResponse>> {
    enabled(&state)?;
    let limit = state.config.chunk_push.max_batch_bytes as usize;
    let body = read_limited(body, limit, "chunk batch").await?;
    let pusher = pusher(&access.credentials);
    let received = batch::receive(&state, &access.cache, &pusher, body).await?;
    tracing::debug!(chunks = received.chunks, "received chunk batch");
    Ok(Json(received))
}

/// `POST /_api/larder/v1/caches/{cache}/nars`. The answer is always
/// `Uploaded`: whether the NAR existed elsewhere is not the caller's to learn.
#[instrument(skip_all, fields(cache = %access.cache.name, store_path_hash))]
pub async fn commit(
    State(state): State<AppState>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadPathResult>> {
    enabled(&state)?;
    let body = read_limited(body, COMMIT_BODY, "NAR commit").await?;
    let req: CommitNarRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid NAR commit: {e}")))?;
    if req.info.cache != access.cache.name.as_str() {
        return Err(ApiError::BadRequest(format!(
            "metadata names cache {:?}, the URL {}",
            req.info.cache, access.cache.name
        )));
    }
    if req.chunks.is_empty() || req.chunks.len() > MAX_COMMIT {
        return Err(ApiError::BadRequest(format!(
            "a NAR commit lists 1 to {MAX_COMMIT} chunks, not {}",
            req.chunks.len()
        )));
    }
    let path = store_path(&access.cache, &req.info.store_path)?;
    let hashes = parse_hashes(&req.chunks)?;
    let pusher = pusher(&access.credentials);
    let present = presence::present(&state.db, asker(&access, &path, &pusher), &hashes).await?;
    let absent: Vec<&ChunkHash> = hashes.iter().filter(|h| !present.contains_key(h)).collect();
    if let Some(first) = absent.first() {
        return Err(ApiError::ChunksMissing {
            count: absent.len(),
            first: first.to_string(),
        });
    }
    let sources = hashes
        .iter()
        .filter_map(|h| present.get(h).cloned())
        .collect();
    let nar = assemble::nar_stream(state.chunks(), state.staging.clone(), sources);
    let nar: BodyStream = Box::pin(nar.map_err(axum::Error::new));
    upload_path::accept(
        &state,
        &access.credentials,
        &headers,
        req.info,
        nar,
        PushRoute::ChunkPush,
    )
    .await?;
    Ok(Json(UploadPathResult {
        kind: UploadKind::Uploaded,
        file_size: None,
        frac_deduplicated: None,
    }))
}

/// The presence question for this caller and path.
fn asker<'a>(access: &'a CacheAccess<Push>, path: &'a StorePath, pusher: &'a str) -> Asker<'a> {
    let may_read = access
        .credentials
        .permissions_on(&access.cache.name, Some(&access.cache))
        .has(Permission::Pull);
    Asker {
        cache: &access.cache,
        may_read,
        pusher,
        path,
    }
}

/// An absolute store path of the cache's store.
fn store_path(cache: &CacheRecord, text: &str) -> ApiResult<StorePath> {
    StorePath::from_absolute_path(&cache.store_dir, text)
        .map_err(|e| ApiError::BadRequest(format!("invalid store_path {text:?}: {e}")))
}

fn parse_hashes(hex: &[String]) -> ApiResult<Vec<ChunkHash>> {
    hex.iter()
        .map(|h| {
            h.parse()
                .map_err(|e| ApiError::BadRequest(format!("invalid chunk hash {h:?}: {e}")))
        })
        .collect()
}
