//! NAR downloads: `GET` and `HEAD /{cache}/nar/{file}` in every
//! representation a narinfo may name (docs/protocol.md "NAR URLs"):
//!
//! - `<narhash>.nar`: the staged copy while there is one, else the chunks
//!   decompressed on the fly. Both are the NAR's bytes, so a download
//!   resumed across an ingest splices nothing: the ETag is the NarHash.
//! - `<narhash>.nar.zst`: the stored zstd frames concatenated; ETag from the
//!   chunk list's hashes, stored sizes and locations (digested at ingest and
//!   kept in the `nars` row, so no chunk row is read before the first byte).
//! - `<filehash>.nar.<ext>`: a file kept as `nix copy` uploaded it; ETag the
//!   file hash.
//!
//! Every response carries `Accept-Ranges: bytes`, an `ETag` and the exact
//! `Content-Length`; ranges, `If-Range` and `If-None-Match` follow
//! [`crate::byte_range`]. `HEAD` sends what `GET` would, without the body.

use std::ops::Range;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use larder_core::nix::store_path::StorePathHash;
use larder_shared::db::caches::CacheRecord;
use larder_shared::db::nars::{self, NarRecord, NarState};
use larder_shared::db::{DbError, NarId, ObjectId, objects, unix_now, uploads};
use larder_shared::storage::{ObjectKey, StorageError};
use larder_shared::token::Permission;

use crate::auth::{CacheAccess, Pull, PullOrPush};
use crate::byte_range::{self, Decision, ETag};
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::routes::nix_upload;
use crate::state::AppState;
use larder_shared::chunk_store::nar::{self as nar_reader, ChunkLayout, NarStream, Representation};

/// `GET /{cache}/nar/{file}` (`r`).
#[instrument(skip_all, fields(cache = %access.cache.name, file = %file))]
pub async fn get(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Pull>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let found = find(&state, &access.cache, &file)
        .await?
        .ok_or(ApiError::NoSuchObject)?;
    respond(&state, &access.cache, found, &headers, true).await
}

/// `HEAD /{cache}/nar/{file}`: to `r` callers exactly the headers of the
/// `GET`; to `w` callers also the upload probe of `nix copy`, which skips
/// uploading a file that answers 200 ([`nix_upload::upload_probe`]).
#[instrument(skip_all, fields(cache = %access.cache.name, file = %file))]
pub async fn head(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<PullOrPush>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let perms = access
        .credentials
        .permissions_on(&access.cache.name, Some(&access.cache));
    if perms.has(Permission::Pull)
        && let Some(found) = find(&state, &access.cache, &file).await?
    {
        return respond(&state, &access.cache, found, &headers, false).await;
    }
    if perms.has(Permission::Push) {
        return nix_upload::upload_probe(&state, &access.cache, &file).await;
    }
    Err(ApiError::NoSuchObject)
}

/// A servable file: where its bytes are and what identifies them.
struct Found {
    source: Source,
    len: u64,
    etag: ETag,
    content_type: &'static str,
}

enum Source {
    /// The staged NAR (its chunks once ingest wins the race).
    Staged { key: ObjectKey, nar: NarRecord },
    /// A ready NAR's chunks, as frames or decompressed.
    Chunks {
        layout: ChunkLayout,
        repr: Representation,
        nar_id: NarId,
    },
    /// A file as `nix copy` uploaded it.
    Upload { key: ObjectKey, object_id: ObjectId },
}

/// Resolves `file` in this cache: one of Larder's own URLs for a NAR an
/// object of the cache refers to, else an uploader's live URL.
async fn find(state: &AppState, cache: &CacheRecord, file: &str) -> ApiResult<Option<Found>> {
    if let Some(hash) = attic_shaped(file) {
        let mut conn = state.db.conn().await?;
        let object = objects::find(conn.raw(), cache.id, &hash)
            .await?
            .filter(|o| o.nar.state != NarState::Broken);
        drop(conn);
        return match object {
            Some(object) => own_nar(state, object.nar, Representation::Plain).await,
            None => Ok(None),
        };
    }
    if let Some((nar_hash, compression)) = crate::nar_url::own_url(file) {
        let repr = match compression {
            larder_core::nix::narinfo::Compression::Zstd => Representation::Zstd,
            _ => Representation::Plain,
        };
        let mut conn = state.db.conn().await?;
        let nar = objects::nar_in_cache(conn.raw(), cache.id, &nar_hash).await?;
        drop(conn);
        if let Some(nar) = nar
            && let Some(found) = own_nar(state, nar, repr).await?
        {
            return Ok(Some(found));
        }
    }
    // Not a NAR hash of this cache: maybe an uploader's file hash.
    let url = {
        let mut conn = state.db.conn().await?;
        uploads::find_url(conn.raw(), cache.id, file, unix_now()).await?
    };
    let Some(url) = url else {
        return Ok(None);
    };
    let key = url
        .file
        .upload_key
        .ok_or_else(|| ApiError::Internal("uploader URL without a file".into()))?;
    Ok(Some(Found {
        source: Source::Upload {
            key,
            object_id: url.object_id,
        },
        len: url.file.file_size as u64,
        etag: ETag::strong(url.file.file_hash.to_base32()),
        content_type: "application/x-nix-nar",
    }))
}

/// Length of a store path hash in nix-base32; a NAR hash has 52 characters,
/// so the two URL shapes cannot be confused.
const STORE_PATH_HASH_LEN: usize = 32;

