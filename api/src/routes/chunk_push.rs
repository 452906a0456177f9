//! Chunk-level push, `/_api/larder/v1/caches/{cache}/…` (docs/protocol.md
//! "Chunk-level push"); each route needs `w`, and every one answers 404
//! while `[chunk-push] enabled = false`, which is how `larder push` tells a
//! server without it (and falls back to `upload-path`).
//!
//! - `GET chunk-push`: the cache's chunking parameters and the limits.
//! - `POST chunks/missing`: which of a NAR's chunks the client must send.
//! - `POST chunks`: a batch of zstd frames, verified, kept for a grace period.
//! - `POST nars`: the NAR as its chunk list, verified whole, then recorded
//!   as an upload-path upload is; or only verified and staged (`prepare`),
//!   or recorded from what a prepare staged (`publish`); or a NAR of one
//!   chunk carried in the request itself ([`INLINE_NAR_CONTENT_TYPE`]).
//!
//! The missing-chunks question and the commit take their chunk list as hex
//! JSON or, more compactly, as a hash-list body (a JSON head, then raw
//! hashes): [`HASH_LIST_CONTENT_TYPE`]. A prepare's hash list is read as
//! it arrives ([`crate::chunk_push::streamed`]), so a client may send it
//! while still cutting the NAR.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use tracing::instrument;

use larder_core::chunk::ChunkHash;
use larder_core::nix::store_path::StorePath;
use larder_core::wire::chunk_push;
use larder_core::wire::chunk_push::{
    ChunkBatchResponse, ChunkParamsResponse, CommitMode, CommitNarRequest, HASH_LIST_CONTENT_TYPE,
    INLINE_NAR_CONTENT_TYPE, MissingChunksRequest, MissingChunksResponse, PreparedNarResponse,
    parse_hash_list, parse_inline_nar,
};
use larder_core::wire::{UploadKind, UploadPathResult};
use larder_shared::audit::PushRoute;
use larder_shared::db::caches::CacheRecord;
use larder_shared::token::Permission;

use crate::auth::{CacheAccess, Push};
use crate::body::read_limited;
use crate::body_rate::Pace;
use crate::chunk_push::lists::ChunkLists;
use crate::chunk_push::presence::{self, Asker, Presence};
use crate::chunk_push::streamed::{self, Tail};
use crate::chunk_push::{assemble, batch, inline, prepared, pusher};
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
/// Largest head of a hash-list commit body (its JSON metadata).
const COMMIT_HEAD: usize = 1024 * 1024;

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
        prepare_publish: true,
        hash_lists: true,
        chunk_list_refs: true,
        streamed_prepare: true,
        inline_nars: true,
    }))
}

/// `POST /_api/larder/v1/caches/{cache}/chunks/missing`.
#[instrument(skip_all, fields(cache = %access.cache.name))]
pub async fn missing(
    State(state): State<AppState>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<MissingChunksResponse>> {
    enabled(&state)?;
    let body = read_limited(body, MISSING_BODY, "missing-chunks request").await?;
    let (req, hashes): (MissingChunksRequest, _) = with_hashes(
        &headers,
        &body,
        "missing-chunks request",
        |r: &mut MissingChunksRequest| std::mem::take(&mut r.chunks),
    )?;
    if hashes.len() > MAX_MISSING {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} chunk hashes; at most {MAX_MISSING} per request",
            hashes.len()
        )));
    }
    if has_content_type(&headers, HASH_LIST_CONTENT_TYPE) {
        state.chunk_lists.remember(&hashes);
    }
    let path = store_path(&access.cache, &req.store_path)?;
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

