//! The Nix binary-cache protocol for reads: `nix-cache-info`, narinfo, NARs.
//! What stock Nix 2.8 sends is recorded in docs/protocol.md.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use larder_shared::db::nars::{NarRecord, NarState};
use larder_shared::db::objects::{self, ObjectRecord};
use larder_shared::db::{DbError, nars};
use larder_shared::nix::hash::NarHash;
use larder_shared::nix::narinfo::{Compression, NarInfo};
use larder_shared::nix::signing::{SigningKey, fingerprint};
use larder_shared::nix::store_path::{StoreDir, StorePath, StorePathHash};
use larder_shared::storage::{ObjectKey, StorageError};

use crate::auth::{CacheAccess, Delete, Pull, PullOrPush};
use crate::error::{ApiError, ApiResult};
use crate::nar_reader::{self, Representation};
use crate::routes::nix_upload;
use crate::state::AppState;

/// `GET /{cache}/nix-cache-info`.
pub async fn nix_cache_info(access: CacheAccess<PullOrPush>) -> Response {
    let c = &access.cache;
    let body = format!(
        "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
        c.store_dir, c.priority
    );
    ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], body).into_response()
}

/// `GET, HEAD /{cache}/{file}`: dispatches on the suffix (`.narinfo`).
pub async fn cache_file(
    State(state): State<AppState>,
    method: Method,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<PullOrPush>,
) -> ApiResult<Response> {
    if let Some(hash) = file.strip_suffix(".narinfo") {
        let hash: StorePathHash = hash
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))?;
        return narinfo(&state, &access, &hash, method == Method::HEAD).await;
    }
    if let Some(hash) = file.strip_suffix(".ls") {
        return crate::routes::listing::get(&state, &access, hash).await;
    }
    Err(ApiError::NotFound)
}

#[instrument(skip_all, fields(cache = %access.cache.name, store_path_hash = %hash))]
async fn narinfo(
    state: &AppState,
    access: &CacheAccess<PullOrPush>,
    hash: &StorePathHash,
    head_only: bool,
) -> ApiResult<Response> {
    let mut conn = state.db.conn().await?;
    let found = objects::find(conn.raw(), access.cache.id, hash)
        .await?
        .filter(|o| o.nar.state != NarState::Broken);
    drop(conn);
    state.metrics.narinfo(&access.cache, found.is_some());
    let object = found.ok_or(ApiError::NoSuchObject)?;
    state.access.object(object.id);
    let text = render_narinfo(&access.cache.keypair, &access.cache.store_dir, &object)?;
    let headers = [(header::CONTENT_TYPE, "text/x-nix-narinfo")];
    if head_only {
        let len = HeaderValue::from(text.len());
        return Ok((headers, [(header::CONTENT_LENGTH, len)]).into_response());
    }
    Ok((headers, text).into_response())
}

