//! `PUT /_api/v1/upload-path`: Attic's NAR upload (docs/protocol.md wire format).
//!
//! Metadata comes in `X-Attic-Nar-Info` or as a preamble of
//! `X-Attic-Nar-Info-Preamble-Size` bytes; the rest of the body is the NAR.
//! A NAR the store already has is hashed as proof of possession and linked;
//! a new one is staged. Either way the NAR row, the object, its audit row
//! and the ingest job are recorded in one transaction. While the staging
//! quota is reached, a new NAR is refused (503 with `Retry-After`) before
//! its body is read.

use std::sync::Mutex;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, stream};
use tracing::instrument;

use larder_core::CacheName;
use larder_core::nix::hash::NarHash;
use larder_core::nix::store_path::{AbsoluteStorePath, StoreDir, StorePath, StorePathHash};
use larder_core::wire::{UploadKind, UploadPathNarInfo, UploadPathResult};
use larder_shared::audit::{Actor, PushRoute};
use larder_shared::db::caches::CacheRecord;
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::objects::{self, ObjectMeta, Replace};
use larder_shared::db::staged_chunks::StagedChunks;
use larder_shared::db::{CacheId, unix_now};
use larder_shared::retention::Retention;
use larder_shared::storage::ObjectKey;

use crate::auth::{Credentials, Need, Push};
use crate::error::{ApiError, ApiResult};
use crate::record;
use crate::staging::{self, Expected};
use crate::state::AppState;
use crate::upload_meta;
use larder_shared::token::Permission;

/// Header carrying the metadata JSON.
pub const NAR_INFO_HEADER: &str = "x-attic-nar-info";
/// Header giving the length of a metadata preamble at the start of the body.
pub const PREAMBLE_SIZE_HEADER: &str = "x-attic-nar-info-preamble-size";
/// Header asking to replace the NAR of a path the cache already has
/// (`1` or `true`); needs the `d` permission besides `w`.
pub const REPLACE_HEADER: &str = "x-larder-replace";
/// Largest accepted preamble.
pub const MAX_PREAMBLE: usize = 1024 * 1024;

/// Validated upload metadata.
pub(crate) struct Validated {
    pub(crate) cache: CacheName,
    pub(crate) hash: StorePathHash,
    /// Its store directory is checked against the cache's once the cache
    /// is known.
    meta: ObjectMeta,
    pub(crate) expected: Expected,
    /// From [`REPLACE_HEADER`], once the caller's `d` is checked.
    replace: Replace,
    /// Who is pushing, for `created_by` and the audit trail.
    actor: Actor,
    /// Which route, for the audit trail.
    route: PushRoute,
}

fn validate(info: UploadPathNarInfo) -> ApiResult<Validated> {
    let bad = |m: String| ApiError::BadRequest(m);
    let cache: CacheName = info
        .cache
        .parse()
        .map_err(|e| bad(format!("invalid cache name: {e}")))?;
    let hash: StorePathHash = info
        .store_path_hash
        .parse()
        .map_err(|e| bad(format!("invalid store_path_hash: {e}")))?;
    let (dir, base) = info
        .store_path
        .rsplit_once('/')
        .ok_or_else(|| bad(format!("store_path {:?} is not absolute", info.store_path)))?;
    let store_dir: StoreDir = dir
        .parse()
        .map_err(|e| bad(format!("invalid store directory: {e}")))?;
    let path =
        StorePath::from_base_name(base).map_err(|e| bad(format!("invalid store_path: {e}")))?;
    if path.hash != hash {
        return Err(bad("store_path_hash does not match store_path".into()));
    }
    let references = info
        .references
        .iter()
        .map(|r| {
            StorePath::from_base_name(r).map_err(|e| bad(format!("invalid reference {r:?}: {e}")))
        })
        .collect::<ApiResult<_>>()?;
    let deriver = info
        .deriver
        .as_deref()
        .map(|d| {
            StorePath::from_base_name(d).map_err(|e| bad(format!("invalid deriver {d:?}: {e}")))
        })
        .transpose()?;
    let nar_hash: NarHash = info
        .nar_hash
        .parse()
        .map_err(|e| bad(format!("invalid nar_hash: {e}")))?;
    if info.nar_size == 0 {
        return Err(bad("nar_size must be positive".into()));
    }
    upload_meta::check_signatures(&info.sigs)?;
    let ca = upload_meta::content_address(info.ca.as_deref())?;
    // Free text ends up in narinfo lines: a line break would forge fields.
    if info
        .system
        .as_deref()
        .is_some_and(|v| v.contains(['\n', '\r']))
    {
        return Err(bad("system must not contain line breaks".into()));
    }
    Ok(Validated {
        cache,
        hash,
        meta: ObjectMeta {
            store_path: AbsoluteStorePath::new(store_dir, path),
            references,
            deriver,
            sigs: info.sigs,
            ca,
            system: info.system,
        },
        replace: Replace::Never,
        actor: Actor::default(),
        route: PushRoute::UploadPath,
        expected: Expected {
            nar_hash,
            nar_size: info.nar_size,
        },
    })
}