/// `POST /_api/larder/v1/caches/{cache}/nars`. A commit or publish is
/// answered `Uploaded` whether or not the NAR existed elsewhere: that is not
/// the caller's to learn. A prepare is answered with the prepared NAR's name.
#[instrument(skip_all, fields(cache = %access.cache.name, store_path_hash))]
pub async fn commit(
    State(state): State<AppState>,
    access: CacheAccess<Push>,
    pace: Option<Extension<Pace>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    enabled(&state)?;
    if has_content_type(&headers, INLINE_NAR_CONTENT_TYPE) {
        return inline_commit(&state, &access, &headers, body).await;
    }
    let (mut req, body) = commit_body(&headers, body, &state.chunk_lists).await?;
    let mut hashes = match body {
        CommitBody::Listed(hashes) => hashes,
        CommitBody::Streamed(rest, tail) => {
            // The list arrives as the client's chunks go in: pauses are
            // its nature, silence is not.
            if let Some(Extension(pace)) = pace {
                pace.relax();
            }
            return streamed_prepare(&state, &access, &headers, req, rest, tail).await;
        }
    };
    if !req.chunk_lists.is_empty() {
        if !hashes.is_empty() {
            return Err(ApiError::BadRequest(
                "a NAR commit lists its chunks or names chunk lists, not both".into(),
            ));
        }
        let ids = std::mem::take(&mut req.chunk_lists)
            .iter()
            .map(|id| {
                id.parse()
                    .map_err(|e| ApiError::BadRequest(format!("chunk list id {id:?}: {e}")))
            })
            .collect::<ApiResult<Vec<ChunkHash>>>()?;
        hashes = state.chunk_lists.resolve(&ids)?;
    }
    same_cache(&access, &req)?;
    let pusher = pusher(&access.credentials);
    let route = PushRoute::ChunkPush;
    if req.mode == CommitMode::Publish {
        let (Some(nonce), true) = (req.prepared.as_deref(), hashes.is_empty()) else {
            return Err(ApiError::BadRequest(
                "a publish names its prepared NAR and lists no chunks".into(),
            ));
        };
        let admitted =
            upload_path::admit(&state, &access.credentials, &headers, req.info, route).await?;
        let done = prepared::publish(&state, &admitted, &pusher, nonce).await?;
        return Ok(Json(done).into_response());
    }
    if hashes.is_empty() || hashes.len() > MAX_COMMIT {
        return Err(ApiError::BadRequest(format!(
            "a NAR commit lists 1 to {MAX_COMMIT} chunks, not {}",
            hashes.len()
        )));
    }
    let path = store_path(&access.cache, &req.info.store_path)?;
    let admitted = match req.mode {
        CommitMode::Prepare => Some(
            upload_path::admit(
                &state,
                &access.credentials,
                &headers,
                req.info.clone(),
                route,
            )
            .await?,
        ),
        _ => None,
    };
    let sources = Presence::load(&state.db, asker(&access, &path, &pusher))
        .await?
        .sources(&hashes)
        .await?;
    let chunks = Mutex::new(assemble::chunk_list(&hashes, &sources));
    let nar = assemble::nar_stream(state.chunks(), state.staging.clone(), sources);
    let nar: BodyStream = Box::pin(nar.map_err(axum::Error::new));
    if let Some(admitted) = admitted {
        let prepared = prepared::prepare(&state, &admitted, &pusher, nar, &chunks).await?;
        return Ok(Json(PreparedNarResponse { prepared }).into_response());
    }
    upload_path::accept(
        &state,
        &access.credentials,
        &headers,
        req.info,
        nar,
        route,
        Some(&chunks),
    )
    .await?;
    Ok(uploaded())
}

/// A commit's answer: `Uploaded` whether or not the NAR existed elsewhere,
/// which is not the caller's to learn.
fn uploaded() -> Response {
    Json(UploadPathResult {
        kind: UploadKind::Uploaded,
        file_size: None,
        frac_deduplicated: None,
    })
    .into_response()
}

/// A one-step commit carrying its NAR of one chunk as zstd
/// ([`crate::chunk_push::inline`]).
async fn inline_commit(
    state: &AppState,
    access: &CacheAccess<Push>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let threshold = state.config.chunking.nar_size_threshold;
    let limit = inline::body_limit(COMMIT_HEAD, threshold);
    let body = read_limited(body, limit, "inline NAR commit").await?;
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("invalid NAR commit: {e}"));
    let (head, compressed) = parse_inline_nar(&body).map_err(|e| bad(&e))?;
    let req: CommitNarRequest = serde_json::from_slice(head).map_err(|e| bad(&e))?;
    if req.mode != CommitMode::Commit
        || !req.chunks.is_empty()
        || !req.chunk_lists.is_empty()
        || req.prepared.is_some()
        || req.list_ids_follow
    {
        return Err(bad(
            &"an inline NAR commits in one step and lists no chunks",
        ));
    }
    same_cache(access, &req)?;
    let nar = inline::decompress(compressed, req.info.nar_size, threshold)?;
    let nar: BodyStream = Box::pin(futures::stream::once(async move { Ok(nar) }));
    upload_path::accept(
        state,
        &access.credentials,
        headers,
        req.info,
        nar,
        PushRoute::ChunkPush,
        None,
    )
    .await?;
    Ok(uploaded())
}

/// A commit's chunk list: whole, or (a prepare's hash-list body) the rest
/// of the body, read as it arrives.
enum CommitBody {
    Listed(Vec<ChunkHash>),
    Streamed(BodyStream, Tail),
}