/// `nar/<store-path-hash>.nar`, the URL Attic's narinfos name (docs/operations.md "Moving from Attic"):
/// hosts that cached an Attic narinfo keep fetching it after a switch.
fn attic_shaped(file: &str) -> Option<StorePathHash> {
    let stem = file.strip_suffix(".nar")?;
    (stem.len() == STORE_PATH_HASH_LEN)
        .then(|| stem.parse().ok())
        .flatten()
}

async fn own_nar(
    state: &AppState,
    nar: NarRecord,
    repr: Representation,
) -> ApiResult<Option<Found>> {
    let content_type = match repr {
        Representation::Plain => "application/x-nix-nar",
        Representation::Zstd => "application/zstd",
    };
    match (nar.state, repr) {
        (NarState::Staged, Representation::Plain) => {
            let Some(key) = nar.staging_key.clone() else {
                return Ok(None);
            };
            Ok(Some(Found {
                len: nar.nar_size as u64,
                etag: ETag::strong(nar.nar_hash.to_base32()),
                source: Source::Staged { key, nar },
                content_type,
            }))
        }
        (NarState::Ready, _) => {
            let layout = ChunkLayout::load(&state.db, &nar).await?;
            let len = layout.len(repr);
            let (recorded, etag) = match repr {
                Representation::Plain => (
                    Some(nar.nar_size as u64),
                    ETag::strong(nar.nar_hash.to_base32()),
                ),
                // A layout just recomputed (stale after a recompression,
                // docs/gc.md "Recompression") replaces the recorded size.
                Representation::Zstd if nar.layout.is_none() => (
                    Some(len),
                    ETag::strong(format!("zst-{}", hex(&layout.frames_digest()))),
                ),
                Representation::Zstd => (
                    nar.file_size.map(|s| s as u64),
                    ETag::strong(format!("zst-{}", hex(&layout.frames_digest()))),
                ),
            };
            if recorded != Some(len) {
                return Err(ApiError::Database(DbError::Corrupt {
                    column: "nars.file_size",
                    message: format!(
                        "NAR {} chunks sum to {len} bytes, recorded {recorded:?}",
                        nar.id
                    ),
                }));
            }
            Ok(Some(Found {
                source: Source::Chunks {
                    layout,
                    repr,
                    nar_id: nar.id,
                },
                len,
                etag,
                content_type,
            }))
        }
        // `.nar.zst` of a staged NAR: no narinfo ever pointed there.
        _ => Ok(None),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers with the whole file, a range, a 304 or a 416; opens storage only
/// when a body is sent.
async fn respond(
    state: &AppState,
    cache: &CacheRecord,
    found: Found,
    headers: &HeaderMap,
    send_body: bool,
) -> ApiResult<Response> {
    let len = found.len;
    let decision = byte_range::decide(headers, len, &found.etag);
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(found.content_type),
    );
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::ETAG, found.etag.header_value());
    let (status, range) = match decision {
        Decision::NotModified => return Ok((StatusCode::NOT_MODIFIED, out).into_response()),
        Decision::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { len }),
        Decision::Whole => (StatusCode::OK, 0..len),
        Decision::Partial(r) => {
            out.insert(header::CONTENT_RANGE, byte_range::content_range(&r, len));
            (StatusCode::PARTIAL_CONTENT, r)
        }
    };
    let sent = range.end - range.start;
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(sent));
    if !send_body {
        return Ok((status, out, Body::empty()).into_response());
    }
    let zstd = matches!(
        found.source,
        Source::Chunks {
            repr: Representation::Zstd,
            ..
        }
    );
    let stream = open(state, cache, found.source, range).await?;
    state.metrics.nar(cache, zstd, sent);
    let body = Body::from_stream(nar_reader::exact_length(stream, sent));
    Ok((status, out, body).into_response())
}

/// Opens bytes `range` of the source, noting the read for retention.
async fn open(
    state: &AppState,
    cache: &CacheRecord,
    source: Source,
    range: Range<u64>,
) -> ApiResult<NarStream> {
    match source {
        Source::Upload { key, object_id } => {
            let stream = match state.storage.get(&key, Some(range)).await {
                Ok(s) => s,
                Err(StorageError::NotFound(_)) => {
                    tracing::warn!(key = %key, "upload file of a live uploader URL is missing");
                    return Err(ApiError::NoSuchObject);
                }
                Err(e) => return Err(e.into()),
            };
            state.access.object(object_id);
            Ok(stream)
        }
        Source::Chunks {
            layout,
            repr,
            nar_id,
        } => {
            state.access.nar(cache.id, nar_id);
            Ok(layout.stream(state.db.clone(), state.chunks(), repr, range))
        }
        Source::Staged { key, nar } => {
            state.access.nar(cache.id, nar.id);
            match state.staging.get(&key, Some(range.clone())).await {
                Ok(stream) => Ok(stream),
                // Ingest finished between our read and the open: the chunks
                // hold the same bytes.
                Err(StorageError::NotFound(_)) => {
                    let nar = reload(state, nar.id).await?;
                    if nar.state != NarState::Ready {
                        return Err(ApiError::NoSuchObject);
                    }
                    let layout = ChunkLayout::load(&state.db, &nar).await?;
                    Ok(layout.stream(
                        state.db.clone(),
                        state.chunks(),
                        Representation::Plain,
                        range,
                    ))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn reload(state: &AppState, id: NarId) -> Result<NarRecord, ApiError> {
    let mut conn = state.db.conn().await?;
    nars::get(conn.raw(), id)
        .await?
        .ok_or(ApiError::Database(DbError::Corrupt {
            column: "nars.id",
            message: "NAR vanished while being served".into(),
        }))
}
