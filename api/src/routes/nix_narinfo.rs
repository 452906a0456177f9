//! `PUT /{cache}/{storehash}.narinfo` from stock `nix copy` (docs/protocol.md "What real Nix clients do"): the
//! last request of a path's push. The narinfo's `URL` names the NAR file
//! uploaded just before (`routes::nix_upload`); the path is recorded only if
//! that file is known in this cache and matches the narinfo (`NarHash`,
//! `NarSize`, `Compression`, and `FileHash`/`FileSize` when given), in the
//! same transaction shape as Attic's `upload-path` ([`crate::record`]), with
//! the uploader's `Sig`s, references, deriver, CA and system kept. The
//! uploader's URL is recorded with it, to keep answering for
//! [`URL_RETENTION_SECS`].
//!
//! The file may be a pending upload (the usual case), an uploader URL of
//! another path of this cache (Nix's `HEAD` found it, so it sent no NAR), or
//! one of Larder's own URLs (`nar/<narhash>.nar`, `.nar.zst`).

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use tracing::instrument;

use larder_core::nix::hash::{FileHash, NarHash};
use larder_core::nix::narinfo::{Compression, NarInfo};
use larder_core::nix::store_path::{AbsoluteStorePath, StorePathHash};
use larder_shared::audit::PushRoute;
use larder_shared::db::nars::{self, NarRecord, NarState};
use larder_shared::db::objects::{self, ObjectMeta, Replace};
use larder_shared::db::uploads::{
    self, PendingUpload, URL_RETENTION_SECS, UploadUrl, UploadedFile,
};
use larder_shared::db::{CacheId, ObjectId, listings, unix_now};
use larder_shared::retention::Retention;

use crate::auth::{CacheAccess, Push};
use crate::content_encoding::read_decoded;
use crate::error::{ApiError, ApiResult};
use crate::nar_url::own_url;
use crate::record::{self, NewPath, Origin};
use crate::staging;
use crate::state::AppState;
use crate::upload_meta;

/// Largest narinfo accepted (real ones are a few KiB).
pub const MAX_NARINFO: usize = 1024 * 1024;

/// Where the NAR a narinfo names comes from.
enum Source {
    /// Uploaded to this cache, narinfo not yet recorded.
    Pending(PendingUpload),
    /// An uploader URL of another path of this cache (same file).
    Url(UploadUrl),
    /// One of Larder's own URLs for a NAR of this cache.
    Own(NarRecord, Compression),
}