/// A commit request and its chunk list. A hash-list body's head is read
/// first: a prepare's list is then left to stream in
/// ([`crate::chunk_push::streamed`]); any other is read whole, bounded.
async fn commit_body(
    headers: &HeaderMap,
    body: Body,
    lists: &Arc<ChunkLists>,
) -> ApiResult<(CommitNarRequest, CommitBody)> {
    if !has_content_type(headers, HASH_LIST_CONTENT_TYPE) {
        let body = read_limited(body, COMMIT_BODY, "NAR commit").await?;
        let (req, hashes) =
            with_hashes(headers, &body, "NAR commit", |r: &mut CommitNarRequest| {
                std::mem::take(&mut r.chunks)
            })?;
        return Ok((req, CommitBody::Listed(hashes)));
    }
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("invalid NAR commit: {e}"));
    let body: BodyStream = Box::pin(body.into_data_stream());
    let (len, body) = upload_path::read_preamble(body, 4).await?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > COMMIT_HEAD {
        return Err(ApiError::PayloadTooLarge(format!(
            "NAR commit head larger than {COMMIT_HEAD} bytes"
        )));
    }
    let (head, rest) = upload_path::read_preamble(body, len).await?;
    let req: CommitNarRequest = serde_json::from_slice(&head).map_err(|e| bad(&e))?;
    if !req.chunks.is_empty() {
        return Err(bad(&"a hash-list head lists no hex chunks"));
    }
    if req.mode == CommitMode::Prepare && req.chunk_lists.is_empty() {
        let tail = match req.list_ids_follow {
            true => Tail::ListIds(lists.clone()),
            false => Tail::Hashes,
        };
        return Ok((req, CommitBody::Streamed(rest, tail)));
    }
    if req.list_ids_follow {
        return Err(bad(
            &"only a prepare naming no chunk_lists has list ids follow",
        ));
    }
    let rest = read_limited(Body::from_stream(rest), COMMIT_BODY, "NAR commit").await?;
    let hashes = chunk_push::parse_hashes(&rest).map_err(|e| bad(&e))?;
    Ok((req, CommitBody::Listed(hashes)))
}

/// A prepare whose chunk list is `rest`, read back and staged as it
/// arrives.
async fn streamed_prepare(
    state: &AppState,
    access: &CacheAccess<Push>,
    headers: &HeaderMap,
    req: CommitNarRequest,
    rest: BodyStream,
    tail: Tail,
) -> ApiResult<Response> {
    same_cache(access, &req)?;
    let pusher = pusher(&access.credentials);
    let path = store_path(&access.cache, &req.info.store_path)?;
    let route = PushRoute::ChunkPush;
    let admitted = upload_path::admit(state, &access.credentials, headers, req.info, route).await?;
    let presence = Presence::load(&state.db, asker(access, &path, &pusher)).await?;
    let prepared =
        streamed::prepare(state, &admitted, &pusher, presence, rest, tail, MAX_COMMIT).await?;
    Ok(Json(PreparedNarResponse { prepared }).into_response())
}

/// `400` unless the metadata names the URL's cache.
fn same_cache(access: &CacheAccess<Push>, req: &CommitNarRequest) -> ApiResult<()> {
    if req.info.cache == access.cache.name.as_str() {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "metadata names cache {:?}, the URL {}",
        req.info.cache, access.cache.name
    )))
}

/// A request and its chunk hashes, from hex JSON or a hash-list body
/// (whose head must list no hex hashes of its own); `take_hex` moves the
/// JSON's hex list out of the request.
fn with_hashes<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    what: &str,
    take_hex: impl Fn(&mut T) -> Vec<String>,
) -> ApiResult<(T, Vec<ChunkHash>)> {
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("invalid {what}: {e}"));
    if has_content_type(headers, HASH_LIST_CONTENT_TYPE) {
        let (head, hashes) = parse_hash_list(body).map_err(|e| bad(&e))?;
        let mut req: T = serde_json::from_slice(head).map_err(|e| bad(&e))?;
        if !take_hex(&mut req).is_empty() {
            return Err(bad(&"a hash-list head lists no hex chunks"));
        }
        return Ok((req, hashes));
    }
    let mut req: T = serde_json::from_slice(body).map_err(|e| bad(&e))?;
    let hashes = parse_hashes(&take_hex(&mut req))?;
    Ok((req, hashes))
}

/// Whether the body is of `content_type` (one of Larder's own).
fn has_content_type(headers: &HeaderMap, content_type: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(content_type.as_bytes()))
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
