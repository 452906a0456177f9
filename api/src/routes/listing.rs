//! `<storehash>.ls`: the JSON listing of a path's NAR, as Nix writes it with
//! `write-nar-listing=true` (`larder_core::nix::nar::NarListing`) and reads
//! it for `nix store ls` and friends.
//!
//! - `PUT` (`w`): kept as uploaded, per cache and path. Nix 2.8 sends it
//!   before the NAR and the narinfo, so it is bound to the path's NAR hash
//!   when the narinfo arrives, and served only while the path has that NAR.
//! - `GET` (`r`): the uploaded listing; otherwise one Larder generated from
//!   the NAR on the first request (shared by every cache holding the NAR,
//!   deleted with it).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tracing::instrument;

use larder_core::nix::nar::NarValidator;
use larder_core::nix::store_path::StorePathHash;
use larder_shared::db::nars::{self, NarRecord, NarState};
use larder_shared::db::objects;
use larder_shared::db::{DbError, listings, unix_now};
use larder_shared::storage::StorageError;
use larder_shared::token::Permission;

use crate::auth::{CacheAccess, PullOrPush, Push, permission_name};
use crate::content_encoding::read_decoded;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use larder_shared::chunk_store::nar::{self as nar_reader, ChunkLayout, NarStream, Representation};

/// Largest uploaded listing accepted (a path of 100 000 files lists in
/// about 10 MiB).
pub const MAX_LISTING: usize = 64 * 1024 * 1024;

/// `PUT /{cache}/{storehash}.ls`.
#[instrument(skip_all, fields(cache = %access.cache.name, store_path_hash = %hash))]
pub async fn put(
    state: &AppState,
    access: &CacheAccess<Push>,
    hash: StorePathHash,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let window = state.config.http.max_zstd_window_log;
    let listing = read_decoded(headers, body, MAX_LISTING, "listing", window).await?;
    // Names are raw bytes in Nix's JSON (not always UTF-8): check the shape only.
    let trimmed = listing.trim_ascii();
    if !(trimmed.starts_with(b"{") && trimmed.ends_with(b"}")) {
        return Err(ApiError::BadRequest(
            "a .ls listing must be a JSON object".into(),
        ));
    }
    let mut conn = state.db.conn().await?;
    // Already in the cache: the listing describes its current NAR.
    let nar_hash = objects::find(conn.raw(), access.cache.id, &hash)
        .await?
        .map(|o| o.nar.nar_hash);
    listings::put_uploaded_listing(
        conn.raw(),
        access.cache.id,
        &hash,
        nar_hash.as_ref(),
        &listing,
        unix_now(),
    )
    .await?;
    tracing::info!(bytes = listing.len(), "listing uploaded");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /{cache}/{storehash}.ls`.
#[instrument(skip_all, fields(cache = %access.cache.name, store_path_hash = %hash))]
pub async fn get(
    state: &AppState,
    access: &CacheAccess<PullOrPush>,
    hash: &str,
) -> ApiResult<Response> {
    let hash: StorePathHash = hash
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))?;
    let perms = access
        .credentials
        .permissions_on(&access.cache.name, Some(&access.cache));
    if !perms.has(Permission::Pull) {
        return Err(ApiError::PermissionDenied(permission_name(
            Permission::Pull,
        )));
    }
    let mut conn = state.db.conn().await?;
    let object = objects::find(conn.raw(), access.cache.id, &hash)
        .await?
        .filter(|o| o.nar.state != NarState::Broken)
        .ok_or(ApiError::NoSuchObject)?;
    let cache_id = access.cache.id;
    if let Some(listing) =
        listings::uploaded_listing(conn.raw(), cache_id, &hash, &object.nar.nar_hash).await?
    {
        return Ok(json(listing));
    }
    if let Some(listing) = listings::nar_listing(conn.raw(), object.nar.id).await? {
        return Ok(json(listing));
    }
    drop(conn);
    let listing = generate(state, object.nar).await?;
    Ok(json(listing))
}

fn json(listing: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        listing,
    )
        .into_response()
}

/// Lists a NAR by reading it through (staged copy, or its chunks) and
/// records the listing for later requests.
async fn generate(state: &AppState, nar: NarRecord) -> ApiResult<Vec<u8>> {
    let nar_id = nar.id;
    let expected = nar.nar_size as u64;
    let mut stream = nar_stream(state, nar).await?;
    let mut validator = NarValidator::with_listing();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::Internal(format!("reading NAR {nar_id}: {e}")))?;
        validator
            .update(&piece)
            .map_err(|e| ApiError::Internal(format!("stored NAR {nar_id} is malformed: {e}")))?;
    }
    let summary = validator
        .finish()
        .map_err(|e| ApiError::Internal(format!("stored NAR {nar_id} is malformed: {e}")))?;
    if summary.nar_size != expected {
        return Err(ApiError::Internal(format!(
            "stored NAR {nar_id} has {} bytes, expected {expected}",
            summary.nar_size
        )));
    }
    let listing = summary
        .listing
        .ok_or_else(|| ApiError::Internal("validator made no listing".into()))?
        .to_json();
    let mut conn = state.db.conn().await?;
    listings::insert_nar_listing(conn.raw(), nar_id, &listing, unix_now()).await?;
    tracing::info!(
        nar_id = nar_id.get(),
        bytes = listing.len(),
        "listing generated"
    );
    Ok(listing)
}

/// The uncompressed NAR: the staged copy while there is one, else chunks.
async fn nar_stream(state: &AppState, nar: NarRecord) -> ApiResult<NarStream> {
    let nar = match (nar.state, &nar.staging_key) {
        (NarState::Staged, Some(key)) => {
            match state.staging.get(key, None).await {
                Ok(s) => return Ok(nar_reader::exact_length(s, nar.nar_size as u64)),
                // Ingest finished meanwhile: read the chunks instead.
                Err(StorageError::NotFound(_)) => {
                    let mut conn = state.db.conn().await?;
                    nars::get(conn.raw(), nar.id)
                        .await?
                        .ok_or(ApiError::Database(DbError::Corrupt {
                            column: "nars.id",
                            message: "NAR vanished while being listed".into(),
                        }))?
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => nar,
    };
    if nar.state != NarState::Ready {
        return Err(ApiError::NoSuchObject);
    }
    let len = nar.nar_size as u64;
    let layout = ChunkLayout::load(&state.db, &nar).await?;
    let stream = layout.stream(
        state.db.clone(),
        state.chunks(),
        Representation::Plain,
        0..len,
    );
    Ok(nar_reader::exact_length(stream, len))
}
