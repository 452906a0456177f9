//! Realisations of content-addressed derivation outputs: `PUT, GET, HEAD
//! /{cache}/realisations/<drvhash>!<output>.doi` (Nix ≤ 2.34) and
//! `/{cache}/build-trace-v2/<drv>/<output>.doi` (Nix 2.35). Larder keeps
//! each document opaque (checked to be JSON, signed by its uploader or
//! not) under the path it was uploaded to, as long as the cache keeps the
//! output its `outPath` names (docs/protocol.md "Build logs and
//! realisations").

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::instrument;

use larder_core::nix::store_path::StorePath;
use larder_shared::audit::AuditEvent;
use larder_shared::db::{audit, realisations, unix_now};
use larder_shared::retention::Retention;

use crate::auth::{CacheAccess, Pull, Push};
use crate::content_encoding::read_decoded;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::state::AppState;

/// Largest document accepted: a realisation is a few hundred bytes of JSON
/// (output path, signatures, dependent realisations).
pub const MAX_REALISATION: usize = 64 * 1024;

/// Longest path segment accepted (a drv output id is about 80 characters).
const MAX_SEGMENT: usize = 256;

/// One segment of a document path, as Nix writes them: hashes (`sha256:…`),
/// store path names, output names, `!` between id parts.
fn segment<'a>(raw: &'a str, what: &str) -> ApiResult<&'a str> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_SEGMENT
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=:!".contains(&b));
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::BadRequest(format!("invalid {what} {raw:?}")))
    }
}

fn doi<'a>(file: &'a str, what: &str) -> ApiResult<&'a str> {
    let stem = file
        .strip_suffix(".doi")
        .ok_or_else(|| ApiError::BadRequest(format!("{what} must end in .doi")))?;
    segment(stem, what)
}

/// `realisations/<drvhash>!<output>.doi`: the stored key.
fn legacy_key(file: &str) -> ApiResult<String> {
    let id = doi(file, "realisation id")?;
    if !id.contains('!') {
        return Err(ApiError::BadRequest(format!(
            "invalid realisation id {id:?}: expected <drv hash>!<output>"
        )));
    }
    Ok(format!("realisations/{id}.doi"))
}

/// `build-trace-v2/<drv>/<output>.doi`: the stored key.
fn trace_key(drv: &str, file: &str) -> ApiResult<String> {
    StorePath::from_base_name(drv)
        .ok()
        .filter(|_| drv.ends_with(".drv"))
        .ok_or_else(|| ApiError::BadRequest(format!("invalid derivation {drv:?}")))?;
    let output = doi(file, "output name")?;
    Ok(format!("build-trace-v2/{drv}/{output}.doi"))
}

/// `PUT /{cache}/realisations/<id>.doi` (`w`).
pub async fn put_legacy(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    put(&state, &access, &legacy_key(&file)?, &headers, body).await
}

/// `GET, HEAD /{cache}/realisations/<id>.doi` (`r`).
pub async fn get_legacy(
    State(state): State<AppState>,
    Path((_, file)): Path<(String, String)>,
    access: CacheAccess<Pull>,
) -> ApiResult<Response> {
    get(&state, &access, &legacy_key(&file)?).await
}

/// `PUT /{cache}/build-trace-v2/<drv>/<output>.doi` (`w`).
pub async fn put_trace(
    State(state): State<AppState>,
    Path((_, drv, file)): Path<(String, String, String)>,
    access: CacheAccess<Push>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    put(&state, &access, &trace_key(&drv, &file)?, &headers, body).await
}

/// `GET, HEAD /{cache}/build-trace-v2/<drv>/<output>.doi` (`r`).
pub async fn get_trace(
    State(state): State<AppState>,
    Path((_, drv, file)): Path<(String, String, String)>,
    access: CacheAccess<Pull>,
) -> ApiResult<Response> {
    get(&state, &access, &trace_key(&drv, &file)?).await
}

#[instrument(skip_all, fields(cache = %access.cache.name, key))]
async fn put(
    state: &AppState,
    access: &CacheAccess<Push>,
    key: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let window = state.config.http.max_zstd_window_log;
    let doc = read_decoded(headers, body, MAX_REALISATION, "realisation", window).await?;
    let out = out_path_hash(&doc)?;
    let now = unix_now();
    let mut tx = state.db.begin().await?;
    realisations::put(tx.raw(), access.cache.id, key, &doc, out.as_deref(), now).await?;
    let event = AuditEvent::RealisationPut {
        cache: access.cache.name.clone(),
        key: key.to_owned(),
    };
    audit::insert(tx.raw(), now, &access.credentials.actor(), &event).await?;
    tx.commit().await?;
    tracing::info!(key, "realisation stored");
    Ok(StatusCode::NO_CONTENT)
}

/// The fields of a realisation Larder reads; the rest stays opaque.
#[derive(serde::Deserialize)]
struct Realisation {
    /// The output, `<hash>-<name>` (or, in some writers, its full path).
    #[serde(rename = "outPath")]
    out_path: Option<String>,
}

/// Checks `doc` is a JSON object; the store path hash of the output it
/// names, which the document is kept with.
fn out_path_hash(doc: &[u8]) -> ApiResult<Option<String>> {
    let parsed: Realisation = serde_json::from_slice(doc)
        .map_err(|e| ApiError::BadRequest(format!("a realisation must be a JSON object: {e}")))?;
    let Some(out) = parsed.out_path else {
        return Ok(None);
    };
    let base = out.rsplit('/').next().unwrap_or(&out);
    let path = StorePath::from_base_name(base)
        .map_err(|e| ApiError::BadRequest(format!("invalid outPath {out:?}: {e}")))?;
    Ok(Some(path.hash.to_string()))
}

async fn get(state: &AppState, access: &CacheAccess<Pull>, key: &str) -> ApiResult<Response> {
    let now = unix_now();
    let retention = Retention::of(&access.cache, &state.config.garbage_collection);
    let mut conn = state.db.conn().await?;
    let doc = realisations::get(
        conn.raw(),
        access.cache.id,
        key,
        now,
        retention.refresh_before(now),
    )
    .await?
    .ok_or(ApiError::NoSuchObject)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response())
}
