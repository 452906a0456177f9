//! Uploads from stock `nix copy --to 'http://HOST/CACHE?compression=…'`
//! (docs/protocol.md "What real Nix clients do").
//!
//! Nix 2.8 pushes a path as `HEAD nar/<file>`, `PUT nar/<file>` (the
//! compressed NAR, `<file>` = `<filehash>.nar[.xz|.zst|…]`), then
//! `PUT <storehash>.narinfo` naming that file in its `URL`. The NAR PUT
//! decompresses while staging ([`crate::nix_staging`]) and records a pending
//! upload (its staged copy keeps its staging intent until a NAR row takes
//! it over, docs/gc.md "Staging objects"); the narinfo PUT ([`super::nix_narinfo`]) checks it against the
//! pending upload and records the path as Attic's `upload-path` does.
//!
//! The uploader's URL keeps answering in its compression for 31 days
//! (`URL_RETENTION_SECS`; Nix 2.8 caches the narinfo it uploaded and later
//! fetches that URL directly): the file is kept as uploaded, under
//! `uploads/`. Narinfo GETs still name Larder's own URLs.
//!
//! Every PUT answers 200 or 204 once its data is safely recorded, never 202;
//! bad uploads get a 4xx with a message (Nix 2.8 hangs after a retried PUT).
//! Past the staging quota, only a client that retries a `503` with
//! `Retry-After` by itself (Nix ≥ 2.35, [`crate::nix_client`]) is asked to
//! wait; older ones are let through.

use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::instrument;

use larder_core::nix::hash::{FileHash, NarHash};
use larder_core::nix::narinfo::Compression;
use larder_shared::db::caches::CacheRecord;
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::objects;
use larder_shared::db::uploads::{self, PendingUpload, UploadedFile};
use larder_shared::db::{CacheId, unix_now};
use larder_shared::storage::{ObjectKey, layout};

use crate::auth::{CacheAccess, Push};
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::nar_url::{own_url, parse_file_name};
use crate::nix_client;
use crate::nix_staging::{self, BodyStream};
use crate::staging;
use crate::state::AppState;
use crate::upload_decode::{self, Decoding};

// --- NAR files ----------------------------------------------------------------

/// The NAR PUT's answer (Nix ignores it; people and tests read it).
#[derive(Debug, Serialize)]
struct UploadedBody {
    compression: &'static str,
    file_hash: String,
    file_size: i64,
    nar_hash: String,
    nar_size: i64,
    /// True when nothing had to be decompressed or staged again.
    deduplicated: bool,
}

fn uploaded(file: &UploadedFile, deduplicated: bool) -> Response {
    Json(UploadedBody {
        compression: file.compression.as_str(),
        file_hash: file.file_hash.to_string(),
        file_size: file.file_size,
        nar_hash: file.nar_hash.to_string(),
        nar_size: file.nar_size,
        deduplicated,
    })
    .into_response()
}

/// `PUT /{cache}/nar/{file}` (`w`): a compressed NAR from `nix copy`.
#[instrument(skip_all, fields(cache = %access.cache.name, file = %file))]
pub async fn put_nar(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let file_hash = parse_file_name(&file).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{file:?} is not a NAR file name: expected <filehash>.nar[.xz|.zst|.bz2|.br|.lz4|.lzip]"
        ))
    })?;
    let cache_id = access.cache.id;
    let now = unix_now();
    let body: BodyStream = Box::pin(body.into_data_stream());

    if let Some(reuse) = reusable(&state, cache_id, &file, &file_hash, now).await? {
        let rewrite = reuse.rewrite.as_ref().map(|k| (&state.storage, k));
        nix_staging::consume_known(body, file_hash, reuse.file.file_size as u64, rewrite).await?;
        let mut conn = state.db.conn().await?;
        uploads::upsert_pending(
            conn.raw(),
            cache_id,
            &file,
            &reuse.file,
            reuse.staging_key.as_ref(),
            now,
        )
        .await?;
        tracing::info!(compression = %reuse.file.compression, "known NAR file uploaded again");
        return Ok(uploaded(&reuse.file, true));
    }

    // Only a NAR that would be staged waits for the backlog, and only when
    // its client will retry by itself.
    if nix_client::retries_busy(&headers)
        && let Err(e) = state.staging_quota.admit(&state.db).await
    {
        if matches!(e, ApiError::StagingFull { .. }) {
            state.metrics.staging_full(&access.cache);
            tracing::info!("staging quota reached; Nix upload refused with 503");
        }
        return Err(e);
    }
    let (head, body) = nix_staging::read_head(body).await?;
    let detected = upload_decode::detect(&head);
    let compression = detected.compression;
    let upload_key = match compression {
        Compression::None => None,
        c => Some(layout::upload_key(&file_hash, c)),
    };
    let write_key = match &upload_key {
        Some(key) if !fresh(&state, key).await? => Some(key),
        _ => None,
    };
    let staging_key = staging::reserve(&state.db).await?;
    let staged = nix_staging::stage(
        &state.storage,
        &state.staging,
        body,
        Decoding {
            detected,
            window_log_max: state.config.http.max_zstd_window_log,
        },
        file_hash,
        &staging_key,
        write_key,
    )
    .await;
    let m = match staged {
        Ok(m) => m,
        Err(e) => {
            let _ = staging::discard(&state.db, &state.staging, &staging_key).await;
            return Err(e);
        }
    };
    let file_entry = UploadedFile {
        file_hash: m.file_hash,
        file_size: m.file_size as i64,
        compression,
        nar_hash: m.nar_hash,
        nar_size: m.nar_size as i64,
        upload_key,
    };
    // A NAR the store already has needs no second staged copy.
    let keep = match nar_stored(&state, &m.nar_hash, now).await {
        Ok(stored) => !stored,
        Err(e) => {
            let _ = staging::discard(&state.db, &state.staging, &staging_key).await;
            return Err(e);
        }
    };
    if keep {
        if let Err(e) =
            staging::record_checksum(&state.db, &staging_key, m.checksum, m.nar_size, None).await
        {
            let _ = staging::discard(&state.db, &state.staging, &staging_key).await;
            return Err(e);
        }
    } else {
        staging::discard(&state.db, &state.staging, &staging_key).await?;
    }
    let recorded = async {
        let mut conn = state.db.conn().await?;
        let key = keep.then_some(&staging_key);
        uploads::upsert_pending(conn.raw(), cache_id, &file, &file_entry, key, now).await
    }
    .await;
    if let Err(e) = recorded {
        if keep {
            let _ = staging::discard(&state.db, &state.staging, &staging_key).await;
        }
        return Err(e.into());
    }
    if keep {
        state.staging_quota.note_staged(m.nar_size);
    }
    tracing::info!(
        %compression,
        file_size = m.file_size,
        nar_size = m.nar_size,
        staged = keep,
        "NAR file uploaded"
    );
    Ok(uploaded(&file_entry, !keep))
}

