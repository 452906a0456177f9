//! The Nix binary-cache protocol for reads: `nix-cache-info`, narinfo, NARs.
//! What stock Nix 2.8 sends is recorded in docs/protocol.md.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::instrument;

use larder_core::nix::narinfo::{Compression, NarInfo};
use larder_core::nix::store_path::{StoreDir, StorePathHash};
use larder_shared::audit::AuditEvent;
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::objects::{self, ObjectRecord};
use larder_shared::db::{audit, unix_now};
use larder_shared::retention::Retention;
use larder_shared::signing_keys::{CacheSigning, KeyError};

use crate::auth::{CacheAccess, Delete, PullOrPush};
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::narinfo_signatures::NarinfoSignatures;
use crate::narinfo_texts::RenderedNarinfo;
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
    let entry = access
        .entry
        .as_ref()
        .ok_or_else(|| ApiError::Internal("narinfo read outside the catalog".into()))?;
    let now = unix_now();
    let retention = Retention::of(&access.cache, &state.config.garbage_collection);
    // A key that cannot be opened fails hits only, as before the texts
    // were kept: a miss is still a 404.
    let signing = entry.signing(&state.keys, now);
    let held = signing
        .as_ref()
        .ok()
        .and_then(|s| state.narinfos.get(access.cache.id, hash, s))
        .filter(|r| !retention.read_needs_sync_touch(r.last_accessed_at, now));
    let rendered = match held {
        Some(r) => {
            state.metrics.narinfo(&access.cache, true);
            state.access.object(r.object_id);
            r
        }
        None => {
            let found = render(state, access, hash, signing, retention, now).await?;
            state.metrics.narinfo(&access.cache, found.is_some());
            found.ok_or(ApiError::NoSuchObject)?
        }
    };
    if head_only {
        let len = HeaderValue::from(rendered.text.len());
        return Ok((NARINFO_TYPE, [(header::CONTENT_LENGTH, len)]).into_response());
    }
    Ok((NARINFO_TYPE, rendered.text.clone()).into_response())
}

const NARINFO_TYPE: [(header::HeaderName, &str); 1] =
    [(header::CONTENT_TYPE, "text/x-nix-narinfo")];

/// The narinfo from the database, kept ([`crate::narinfo_texts`]) once its
/// NAR is ingested; `None` if the cache has no such path.
async fn render(
    state: &AppState,
    access: &CacheAccess<PullOrPush>,
    hash: &StorePathHash,
    signing: Result<Arc<CacheSigning>, KeyError>,
    retention: Retention,
    now: i64,
) -> ApiResult<Option<Arc<RenderedNarinfo>>> {
    let since = state.narinfos.generation();
    let mut conn = state.db.conn().await?;
    let mut found = objects::find(conn.raw(), access.cache.id, hash)
        .await?
        .filter(|o| o.nar.state != NarState::Broken);
    // In the second half of its retention a path read is written at once,
    // then looked up again if that write found nothing: a client that sees
    // the narinfo (`nix copy` checking what the cache has) may push a path
    // referring to it next, and GC must not expire it meanwhile. Otherwise
    // the batched access log is enough (docs/gc.md "Closures").
    let mut noted = false;
    if let Some(o) = &found
        && retention.read_needs_sync_touch(o.last_accessed_at, now)
    {
        noted = objects::touch(conn.raw(), &[o.id], now).await? == 1;
        if !noted {
            found = objects::find(conn.raw(), access.cache.id, hash)
                .await?
                .filter(|o| o.nar.state != NarState::Broken);
        }
    }
    drop(conn);
    let Some(object) = found else {
        return Ok(None);
    };
    if !noted {
        state.access.object(object.id);
    }
    let signing = signing?;
    let text = render_narinfo(
        &signing,
        &state.signatures,
        &access.cache.store_dir,
        &object,
    );
    let last_accessed_at = if noted { now } else { object.last_accessed_at };
    let rendered = Arc::new(RenderedNarinfo::new(
        &signing,
        object.id,
        last_accessed_at,
        Bytes::from(text),
    ));
    // A staged NAR's narinfo changes when it is ingested (URL, size).
    if object.nar.state == NarState::Ready {
        state
            .narinfos
            .insert(since, access.cache.id, hash, rendered.clone());
    }
    Ok(Some(rendered))
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
    // The delete and its audit row commit together.
    let mut tx = state.db.begin().await?;
    let gone = objects::delete(tx.raw(), access.cache.id, &hash)
        .await?
        .ok_or(ApiError::NoSuchObject)?;
    let nar_hash = nars::get(tx.raw(), gone.nar_id).await?.map(|n| n.nar_hash);
    let event = AuditEvent::Delete {
        cache: access.cache.name.clone(),
        store_path: gone.store_path.to_string(),
        nar_hash,
    };
    audit::insert(tx.raw(), unix_now(), &access.credentials.actor(), &event).await?;
    tx.commit().await?;
    state.narinfos.forget(access.cache.id, &hash);
    tracing::info!(cache = %access.cache.name, store_path_hash = %hash, subject = access.credentials.subject(), "path deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Renders and signs the narinfo of an object with every active key of the
/// cache, newest first (during a rotation's overlap a host trusting either
/// key accepts it); the URL depends on whether the NAR is still staged
/// (docs/protocol.md "NAR URLs").
pub fn render_narinfo(
    signing: &CacheSigning,
    signatures: &NarinfoSignatures,
    store_dir: &StoreDir,
    object: &ObjectRecord,
) -> String {
    // Served under the cache's store directory, as it always was; the row
    // keeps the directory the path was pushed under (for the audit trail).
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
    let mut info = NarInfo {
        store_path: object.meta.store_path.path.clone(),
        url,
        compression,
        file_hash: None,
        file_size,
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size as u64,
        references: object.meta.references.clone(),
        deriver: object.meta.deriver.clone(),
        system: object.meta.system.clone(),
        sigs: Vec::new(),
        ca: object.meta.ca.clone(),
    };
    let fp = info.fingerprint(store_dir);
    let mut sigs: Vec<String> = signing
        .active
        .iter()
        .map(|k| signatures.sign(k, &fp))
        .collect();
    // Signatures an upload carried under one of this cache's key names are
    // ours (stale, or of a retired key): never republished.
    let own = |s: &str| {
        s.split_once(':')
            .is_some_and(|(name, _)| signing.own_names.iter().any(|n| n == name))
    };
    sigs.extend(object.meta.sigs.iter().filter(|s| !own(s)).cloned());
    info.sigs = sigs;
    info.render(store_dir)
}