/// An upload body.
pub(crate) type BodyStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

/// Splits `len` bytes of preamble off the front of the body.
pub(crate) async fn read_preamble(
    mut body: BodyStream,
    len: usize,
) -> ApiResult<(Bytes, BodyStream)> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let chunk = body
            .next()
            .await
            .ok_or_else(|| ApiError::BadRequest("body ended inside the metadata preamble".into()))?
            .map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        buf.extend_from_slice(&chunk);
    }
    let rest = buf.split_off(len).freeze();
    let preamble = buf.freeze();
    let body: BodyStream = if rest.is_empty() {
        body
    } else {
        Box::pin(stream::once(async move { Ok(rest) }).chain(body))
    };
    Ok((preamble, body))
}

/// The handler.
#[instrument(skip_all, fields(cache, store_path_hash))]
pub async fn upload_path(
    State(state): State<AppState>,
    credentials: Credentials,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadPathResult>> {
    let body: BodyStream = Box::pin(body.into_data_stream());
    let (info, body) = if let Some(v) = headers.get(NAR_INFO_HEADER) {
        let info: UploadPathNarInfo = serde_json::from_slice(v.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("invalid {NAR_INFO_HEADER}: {e}")))?;
        (info, body)
    } else if let Some(v) = headers.get(PREAMBLE_SIZE_HEADER) {
        let len: usize = v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::BadRequest(format!("invalid {PREAMBLE_SIZE_HEADER}")))?;
        if len > MAX_PREAMBLE {
            return Err(ApiError::PayloadTooLarge(format!(
                "metadata preamble of {len} bytes exceeds the {MAX_PREAMBLE}-byte limit"
            )));
        }
        let (pre, body) = read_preamble(body, len).await?;
        let info: UploadPathNarInfo = serde_json::from_slice(&pre)
            .map_err(|e| ApiError::BadRequest(format!("invalid metadata preamble: {e}")))?;
        (info, body)
    } else {
        return Err(ApiError::BadRequest(format!(
            "missing {NAR_INFO_HEADER} or {PREAMBLE_SIZE_HEADER} header"
        )));
    };
    accept(
        &state,
        &credentials,
        &headers,
        info,
        body,
        PushRoute::UploadPath,
        None,
    )
    .await
    .map(Json)
}

/// Validated metadata of an upload its caller may make: what every way of
/// recording a pushed path starts from.
pub(crate) struct Admitted {
    /// The metadata.
    pub(crate) v: Validated,
    /// The cache it names.
    pub(crate) cache: CacheRecord,
}

/// Validation, permissions and first-push-wins, before any NAR byte is
/// read: shared by [`accept`] and chunk-level push's prepare and publish
/// ([`crate::chunk_push::prepared`]).
pub(crate) async fn admit(
    state: &AppState,
    credentials: &Credentials,
    headers: &HeaderMap,
    info: UploadPathNarInfo,
    route: PushRoute,
) -> ApiResult<Admitted> {
    let mut v = validate(info)?;
    v.route = route;
    v.actor = credentials.actor();
    let span = tracing::Span::current();
    span.record("cache", v.cache.as_str());
    span.record("store_path_hash", v.hash.as_str());

    let cache = credentials.authorize(state, &v.cache, Push::ANY_OF).await?;
    upload_meta::check_store_dir(&cache, &v.meta.store_path.store_dir)?;
    v.replace = replace_flag(headers)?;
    if v.replace == Replace::Allowed {
        credentials.require(&cache, Permission::Delete)?;
    }
    refuse_early(state, cache.id, &v).await?;
    Ok(Admitted { v, cache })
}