/// How a re-upload of a known file is taken without decompressing it.
struct Reuse {
    file: UploadedFile,
    /// The pending upload's staged copy, still there.
    staging_key: Option<ObjectKey>,
    /// Store the file again: missing, or old enough that the sweeper might
    /// delete it before our row names it.
    rewrite: Option<ObjectKey>,
}

/// Whether the file named `file_hash` is already known with its NAR still
/// available (a pending upload of this cache with its staged copy, or a
/// stored NAR), so the body only needs hashing.
async fn reusable(
    state: &AppState,
    cache_id: CacheId,
    file_name: &str,
    file_hash: &FileHash,
    now: i64,
) -> ApiResult<Option<Reuse>> {
    let (pending, known) = {
        let mut conn = state.db.conn().await?;
        match uploads::find_pending(conn.raw(), cache_id, file_name).await? {
            Some(p) => (Some(p), None),
            None => (None, uploads::known_file(conn.raw(), file_hash).await?),
        }
    };
    let (file, staging_key) = match (pending, known) {
        (Some(p), _) if p.file.file_hash != *file_hash => return Ok(None),
        (
            Some(PendingUpload {
                file,
                staging_key: Some(key),
                ..
            }),
            _,
        ) => {
            if state.staging.head(&key).await?.is_none() {
                return Ok(None);
            }
            (file, Some(key))
        }
        (Some(PendingUpload { file, .. }), _) | (None, Some(file)) => {
            if !nar_stored(state, &file.nar_hash, now).await? {
                return Ok(None);
            }
            (file, None)
        }
        (None, None) => return Ok(None),
    };
    let rewrite = match &file.upload_key {
        None => None,
        Some(key) => (!fresh(state, key).await?).then(|| key.clone()),
    };
    Ok(Some(Reuse {
        file,
        staging_key,
        rewrite,
    }))
}

/// Whether an upload file exists and was written less than half of
/// `[staging] max-age` ago. The sweeper deletes unused upload files only
/// past `max-age`, so a fresh one stays until our row names it.
async fn fresh(state: &AppState, key: &ObjectKey) -> ApiResult<bool> {
    let Some(meta) = state.storage.head(key).await? else {
        return Ok(false);
    };
    let half = state.config.staging.max_age.get() / 2;
    Ok(SystemTime::now()
        .duration_since(meta.last_modified)
        .map_or(true, |age| age < half))
}

/// Whether the store has this NAR (not broken); touches it so GC keeps it
/// for its grace period while the narinfo is on its way.
async fn nar_stored(state: &AppState, nar_hash: &NarHash, now: i64) -> ApiResult<bool> {
    let mut conn = state.db.conn().await?;
    let Some(nar) = nars::find_by_hash(conn.raw(), nar_hash).await? else {
        return Ok(false);
    };
    if nar.state == NarState::Broken {
        return Ok(false);
    }
    Ok(nars::touch(conn.raw(), nar.id, now).await?)
}

/// The `HEAD nar/<file>` probe of `nix copy` for `w` callers: 200 if the
/// file is known in this cache, pending (Nix 2.8 then skips the upload) or
/// served. Callers with `r` get the download's own headers first
/// ([`super::nar::head`]).
pub async fn upload_probe(
    state: &AppState,
    cache: &CacheRecord,
    file: &str,
) -> ApiResult<Response> {
    let now = unix_now();
    let cache_id = cache.id;
    let mut conn = state.db.conn().await?;
    let mut len = uploads::find_pending(conn.raw(), cache_id, file)
        .await?
        .map(|p| p.file.file_size);
    if len.is_none() {
        len = uploads::find_url(conn.raw(), cache_id, file, now)
            .await?
            .map(|u| u.file.file_size);
    }
    let mut content_type = "application/x-nix-nar";
    if len.is_none()
        && let Some((nar_hash, compression)) = own_url(file)
        && let Some(nar) = objects::nar_in_cache(conn.raw(), cache_id, &nar_hash).await?
    {
        len = match (compression, nar.state) {
            (_, NarState::Broken) => None,
            (Compression::None, _) => Some(nar.nar_size),
            (_, NarState::Ready) => nar.file_size,
            _ => None,
        };
        if compression == Compression::Zstd {
            content_type = "application/zstd";
        }
    }
    let len = len.ok_or(ApiError::NoSuchObject)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
    )
        .into_response())
}
