//! `/_api/v1/cache-config/{cache}`: create, read, configure, destroy a cache
//! (Attic's JSON shape, docs/protocol.md).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use tracing::instrument;

use larder_core::CacheName;
use larder_core::nix::signing::SigningKey;
use larder_core::nix::store_path::StoreDir;
use larder_core::wire::{CacheConfig, KeypairConfig, RetentionPeriodConfig};
use larder_shared::audit::AuditEvent;
use larder_shared::db::caches::{self, CacheUpdate, NewCache};
use larder_shared::db::{audit, cache_keys, unix_now};
use larder_shared::signing_keys::rotation::{self, NewKey};
use larder_shared::token::Permission;

use crate::auth::Need;
use crate::auth::{Credentials, PullOrPush};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Path};
use crate::state::AppState;

fn parse_name(raw: &str) -> ApiResult<CacheName> {
    raw.parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid cache name: {e}")))
}

/// The key a `keypair` field asks for; a bad import is the caller's error.
fn new_key(kp: &KeypairConfig) -> ApiResult<NewKey<'static>> {
    match kp {
        KeypairConfig::Generate => Ok(NewKey::Generate),
        KeypairConfig::Keypair(s) => s
            .parse::<SigningKey>()
            .map(|k| NewKey::Import(Box::new(k)))
            .map_err(|e| ApiError::BadRequest(format!("invalid keypair: {e}"))),
    }
}

fn parse_store_dir(s: &str) -> ApiResult<StoreDir> {
    s.parse::<StoreDir>()
        .map_err(|e| ApiError::BadRequest(format!("invalid store_dir: {e}")))
}

/// The fields a `PATCH` changes, with their new values, for the audit
/// trail (read-only fields are ignored); a keypair is named, never included.
fn audited_changes(cfg: &CacheConfig) -> serde_json::Value {
    let mut changes = serde_json::to_value(CacheConfig {
        keypair: None,
        public_key: None,
        substituter_endpoint: None,
        api_endpoint: None,
        ..cfg.clone()
    })
    .unwrap_or_else(|_| serde_json::json!({}));
    if let (Some(kp), Some(map)) = (&cfg.keypair, changes.as_object_mut()) {
        let what = match kp {
            KeypairConfig::Generate => "Generate",
            KeypairConfig::Keypair(_) => "imported",
        };
        map.insert("keypair".into(), what.into());
    }
    changes
}

fn api_endpoint(state: &AppState) -> String {
    state
        .config
        .api_endpoint
        .clone()
        .unwrap_or_else(|| format!("http://{}/", state.config.listen))
}

/// `GET`: `r` or `w`.
#[instrument(skip_all, fields(cache = %cache))]
pub async fn get(
    State(state): State<AppState>,
    Path(cache): Path<String>,
    credentials: Credentials,
) -> ApiResult<Json<CacheConfig>> {
    let name = parse_name(&cache)?;
    let rec = credentials
        .authorize(&state, &name, PullOrPush::ANY_OF)
        .await?;
    let mut conn = state.db.conn().await?;
    let now = unix_now();
    let public_keys: Vec<String> = cache_keys::of_cache(conn.raw(), rec.id)
        .await?
        .into_iter()
        .filter(|k| k.is_active(now))
        .map(|k| k.public_key)
        .collect();
    drop(conn);
    let endpoint = api_endpoint(&state);
    let base = endpoint.trim_end_matches('/');
    Ok(Json(CacheConfig {
        keypair: None,
        public_key: public_keys.first().cloned(),
        public_keys: Some(public_keys),
        no_overlap: None,
        is_public: Some(rec.is_public),
        store_dir: Some(rec.store_dir.to_string()),
        priority: Some(rec.priority as i32),
        upstream_cache_key_names: Some(rec.upstream_cache_key_names.clone()),
        retention_period: Some(match rec.retention_period {
            None => RetentionPeriodConfig::Global,
            Some(s) => RetentionPeriodConfig::Period(s as u64),
        }),
        substituter_endpoint: Some(format!("{base}/{name}")),
        api_endpoint: Some(format!("{base}/")),
    }))
}

