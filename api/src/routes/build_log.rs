//! `PUT` and `GET /{cache}/log/<drv>`: build logs, as `nix copy --to
//! http://…` and `nix store copy-log` upload them (`log/` + the derivation's
//! store path base name) and `nix log` fetches them from a substituter
//! (docs/protocol.md "Build logs and realisations"). Stored zstd-compressed
//! in the database, bounded by `[http] max-log-size`, kept while uploaded
//! or read within the cache's retention.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use larder_core::nix::store_path::StorePath;
use larder_shared::audit::AuditEvent;
use larder_shared::db::{audit, build_logs, unix_now};
use larder_shared::retention::Retention;

use crate::auth::{CacheAccess, Pull, Push};
use crate::content_encoding::read_decoded;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::state::AppState;

/// Logs are text that compresses well; a low level keeps the PUT cheap.
const LOG_ZSTD_LEVEL: i32 = 3;

/// The derivation a log belongs to, as Nix names it: a store path base name
/// ending in `.drv`. Parsed so that no other name is ever stored.
fn drv_name(raw: &str) -> ApiResult<&str> {
    let bad = |why: String| {
        ApiError::BadRequest(format!(
            "invalid log name {raw:?}: {why}; expected log/<hash>-<name>.drv"
        ))
    };
    StorePath::from_base_name(raw).map_err(|e| bad(e.to_string()))?;
    if !raw.ends_with(".drv") {
        return Err(bad("not a derivation".into()));
    }
    Ok(raw)
}

/// `PUT /{cache}/log/<drv>` (`w`): stores (or replaces) the log.
#[instrument(skip_all, fields(cache = %access.cache.name, drv = %drv))]
pub async fn put(
    State(state): State<AppState>,
    Path((_, drv)): Path<(String, String)>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let drv = drv_name(&drv)?;
    let http = &state.config.http;
    let limit = usize::try_from(http.max_log_size).unwrap_or(usize::MAX);
    let log = read_decoded(&headers, body, limit, "build log", http.max_zstd_window_log).await?;
    let size = log.len() as i64;
    let compressed =
        tokio::task::spawn_blocking(move || zstd::encode_all(&log[..], LOG_ZSTD_LEVEL))
            .await
            .map_err(|e| ApiError::Internal(format!("compressing task failed: {e}")))?
            .map_err(|e| ApiError::Internal(format!("compressing the log: {e}")))?;
    let now = unix_now();
    let mut tx = state.db.begin().await?;
    build_logs::put(tx.raw(), access.cache.id, drv, &compressed, size, now).await?;
    let event = AuditEvent::LogPut {
        cache: access.cache.name.clone(),
        drv: drv.to_owned(),
        size: size as u64,
    };
    audit::insert(tx.raw(), now, &access.credentials.actor(), &event).await?;
    tx.commit().await?;
    tracing::info!(size, stored = compressed.len(), "build log stored");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET, HEAD /{cache}/log/<drv>` (`r`): the log as text (decompressed:
/// Nix reads it as it comes).
#[instrument(skip_all, fields(cache = %access.cache.name, drv = %drv))]
pub async fn get(
    State(state): State<AppState>,
    Path((_, drv)): Path<(String, String)>,
    access: CacheAccess<Pull>,
) -> ApiResult<Response> {
    let drv = drv_name(&drv)?;
    let now = unix_now();
    let retention = Retention::of(&access.cache, &state.config.garbage_collection);
    let mut conn = state.db.conn().await?;
    let stored = build_logs::get(
        conn.raw(),
        access.cache.id,
        drv,
        now,
        retention.refresh_before(now),
    )
    .await?
    .ok_or(ApiError::NoSuchObject)?;
    drop(conn);
    let log = tokio::task::spawn_blocking(move || zstd::decode_all(&stored.log_zstd[..]))
        .await
        .map_err(|e| ApiError::Internal(format!("decompressing task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("stored build log unreadable: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}
