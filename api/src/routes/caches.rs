//! `/_api/v1/caches`: listing, statistics and pins.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use larder_core::nix::store_path::StorePath;
use larder_core::wire::{CacheSummary, Pin, PinRequest};
use larder_shared::audit::AuditEvent;
use larder_shared::db::pins;
use larder_shared::db::stats::{self, CacheStats};
use larder_shared::db::{audit, caches, objects, unix_now};

use crate::auth::{CacheAccess, Credentials, Pull, Push};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Path};
use crate::state::AppState;

/// `GET /_api/v1/caches`: caches the caller has any permission on (public
/// caches count as `r` for everyone).
pub async fn list(
    State(state): State<AppState>,
    credentials: Credentials,
) -> ApiResult<Json<Vec<CacheSummary>>> {
    let mut conn = state.db.conn().await?;
    let all = caches::list(conn.raw()).await?;
    let out = all
        .iter()
        .filter_map(|c| {
            let perms = credentials.permissions_on(&c.name, Some(c));
            perms.any().then(|| CacheSummary {
                name: c.name.to_string(),
                is_public: c.is_public,
                priority: c.priority,
                permissions: perms.granted().map(|p| p.claim_key().to_owned()).collect(),
            })
        })
        .collect();
    Ok(Json(out))
}

/// `GET /_api/v1/caches/{cache}/stats` (`r`).
pub async fn cache_stats(
    State(state): State<AppState>,
    access: CacheAccess<Pull>,
) -> ApiResult<Json<CacheStats>> {
    let mut conn = state.db.conn().await?;
    Ok(Json(stats::cache(conn.raw(), access.cache.id).await?))
}

/// `GET /_api/v1/caches/{cache}/pins` (`r`).
pub async fn list_pins(
    State(state): State<AppState>,
    access: CacheAccess<Pull>,
) -> ApiResult<Json<Vec<Pin>>> {
    let mut conn = state.db.conn().await?;
    let pins = pins::list(conn.raw(), access.cache.id).await?;
    Ok(Json(pins.into_iter().map(pin_json).collect()))
}

/// A stored pin as the API shows it.
fn pin_json(pin: pins::Pin) -> Pin {
    Pin {
        name: pin.name,
        store_path: pin.store_path,
        store_path_hash: pin.store_path_hash,
        created_at: pin.created_at,
    }
}

fn validate_pin_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "pin names are 1 to 100 characters of A-Z a-z 0-9 - _ . +".into(),
        ))
    }
}

/// `PUT /_api/v1/caches/{cache}/pins/{name}` (`w`): the path and its closure
/// in this cache never expire while pinned.
pub async fn set_pin(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    access: CacheAccess<Push>,
    JsonBody(req): JsonBody<PinRequest>,
) -> ApiResult<StatusCode> {
    validate_pin_name(&name)?;
    let path = StorePath::from_absolute_path(&access.cache.store_dir, &req.store_path)
        .map_err(|e| ApiError::BadRequest(format!("invalid store_path: {e}")))?;
    let now = unix_now();
    let mut conn = state.db.conn().await?;
    // Marked used before it is looked up, so a GC that marked before this
    // pin existed keeps the path (its DELETE re-checks idleness) or has
    // already deleted it (404 here), never deletes it once pinned.
    objects::touch_by_hashes(conn.raw(), access.cache.id, &[path.hash.as_str()], now, now).await?;
    objects::find(conn.raw(), access.cache.id, &path.hash)
        .await?
        .ok_or(ApiError::NoSuchObject)?;
    drop(conn);
    // The pin and its audit row commit together (writes only, so SQLite
    // takes the write lock with its first statement).
    let now = unix_now();
    let mut tx = state.db.begin().await?;
    pins::set(
        tx.raw(),
        access.cache.id,
        &name,
        &path.hash,
        &req.store_path,
        now,
    )
    .await?;
    let event = AuditEvent::PinSet {
        cache: access.cache.name.clone(),
        pin: name,
        store_path: req.store_path,
    };
    audit::insert(tx.raw(), now, &access.credentials.actor(), &event).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /_api/v1/caches/{cache}/pins/{name}` (`w`).
pub async fn remove_pin(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    access: CacheAccess<Push>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin().await?;
    if !pins::remove(tx.raw(), access.cache.id, &name).await? {
        return Err(ApiError::NotFound);
    }
    let event = AuditEvent::PinRemove {
        cache: access.cache.name.clone(),
        pin: name,
    };
    audit::insert(tx.raw(), unix_now(), &access.credentials.actor(), &event).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
