//! Credentials and permission checks: the only place that decides who may
//! do what (docs/protocol.md "Tokens").
//!
//! Handlers take [`Credentials`] (an extractor: a present but invalid token
//! is a 401 saying why, never silently anonymous) and call
//! [`Credentials::authorize`] with the permission they need, or take
//! [`CacheAccess`], which does both for routes with `{cache}` in the path.
//! A caller with no permission at all on a cache gets the same 401 whether
//! the cache exists or not: private caches reveal nothing.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;

use larder_core::CacheName;
use larder_shared::audit::Actor;
use larder_shared::db::caches::{self, CacheRecord};
use larder_shared::db::unix_now;
use larder_shared::token::{CachePermissions, Claims, Permission};

use crate::cache_catalog::CatalogEntry;
use crate::error::ApiError;
use crate::extract::Path;
use crate::state::AppState;

/// Message for every "you may not see this" answer, identical whether or not
/// the cache exists.
const HIDDEN: &str = "authentication required, or no access to this cache";

/// The verified caller: anonymous, or a token's claims; and where the
/// request came from ([`crate::client_addr`]).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    claims: Option<Arc<Claims>>,
    client_addr: Option<IpAddr>,
}

impl Credentials {
    /// An anonymous caller (tests, internal use).
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// The token's subject, for logs.
    pub fn subject(&self) -> Option<&str> {
        self.claims.as_ref().map(|c| c.sub.as_str())
    }

    /// Who this is, for the audit trail: subject, `jti`, client address
    /// (never the token itself).
    pub fn actor(&self) -> Actor {
        Actor {
            subject: self.subject().map(str::to_owned),
            jti: self.claims.as_ref().and_then(|c| c.jti.clone()),
            client_addr: self.client_addr.map(|a| a.to_string()),
        }
    }

    /// What this caller may do on `name`, public caches granting pull.
    pub fn permissions_on(
        &self,
        name: &CacheName,
        cache: Option<&CacheRecord>,
    ) -> CachePermissions {
        let mut perms = self
            .claims
            .as_ref()
            .map(|c| c.permissions_for(name))
            .unwrap_or_default();
        if cache.is_some_and(|c| c.is_public) {
            perms.pull = true;
        }
        perms
    }

    /// Loads the cache and checks that the caller holds one of `any_of`.
    /// Order of answers: 401 (no rights at all, existence hidden), 404 (no
    /// such cache), 403 (visible but not allowed).
    pub async fn authorize(
        &self,
        state: &AppState,
        name: &CacheName,
        any_of: &[Permission],
    ) -> Result<CacheRecord, ApiError> {
        let mut conn = state.db.conn().await?;
        let cache = caches::get_by_name(conn.raw(), name).await?;
        drop(conn);
        self.check(name, cache.as_ref(), any_of)?;
        cache.ok_or(ApiError::NoSuchCache)
    }

    /// [`Self::authorize`] against the in-memory catalog, for reads: the
    /// cache as this replica holds it ([`crate::cache_catalog`]).
    pub async fn authorize_read(
        &self,
        state: &AppState,
        name: &CacheName,
        any_of: &[Permission],
    ) -> Result<Arc<CatalogEntry>, ApiError> {
        let entry = state.catalog.get(&state.db, name).await?;
        self.check(name, entry.as_deref().map(|e| &*e.cache), any_of)?;
        entry.ok_or(ApiError::NoSuchCache)
    }

    /// The answers of [`Self::authorize`], whichever way the cache was read.
    fn check(
        &self,
        name: &CacheName,
        cache: Option<&CacheRecord>,
        any_of: &[Permission],
    ) -> Result<(), ApiError> {
        let perms = self.permissions_on(name, cache);
        if !perms.any() {
            return Err(ApiError::Unauthorized(HIDDEN.into()));
        }
        if cache.is_none() {
            return Err(ApiError::NoSuchCache);
        }
        if any_of.iter().any(|p| perms.has(*p)) {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(permission_name(any_of[0])))
        }
    }

    /// One more permission on a cache [`Self::authorize`] already let the
    /// caller see (`d` for a replacing upload): 403 naming it otherwise.
    pub fn require(&self, cache: &CacheRecord, p: Permission) -> Result<(), ApiError> {
        if self.permissions_on(&cache.name, Some(cache)).has(p) {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(permission_name(p)))
        }
    }

    /// For creating a cache: the caller needs `cc` on the name, which must be free.
    pub async fn authorize_create(
        &self,
        state: &AppState,
        name: &CacheName,
    ) -> Result<(), ApiError> {
        let perms = self.permissions_on(name, None);
        if !perms.any() {
            return Err(ApiError::Unauthorized(HIDDEN.into()));
        }
        if !perms.has(Permission::CreateCache) {
            return Err(ApiError::PermissionDenied(permission_name(
                Permission::CreateCache,
            )));
        }
        let mut conn = state.db.conn().await?;
        match caches::get_by_name(conn.raw(), name).await? {
            Some(_) => Err(ApiError::CacheAlreadyExists),
            None => Ok(()),
        }
    }
}