/// `DELETE /{cache}/{hash}.narinfo` (`d`): removes the path from this cache
/// now (a secret pushed by mistake must not wait for GC). Its data goes with
/// the next GC once no cache refers to it.
pub async fn delete_file(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Delete>,
) -> ApiResult<StatusCode> {
    let hash: StorePathHash = file
        .strip_suffix(".narinfo")
        .ok_or(ApiError::NotFound)?
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))?;
    let mut conn = state.db.conn().await?;
    if !objects::delete(conn.raw(), access.cache.id, &hash).await? {
        return Err(ApiError::NoSuchObject);
    }
    tracing::info!(cache = %access.cache.name, store_path_hash = %hash, subject = access.credentials.subject(), "path deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Renders and signs the narinfo of an object; the URL depends on whether
/// the NAR is still staged (docs/protocol.md "NAR URLs").
pub fn render_narinfo(keypair: &str, store_dir: &str, object: &ObjectRecord) -> ApiResult<String> {
    let internal = |what: &str, e: String| ApiError::Internal(format!("{what}: {e}"));
    let store_dir: StoreDir = store_dir
        .parse()
        .map_err(|e| internal("store dir", format!("{e}")))?;
    let base = object
        .meta
        .store_path
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let store_path =
        StorePath::from_base_name(base).map_err(|e| internal("store path", format!("{e}")))?;
    let references = object
        .meta
        .references
        .iter()
        .map(|r| StorePath::from_base_name(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal("reference", format!("{e}")))?;
    let deriver = object
        .meta
        .deriver
        .as_deref()
        .map(StorePath::from_base_name)
        .transpose()
        .map_err(|e| internal("deriver", format!("{e}")))?;
    let nar = &object.nar;
    let (url, compression, file_size) = match nar.state {
        NarState::Ready => (
            format!("nar/{}.nar.zst", nar.nar_hash.to_base32()),
            Compression::Zstd,
            nar.file_size.map(|s| s as u64),
        ),
        _ => (
            format!("nar/{}.nar", nar.nar_hash.to_base32()),
            Compression::None,
            None,
        ),
    };
    let key = keypair
        .parse::<SigningKey>()
        .map_err(|e| internal("cache key", format!("{e}")))?;
    let fp = fingerprint(
        &store_dir,
        &store_path,
        &nar.nar_hash,
        nar.nar_size as u64,
        &references,
    );
    let mut sigs = vec![key.sign(&fp).to_string()];
    sigs.extend(
        object
            .meta
            .sigs
            .iter()
            .filter(|s| !s.starts_with(&format!("{}:", key.name())))
            .cloned(),
    );
    let info = NarInfo {
        store_path,
        url,
        compression,
        file_hash: None,
        file_size,
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size as u64,
        references,
        deriver,
        system: object.meta.system.clone(),
        sigs,
        ca: object.meta.ca.clone(),
    };
    Ok(info.render(&store_dir))
}

/// `GET /{cache}/nar/{file}`: a NAR that an object of this cache refers to.
#[instrument(skip_all, fields(cache = %access.cache.name, file = %file))]
pub async fn nar(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Pull>,
) -> ApiResult<Response> {
    let (hash, repr) = if let Some(h) = file.strip_suffix(".nar.zst") {
        (h, Representation::Zstd)
    } else if let Some(h) = file.strip_suffix(".nar") {
        (h, Representation::Plain)
    } else {
        // An uploader's URL (`nix copy`): `<filehash>.nar.xz` and the like.
        return nix_upload::serve_upload(&state, &access.cache, &file).await;
    };
    if repr == Representation::Plain && hash.len() == STORE_PATH_HASH_LEN {
        return attic_shaped_nar(&state, &access, hash).await;
    }
    let nar_hash = NarHash::from_base32_bare(hash).map_err(|_| ApiError::NoSuchObject)?;
    let mut conn = state.db.conn().await?;
    let Some(nar) = objects::nar_in_cache(conn.raw(), access.cache.id, &nar_hash).await? else {
        // Not a NAR hash of this cache: maybe an uploader's file hash.
        drop(conn);
        return nix_upload::serve_upload(&state, &access.cache, &file).await;
    };
    drop(conn);
    state.access.nar(access.cache.id, nar.id);
    let len = match repr {
        Representation::Zstd => nar.file_size.unwrap_or_default(),
        Representation::Plain => nar.nar_size,
    };
    state.metrics.nar(
        &access.cache,
        repr == Representation::Zstd,
        len.max(0) as u64,
    );
    serve_nar(&state, nar, repr).await
}

/// Length of a store path hash in nix-base32; a NAR hash has 52 characters,
/// so the two URL shapes cannot be confused.
const STORE_PATH_HASH_LEN: usize = 32;

/// `nar/<store-path-hash>.nar`, the URL Attic's narinfos name (issue #20):
/// hosts that cached an Attic narinfo keep fetching it after a switch.
async fn attic_shaped_nar(
    state: &AppState,
    access: &CacheAccess<Pull>,
    hash: &str,
) -> ApiResult<Response> {
    let hash: StorePathHash = hash.parse().map_err(|_| ApiError::NoSuchObject)?;
    let mut conn = state.db.conn().await?;
    let object = objects::find(conn.raw(), access.cache.id, &hash)
        .await?
        .filter(|o| o.nar.state != NarState::Broken)
        .ok_or(ApiError::NoSuchObject)?;
    drop(conn);
    state.access.nar(access.cache.id, object.nar.id);
    state
        .metrics
        .nar(&access.cache, false, object.nar.nar_size.max(0) as u64);
    serve_nar(state, object.nar, Representation::Plain).await
}

async fn serve_nar(state: &AppState, nar: NarRecord, repr: Representation) -> ApiResult<Response> {
    let nar = match (nar.state, &nar.staging_key) {
        (NarState::Staged, Some(key)) if repr == Representation::Plain => {
            let key = ObjectKey::new(key.clone()).map_err(|e| ApiError::Internal(e.to_string()))?;
            match state.staging.get(&key, None).await {
                Ok(stream) => return Ok(nar_response(stream, nar.nar_size as u64, repr)),
                // Ingest finished between our read and the open: reload.
                Err(StorageError::NotFound(_)) => reload(state, nar.id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        _ => nar,
    };
    match nar.state {
        NarState::Ready => {
            let len = match repr {
                Representation::Zstd => nar.file_size.unwrap_or_default() as u64,
                Representation::Plain => nar.nar_size as u64,
            };
            let stream =
                nar_reader::chunks_stream(state.db.clone(), state.storage.clone(), &nar, repr);
            Ok(nar_response(stream, len, repr))
        }
        // `.nar.zst` of a staged NAR: no narinfo ever pointed there.
        _ => Err(ApiError::NoSuchObject),
    }
}

async fn reload(state: &AppState, id: i64) -> Result<NarRecord, ApiError> {
    let mut conn = state.db.conn().await?;
    nars::get(conn.raw(), id)
        .await?
        .ok_or(ApiError::Database(DbError::Corrupt {
            column: "nars.id",
            message: "NAR vanished while being served".into(),
        }))
}

fn nar_response(stream: nar_reader::NarStream, len: u64, repr: Representation) -> Response {
    let content_type = match repr {
        Representation::Plain => "application/x-nix-nar",
        Representation::Zstd => "application/zstd",
    };
    let body = Body::from_stream(nar_reader::exact_length(stream, len));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        body,
    )
        .into_response()
}