/// `POST`: `cc`; requires keypair, is_public, store_dir, priority, upstream_cache_key_names.
#[instrument(skip_all, fields(cache = %cache))]
pub async fn create(
    State(state): State<AppState>,
    Path(cache): Path<String>,
    credentials: Credentials,
    JsonBody(cfg): JsonBody<CacheConfig>,
) -> ApiResult<StatusCode> {
    let name = parse_name(&cache)?;
    credentials.authorize_create(&state, &name).await?;
    let missing = |f: &str| ApiError::BadRequest(format!("missing field {f:?} for cache creation"));
    let kp = cfg.keypair.as_ref().ok_or_else(|| missing("keypair"))?;
    let is_public = cfg.is_public.ok_or_else(|| missing("is_public"))?;
    let store_dir = cfg
        .store_dir
        .as_deref()
        .ok_or_else(|| missing("store_dir"))?;
    let priority = cfg.priority.ok_or_else(|| missing("priority"))?;
    let upstream = cfg
        .upstream_cache_key_names
        .as_ref()
        .ok_or_else(|| missing("upstream_cache_key_names"))?;
    let store_dir = parse_store_dir(store_dir)?;
    let retention = match cfg.retention_period {
        Some(RetentionPeriodConfig::Period(s)) => Some(s as i64),
        _ => None,
    };
    if cfg.no_overlap.is_some() {
        return Err(ApiError::BadRequest(
            "no_overlap applies to a key rotation (PATCH), not to cache creation".into(),
        ));
    }
    let key = new_key(kp)?;
    let now = unix_now();
    let mut tx = state.db.begin().await?;
    let created = caches::create(
        tx.raw(),
        &NewCache {
            name: &name,
            is_public,
            store_dir: &store_dir,
            priority: priority as i64,
            upstream_cache_key_names: upstream,
            retention_period: retention,
        },
        now,
    )
    .await?;
    let Some(rec) = created else {
        return Err(ApiError::CacheAlreadyExists);
    };
    rotation::add_key(&mut tx, state.keys.kek(), &name, rec.id, key, now, now).await?;
    let event = AuditEvent::CacheCreate {
        cache: name.clone(),
        is_public,
        generated_key: matches!(kp, KeypairConfig::Generate),
    };
    audit::insert(tx.raw(), now, &credentials.actor(), &event).await?;
    tx.commit().await?;
    state.catalog.forget(&name);
    tracing::info!(subject = credentials.subject(), "cache created");
    Ok(StatusCode::OK)
}

/// `PATCH`: `cr` (+ `cq` when `retention_period` is sent); only given fields change.
#[instrument(skip_all, fields(cache = %cache))]
pub async fn configure(
    State(state): State<AppState>,
    Path(cache): Path<String>,
    credentials: Credentials,
    JsonBody(cfg): JsonBody<CacheConfig>,
) -> ApiResult<StatusCode> {
    let name = parse_name(&cache)?;
    let rec = credentials
        .authorize(&state, &name, &[Permission::ConfigureCache])
        .await?;
    if cfg.retention_period.is_some() {
        credentials
            .authorize(&state, &name, &[Permission::ConfigureCacheRetention])
            .await?;
    }
    let store_dir = cfg.store_dir.as_deref().map(parse_store_dir).transpose()?;
    let key = cfg.keypair.as_ref().map(new_key).transpose()?;
    let no_overlap = cfg.no_overlap.unwrap_or(false);
    if cfg.no_overlap.is_some() && key.is_none() {
        return Err(ApiError::BadRequest(
            "no_overlap needs keypair: it says how the previous keys retire".into(),
        ));
    }
    let update = CacheUpdate {
        is_public: cfg.is_public,
        store_dir,
        priority: cfg.priority.map(i64::from),
        upstream_cache_key_names: cfg.upstream_cache_key_names.clone(),
        retention_period: cfg.retention_period.map(|r| match r {
            RetentionPeriodConfig::Global => None,
            RetentionPeriodConfig::Period(s) => Some(s as i64),
        }),
    };
    let now = unix_now();
    let mut tx = state.db.begin().await?;
    caches::update(tx.raw(), rec.id, &update)
        .await?
        .ok_or(ApiError::NoSuchCache)?;
    let mut changes = audited_changes(&cfg);
    if let Some(key) = key {
        let overlap = state.config.signing.rotation_overlap.as_secs() as i64;
        let retire_at = if no_overlap {
            now
        } else {
            now.saturating_add(overlap)
        };
        let row = rotation::add_key(
            &mut tx,
            state.keys.kek(),
            &name,
            rec.id,
            key,
            retire_at,
            now,
        )
        .await?;
        tracing::info!(key_name = %row.key_name, retire_at, "signing key rotated");
        if let Some(map) = changes.as_object_mut() {
            map.insert("key_name".into(), row.key_name.clone().into());
            map.insert("previous_keys_retire_at".into(), retire_at.into());
        }
    }
    let event = AuditEvent::CacheConfigure {
        cache: name.clone(),
        changes,
    };
    audit::insert(tx.raw(), now, &credentials.actor(), &event).await?;
    tx.commit().await?;
    // Other replicas see the change within `[jwt] revocation-refresh`.
    state.catalog.forget(&name);
    tracing::info!(subject = credentials.subject(), "cache configured");
    Ok(StatusCode::OK)
}

/// `DELETE`: `cd`. The cache's paths go at once; shared data goes with GC.
#[instrument(skip_all, fields(cache = %cache))]
pub async fn destroy(
    State(state): State<AppState>,
    Path(cache): Path<String>,
    credentials: Credentials,
) -> ApiResult<StatusCode> {
    let name = parse_name(&cache)?;
    let rec = credentials
        .authorize(&state, &name, &[Permission::DestroyCache])
        .await?;
    let mut tx = state.db.begin().await?;
    if !caches::delete(tx.raw(), rec.id).await? {
        return Err(ApiError::NoSuchCache);
    }
    let event = AuditEvent::CacheDestroy {
        cache: name.clone(),
    };
    audit::insert(tx.raw(), unix_now(), &credentials.actor(), &event).await?;
    tx.commit().await?;
    state.catalog.forget(&name);
    tracing::info!(subject = credentials.subject(), "cache destroyed");
    Ok(StatusCode::OK)
}