/// Human name of a permission, for 403 messages.
pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Pull => "pull (r)",
        Permission::Push => "push (w)",
        Permission::Delete => "delete (d)",
        Permission::CreateCache => "create cache (cc)",
        Permission::ConfigureCache => "configure cache (cr)",
        Permission::ConfigureCacheRetention => "configure cache retention (cq)",
        Permission::DestroyCache => "destroy cache (cd)",
    }
}

/// The JWT from `Authorization: Bearer <jwt>` or `Basic` with the JWT as
/// password (what Nix sends from a netrc).
fn bearer_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| ApiError::Unauthorized("malformed Basic credentials".into()))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| ApiError::Unauthorized("malformed Basic credentials".into()))?;
        let password = text.split_once(':').map(|(_, p)| p).unwrap_or("");
        if password.is_empty() {
            return Ok(None);
        }
        return Ok(Some(password.to_owned()));
    }
    Err(ApiError::Unauthorized(format!(
        "unsupported Authorization scheme {scheme:?}; use Bearer or Basic"
    )))
}

impl<S> FromRequestParts<S> for Credentials
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let client_addr = crate::client_addr::client_addr(
            peer,
            &parts.headers,
            &state.config.http.trusted_proxies,
        );
        let Some(token) = bearer_token(parts)? else {
            return Ok(Credentials {
                claims: None,
                client_addr,
            });
        };
        // Verified once per token (times re-checked on every hit); the
        // revocation list is consulted on every request.
        let claims = state
            .verified_tokens
            .verify(&state.tokens, &token, unix_now() as u64)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        if state.revocations.get().is_revoked(&claims) {
            return Err(ApiError::Unauthorized("token revoked".into()));
        }
        if let Some(jti) = &claims.jti {
            state.access.token(jti);
        }
        Ok(Credentials {
            claims: Some(claims),
            client_addr,
        })
    }
}

/// A permission requirement named in a handler's signature.
pub trait Need: Send + Sync + 'static {
    /// Any one of these suffices.
    const ANY_OF: &'static [Permission];
    /// Reads take the cache from the in-memory catalog (at most
    /// `[jwt] revocation-refresh` old); writes read its row.
    const FROM_MEMORY: bool = false;
}

/// `r` or `w`: reading metadata (push clients check existence too).
pub struct PullOrPush;
impl Need for PullOrPush {
    const ANY_OF: &'static [Permission] = &[Permission::Pull, Permission::Push];
    const FROM_MEMORY: bool = true;
}

/// `r`: reading NAR data.
pub struct Pull;
impl Need for Pull {
    const ANY_OF: &'static [Permission] = &[Permission::Pull];
    const FROM_MEMORY: bool = true;
}

/// `w`: uploading.
pub struct Push;
impl Need for Push {
    const ANY_OF: &'static [Permission] = &[Permission::Push];
}

/// `d`: deleting paths.
pub struct Delete;
impl Need for Delete {
    const ANY_OF: &'static [Permission] = &[Permission::Delete];
}

/// Extractor for routes with `{cache}` as their first path parameter:
/// validates the name, verifies credentials, checks permission `N`.
pub struct CacheAccess<N: Need> {
    /// The cache, which exists and which the caller may use as `N` says.
    pub cache: Arc<CacheRecord>,
    /// Its catalog entry (keys, signing), when `N` reads from memory.
    pub entry: Option<Arc<CatalogEntry>>,
    /// Who is asking.
    pub credentials: Credentials,
    _need: PhantomData<N>,
}

impl<S, N> FromRequestParts<S> for CacheAccess<N>
where
    AppState: FromRef<S>,
    S: Send + Sync,
    N: Need,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let credentials = Credentials::from_request_parts(parts, state).await?;
        let Path(params): Path<Vec<(String, String)>> =
            Path::from_request_parts(parts, state).await?;
        let raw = params
            .iter()
            .find(|(k, _)| k == "cache")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ApiError::Internal("route has no {cache} parameter".into()))?;
        // Purely syntactic, so saying so reveals nothing about existence.
        let name: CacheName = raw
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("invalid cache name: {e}")))?;
        let state = AppState::from_ref(state);
        let (cache, entry) = if N::FROM_MEMORY {
            let entry = credentials.authorize_read(&state, &name, N::ANY_OF).await?;
            (entry.cache.clone(), Some(entry))
        } else {
            let cache = credentials.authorize(&state, &name, N::ANY_OF).await?;
            (Arc::new(cache), None)
        };
        // The caller may see the cache: its responses may now say so.
        if let Some(slot) = parts
            .extensions
            .get::<crate::cache_control::VisibilitySlot>()
        {
            slot.set(cache.is_public);
        }
        Ok(Self {
            cache,
            entry,
            credentials,
            _need: PhantomData,
        })
    }
}
