//! The one place that decides `Cache-Control` (and `Vary`) for every
//! response, so that no shared cache (nginx `proxy_cache`, a CDN) can store
//! what a private cache served, while public NARs, being immutable and
//! content-addressed, are cacheable for a year (docs/operations.md, "Behind
//! a reverse proxy or CDN").
//!
//! A layer around the whole router: it gives each request a
//! [`VisibilitySlot`], which [`crate::auth::CacheAccess`] fills once the
//! caller is known to have rights on the cache, and after the handler sets
//! the headers from the route, the status and that visibility:
//!
//! | response | public cache | private cache |
//! |---|---|---|
//! | NAR 200/206/304 | `public, max-age=31536000, immutable` | `private, max-age=31536000, immutable` |
//! | narinfo, `.ls`, `nix-cache-info` 200/304 | `public, max-age=<[http] narinfo-max-age>` | `private, max-age=…` |
//! | any 4xx/5xx (a narinfo 404 included) | `no-store` | `private, no-store` |
//! | uploads, deletes, `/_api/v1/*`, health, metrics | `no-store` | `no-store` |
//!
//! Private caches' responses also carry `Vary: Authorization`. A 401 is
//! `no-store` whether or not the cache exists, so it reveals nothing.

use std::sync::{Arc, OnceLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// A year: what an immutable, content-addressed URL may be cached for.
const IMMUTABLE: &str = "max-age=31536000, immutable";

/// Whether the request's cache is public, once a handler's extractor knows
/// the caller may see it.
#[derive(Clone, Default)]
pub struct VisibilitySlot(Arc<OnceLock<bool>>);

impl VisibilitySlot {
    /// Records the cache's visibility (first call wins).
    pub fn set(&self, is_public: bool) {
        let _ = self.0.set(is_public);
    }
}

/// What kind of resource a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// Immutable NAR files.
    Nar,
    /// narinfo, `.ls`, `nix-cache-info`: can change (delete, key rotation).
    Metadata,
    /// Everything else: never stored by any cache.
    Uncacheable,
}

fn classify(method: &Method, route: Option<&str>) -> Resource {
    if method != Method::GET && method != Method::HEAD {
        return Resource::Uncacheable;
    }
    match route {
        Some("/{cache}/nar/{file}") => Resource::Nar,
        Some(
            "/{cache}/nix-cache-info"
            | "/{cache}/{file}"
            | "/{cache}/log/{drv}"
            | "/{cache}/realisations/{file}"
            | "/{cache}/build-trace-v2/{drv}/{file}",
        ) => Resource::Metadata,
        _ => Resource::Uncacheable,
    }
}

/// The `Cache-Control` value; `public` is `None` when no cache was resolved
/// (401, unknown routes, the API).
fn policy(resource: Resource, status: StatusCode, public: Option<bool>, max_age: u64) -> String {
    let ok = status.is_success() || status == StatusCode::NOT_MODIFIED;
    let scope = match public {
        Some(true) => "public",
        Some(false) => "private",
        None => return "no-store".into(),
    };
    match (resource, ok, public) {
        (Resource::Uncacheable, _, _) => "no-store".into(),
        (_, false, Some(false)) => "private, no-store".into(),
        (_, false, _) => "no-store".into(),
        (Resource::Nar, true, _) => format!("{scope}, {IMMUTABLE}"),
        (Resource::Metadata, true, _) => format!("{scope}, max-age={max_age}"),
    }
}

/// The layer (`axum::middleware::from_fn_with_state`).
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let resource = classify(
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let slot = VisibilitySlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut response = next.run(req).await;
    let public = slot.0.get().copied();
    let max_age = state.config.http.narinfo_max_age.as_secs();
    let value = policy(resource, response.status(), public, max_age);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    if public == Some(false) {
        headers.append(header::VARY, HeaderValue::from_static("authorization"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix() {
        let p = |r, s: u16, public| policy(r, StatusCode::from_u16(s).unwrap(), public, 60);
        use Resource::*;
        assert_eq!(
            p(Nar, 200, Some(true)),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            p(Nar, 206, Some(true)),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            p(Nar, 304, Some(false)),
            "private, max-age=31536000, immutable"
        );
        assert_eq!(p(Metadata, 200, Some(true)), "public, max-age=60");
        assert_eq!(p(Metadata, 200, Some(false)), "private, max-age=60");
        assert_eq!(p(Metadata, 404, Some(true)), "no-store");
        assert_eq!(p(Metadata, 404, Some(false)), "private, no-store");
        assert_eq!(p(Nar, 416, Some(true)), "no-store");
        assert_eq!(p(Nar, 401, None), "no-store");
        assert_eq!(p(Uncacheable, 200, Some(true)), "no-store");
        assert_eq!(p(Nar, 500, Some(false)), "private, no-store");
        assert_eq!(
            classify(&Method::PUT, Some("/{cache}/nar/{file}")),
            Uncacheable
        );
        assert_eq!(classify(&Method::HEAD, Some("/{cache}/nar/{file}")), Nar);
        assert_eq!(classify(&Method::GET, Some("/{cache}/{file}")), Metadata);
        assert_eq!(classify(&Method::GET, Some("/_api/v1/caches")), Uncacheable);
        assert_eq!(classify(&Method::GET, None), Uncacheable);
    }
}