/// `PUT /{cache}/{storehash}.narinfo`: records the path whose NAR was
/// uploaded to the narinfo's `URL`, after checking they match.
#[instrument(skip_all, fields(cache = %access.cache.name, store_path_hash = %hash))]
pub async fn put(
    state: &AppState,
    access: &CacheAccess<Push>,
    hash: StorePathHash,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let window = state.config.http.max_zstd_window_log;
    let text = read_decoded(headers, body, MAX_NARINFO, "narinfo", window).await?;
    let text = std::str::from_utf8(&text)
        .map_err(|_| ApiError::BadRequest("narinfo is not UTF-8".into()))?;
    let bad = |m: String| ApiError::BadRequest(m);
    let (info, store_dir) =
        NarInfo::parse(text).map_err(|e| bad(format!("invalid narinfo: {e}")))?;
    info.validate()
        .map_err(|e| bad(format!("invalid narinfo: {e}")))?;
    if info.store_path.hash != hash {
        return Err(bad(format!(
            "narinfo is for {}, but was uploaded as {hash}.narinfo",
            info.store_path
        )));
    }
    upload_meta::check_store_dir(&access.cache, &store_dir)?;
    upload_meta::check_signatures(&info.sigs)?;
    let ca = upload_meta::content_address(info.ca.as_deref())?;
    let file_name = info
        .url
        .strip_prefix("nar/")
        .filter(|f| !f.is_empty() && !f.contains('/'))
        .ok_or_else(|| {
            bad(format!(
                "narinfo URL {:?} is not nar/<file>: upload the NAR to nar/<file> first",
                info.url
            ))
        })?;
    let meta = ObjectMeta {
        store_path: AbsoluteStorePath::new(store_dir, info.store_path.clone()),
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        sigs: info.sigs.clone(),
        ca,
        system: info.system.clone(),
    };
    let actor = access.credentials.actor();
    let path = NewPath {
        cache_id: access.cache.id,
        hash: &hash,
        meta: &meta,
        nar_hash: &info.nar_hash,
        nar_size: info.nar_size,
        // `nix copy` has no way to ask; replacing goes through upload-path.
        replace: Replace::Never,
        origin: Origin::Push {
            actor: &actor,
            cache: &access.cache.name,
            route: PushRoute::NixCopy,
        },
        retention: Some(Retention::of(
            &access.cache,
            &state.config.garbage_collection,
        )),
    };
    // A concurrent narinfo may claim the pending upload first; the second
    // attempt then finds the URL it recorded.
    for _ in 0..3 {
        match record_narinfo(state, &path, &info, file_name).await {
            Ok(true) => {
                tracing::info!(nar_size = info.nar_size, "path recorded from narinfo");
                return Ok(StatusCode::NO_CONTENT);
            }
            Ok(false) => {}
            Err(e @ ApiError::PathConflict { .. }) => {
                discard_pending(state, access.cache.id, file_name).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::BadRequest(format!(
        "nar/{file_name} is being recorded by another request; retry"
    )))
}

/// A narinfo refused because the path is published with another NAR: its
/// NAR upload will never be recorded, so its staged copy goes now (the
/// compressed upload file, shared by file hash, is left to the sweeper,
/// which deletes it once nothing names it).
async fn discard_pending(state: &AppState, cache_id: CacheId, file_name: &str) -> ApiResult<()> {
    let mut conn = state.db.conn().await?;
    let Some(p) = uploads::find_pending(conn.raw(), cache_id, file_name).await? else {
        return Ok(());
    };
    let Some(p) = uploads::take_pending(conn.raw(), p.id).await? else {
        return Ok(());
    };
    drop(conn);
    if let Some(key) = p.staging_key {
        staging::discard(&state.db, &state.staging, &key).await?;
    }
    Ok(())
}

/// Checks a narinfo against the file it names.
fn check(info: &NarInfo, file: &UploadedFile, file_name: &str) -> ApiResult<()> {
    let actual = FileFacts {
        nar_hash: file.nar_hash,
        nar_size: file.nar_size,
        compression: file.compression,
        file_hash: Some(file.file_hash),
        file_size: Some(file.file_size),
    };
    actual.check(info, file_name)
}

/// Checks a narinfo against a NAR of this cache named by Larder's own URL.
fn check_own(
    info: &NarInfo,
    nar: &NarRecord,
    compression: Compression,
    file_name: &str,
) -> ApiResult<()> {
    let actual = match compression {
        // The file is the NAR.
        Compression::None => FileFacts {
            nar_hash: nar.nar_hash,
            nar_size: nar.nar_size,
            compression,
            file_hash: Some(FileHash::from_bytes(*nar.nar_hash.as_bytes())),
            file_size: Some(nar.nar_size),
        },
        // Larder does not record the hash of its own `.nar.zst`.
        _ => FileFacts {
            nar_hash: nar.nar_hash,
            nar_size: nar.nar_size,
            compression,
            file_hash: None,
            file_size: nar.file_size,
        },
    };
    actual.check(info, file_name)
}

/// What is known about the file a narinfo names.
struct FileFacts {
    nar_hash: NarHash,
    nar_size: i64,
    compression: Compression,
    file_hash: Option<FileHash>,
    file_size: Option<i64>,
}

impl FileFacts {
    /// The first field of `info` that contradicts these facts, as a 4xx.
    fn check(&self, info: &NarInfo, file_name: &str) -> ApiResult<()> {
        let mismatch = |what: &str, says: String, is: String| {
            Err(ApiError::InvalidNar(format!(
                "narinfo {what} is {says}, but the NAR uploaded to nar/{file_name} has {is}"
            )))
        };
        if info.nar_hash != self.nar_hash {
            return mismatch(
                "NarHash",
                info.nar_hash.to_string(),
                self.nar_hash.to_string(),
            );
        }
        if info.nar_size != self.nar_size as u64 {
            return mismatch(
                "NarSize",
                info.nar_size.to_string(),
                self.nar_size.to_string(),
            );
        }
        if info.compression != self.compression {
            return mismatch(
                "Compression",
                info.compression.to_string(),
                self.compression.to_string(),
            );
        }
        if let (Some(says), Some(is)) = (info.file_hash, self.file_hash)
            && says != is
        {
            return mismatch("FileHash", says.to_string(), is.to_string());
        }
        if let (Some(says), Some(is)) = (info.file_size, self.file_size)
            && says != is as u64
        {
            return mismatch("FileSize", says.to_string(), is.to_string());
        }
        Ok(())
    }
}

/// Finds what `nar/<file_name>` is in this cache.
async fn resolve(
    state: &AppState,
    cache_id: CacheId,
    file_name: &str,
) -> ApiResult<Option<Source>> {
    let mut conn = state.db.conn().await?;
    if let Some(p) = uploads::find_pending(conn.raw(), cache_id, file_name).await? {
        return Ok(Some(Source::Pending(p)));
    }
    if let Some(u) = uploads::find_url(conn.raw(), cache_id, file_name, unix_now()).await? {
        return Ok(Some(Source::Url(u)));
    }
    if let Some((nar_hash, compression)) = own_url(file_name)
        && let Some(nar) = objects::nar_in_cache(conn.raw(), cache_id, &nar_hash).await?
        && nar.state != NarState::Broken
        && (compression == Compression::None || nar.state == NarState::Ready)
    {
        return Ok(Some(Source::Own(nar, compression)));
    }
    Ok(None)
}

/// The file's data is gone: forget it so the next push uploads it again
/// (instead of being told by `HEAD` that it exists), and say so.
async fn gone(state: &AppState, cache_id: CacheId, file_name: &str) -> ApiError {
    if let Ok(mut conn) = state.db.conn().await {
        let _ = uploads::forget_file(conn.raw(), cache_id, file_name).await;
    }
    ApiError::BadRequest(format!(
        "the NAR uploaded to nar/{file_name} is no longer stored; push the path again"
    ))
}

/// One attempt at recording a narinfo; false if a concurrent request
/// claimed the pending upload between our read and our claim.
async fn record_narinfo(
    state: &AppState,
    path: &NewPath<'_>,
    info: &NarInfo,
    file_name: &str,
) -> ApiResult<bool> {
    let cache_id = path.cache_id;
    let now = unix_now();
    let source = resolve(state, cache_id, file_name).await?.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "narinfo URL nar/{file_name} names no NAR uploaded to this cache: PUT the NAR there first"
        ))
    })?;
    match &source {
        Source::Pending(p) => check(info, &p.file, file_name)?,
        Source::Url(u) => check(info, &u.file, file_name)?,
        Source::Own(nar, c) => check_own(info, nar, *c, file_name)?,
    }
    if let Source::Pending(PendingUpload {
        staging_key: Some(key),
        ..
    }) = &source
        && state.staging.head(key).await?.is_none()
    {
        return Err(gone(state, cache_id, file_name).await);
    }

    let mut tx = state.db.begin().await?;
    let mut surplus = None;
    let (object_id, file) = match source {
        Source::Pending(p) => {
            let Some(p) = uploads::take_pending(tx.raw(), p.id).await? else {
                return Ok(false);
            };
            // The row may have been replaced since we read it.
            check(info, &p.file, file_name)?;
            match &p.staging_key {
                Some(key) => {
                    let r = match record::record_staged(&mut tx, path, key, now).await {
                        Err(ApiError::StagedCopyExpired) => {
                            drop(tx);
                            return Err(gone(state, cache_id, file_name).await);
                        }
                        r => r?,
                    };
                    if !r.used_staged_copy {
                        surplus = Some(key.clone());
                    }
                    (r.object_id, Some(p.file))
                }
                None => match link_by_hash(&mut tx, path, &p.file.nar_hash, now).await? {
                    Some(id) => (id, Some(p.file)),
                    None => {
                        drop(tx);
                        return Err(gone(state, cache_id, file_name).await);
                    }
                },
            }
        }
        Source::Url(u) => match link_by_hash(&mut tx, path, &u.file.nar_hash, now).await? {
            Some(id) => (id, Some(u.file)),
            None => {
                drop(tx);
                return Err(gone(state, cache_id, file_name).await);
            }
        },
        Source::Own(nar, _) => match record::link_existing(&mut tx, path, nar.id, now).await? {
            Some(id) => (id, None),
            None => {
                drop(tx);
                return Err(gone(state, cache_id, file_name).await);
            }
        },
    };
    if let Some(file) = file.filter(|f| f.upload_key.is_some()) {
        let expires = now + URL_RETENTION_SECS;
        uploads::upsert_url(
            tx.raw(),
            cache_id,
            object_id,
            file_name,
            &file,
            now,
            expires,
        )
        .await?;
    }
    listings::bind_uploaded_listing(tx.raw(), cache_id, path.hash, path.nar_hash).await?;
    tx.commit().await?;
    state.narinfos.forget(cache_id, path.hash);
    if let Some(key) = surplus {
        staging::discard(&state.db, &state.staging, &key).await?;
    }
    Ok(true)
}

/// Links the path to the stored NAR with this hash, if it is still there.
async fn link_by_hash(
    tx: &mut larder_shared::db::Tx,
    path: &NewPath<'_>,
    nar_hash: &NarHash,
    now: i64,
) -> ApiResult<Option<ObjectId>> {
    let nar = nars::find_by_hash(tx.raw(), nar_hash)
        .await?
        .filter(|n| n.state != NarState::Broken);
    match nar {
        Some(nar) => record::link_existing(tx, path, nar.id, now).await,
        None => Ok(None),
    }
}