/// Everything after the metadata is read, shared with chunk-level push
/// (whose body is the NAR read back from its `chunks`): [`admit`], then
/// linking a known NAR after proof of possession or staging a new one,
/// recorded in one transaction.
pub(crate) async fn accept(
    state: &AppState,
    credentials: &Credentials,
    headers: &HeaderMap,
    info: UploadPathNarInfo,
    body: BodyStream,
    route: PushRoute,
    chunks: Option<&Mutex<StagedChunks>>,
) -> ApiResult<UploadPathResult> {
    let state = state.clone();
    let Admitted { v, cache } = admit(&state, credentials, headers, info, route).await?;
    let now = unix_now();

    let existing = {
        let mut conn = state.db.conn().await?;
        nars::find_by_hash(conn.raw(), &v.expected.nar_hash).await?
    };
    let existing = match existing.filter(|n| n.state != NarState::Broken) {
        // Touch first: GC only deletes NARs untouched for its grace period,
        // so the NAR survives while we read the body.
        Some(nar) => {
            let mut conn = state.db.conn().await?;
            nars::touch(conn.raw(), nar.id, now).await?.then_some(nar)
        }
        None => None,
    };
    if let Some(nar) = existing {
        staging::prove_possession(body, v.expected).await?;
        let mut tx = state.db.begin().await?;
        record::link_existing(&mut tx, &v.path(&state, &cache), nar.id, now)
            .await?
            .ok_or_else(|| ApiError::Internal("NAR vanished during upload".into()))?;
        tx.commit().await?;
        state.narinfos.forget(cache.id, &v.hash);
        tracing::info!(nar_id = nar.id.get(), "linked existing NAR");
        state.metrics.upload(&cache, true, v.expected.nar_size);
        return Ok(UploadPathResult {
            kind: UploadKind::Deduplicated,
            file_size: nar.file_size.map(|s| s as u64),
            frac_deduplicated: Some(1.0),
        });
    }

    // Only a NAR that would be staged waits for the backlog: a known one
    // stores nothing new.
    if let Err(e) = state.staging_quota.admit(&state.db).await {
        if matches!(e, ApiError::StagingFull { .. }) {
            state.metrics.staging_full(&cache);
            tracing::info!("staging quota reached; upload refused with 503");
        }
        return Err(e);
    }
    let key = staging::reserve(&state.db).await?;
    let staged = staging::stage(&state.db, &state.staging, &key, body, v.expected, chunks);
    let committed = match staged.await {
        Ok(()) => record_staged(&state, &cache, &v, &key, now).await,
        Err(e) => Err(e),
    };
    match committed {
        Ok(true) => state.staging_quota.note_staged(v.expected.nar_size),
        Ok(false) => {
            // A concurrent upload of the same NAR won; ours is surplus.
            staging::discard(&state.db, &state.staging, &key).await?;
        }
        Err(e) => {
            let _ = staging::discard(&state.db, &state.staging, &key).await;
            return Err(e);
        }
    }
    tracing::info!(nar_size = v.expected.nar_size, "staged upload");
    state.metrics.upload(&cache, false, v.expected.nar_size);
    Ok(UploadPathResult {
        kind: UploadKind::Uploaded,
        file_size: None,
        frac_deduplicated: None,
    })
}

/// Reads [`REPLACE_HEADER`]; absent means first push wins.
fn replace_flag(headers: &HeaderMap) -> ApiResult<Replace> {
    match headers.get(REPLACE_HEADER).map(|v| v.as_bytes()) {
        None | Some(b"0" | b"false") => Ok(Replace::Never),
        Some(b"1" | b"true") => Ok(Replace::Allowed),
        Some(_) => Err(ApiError::BadRequest(format!(
            "invalid {REPLACE_HEADER}: expected 1, true, 0 or false"
        ))),
    }
}

/// Answers 409 before the body is read when the path is already served
/// with another, healthy NAR: the uploader need not send it. Only a
/// shortcut; the upsert decides again ([`record`]), race-free.
async fn refuse_early(state: &AppState, cache_id: CacheId, v: &Validated) -> ApiResult<()> {
    if v.replace == Replace::Allowed {
        return Ok(());
    }
    let mut conn = state.db.conn().await?;
    match objects::find(conn.raw(), cache_id, &v.hash).await? {
        Some(o) if o.nar.nar_hash != v.expected.nar_hash && o.nar.state != NarState::Broken => {
            Err(ApiError::PathConflict {
                store_path_hash: v.hash.clone(),
                nar_hash: v.expected.nar_hash,
            })
        }
        _ => Ok(()),
    }
}

/// Records NAR, object and job in one transaction ([`record::record_staged`]).
/// Returns false when the NAR row already existed (our staged copy is then
/// not needed).
pub(crate) async fn record_staged(
    state: &AppState,
    cache: &CacheRecord,
    v: &Validated,
    key: &ObjectKey,
    now: i64,
) -> ApiResult<bool> {
    let mut tx = state.db.begin().await?;
    let recorded = record::record_staged(&mut tx, &v.path(state, cache), key, now).await?;
    tx.commit().await?;
    state.narinfos.forget(cache.id, &v.hash);
    Ok(recorded.used_staged_copy)
}

impl Validated {
    /// What [`record`] records.
    pub(crate) fn path(&self, state: &AppState, cache: &CacheRecord) -> record::NewPath<'_> {
        record::NewPath {
            cache_id: cache.id,
            hash: &self.hash,
            meta: &self.meta,
            nar_hash: &self.expected.nar_hash,
            nar_size: self.expected.nar_size,
            replace: self.replace,
            origin: record::Origin::Push {
                actor: &self.actor,
                cache: &self.cache,
                route: self.route,
            },
            retention: Some(Retention::of(cache, &state.config.garbage_collection)),
        }
    }
}
