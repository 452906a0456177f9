//! The route table: every route of the API, in one place.

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::routes::{
    binary_cache, cache_config, caches, health, missing_paths, nar, nix_upload, upload_path,
};
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids are ULIDs: sortable, so log lines order by arrival.
#[derive(Clone, Copy, Default)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        ulid::Ulid::new()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

/// Builds the application router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/upload-path", put(upload_path::upload_path))
        .route("/get-missing-paths", post(missing_paths::get_missing_paths))
        .route(
            "/cache-config/{cache}",
            get(cache_config::get)
                .post(cache_config::create)
                .patch(cache_config::configure)
                .delete(cache_config::destroy),
        )
        .route("/caches", get(caches::list))
        .route("/caches/{cache}/stats", get(caches::cache_stats))
        .route("/caches/{cache}/pins", get(caches::list_pins))
        .route(
            "/caches/{cache}/pins/{name}",
            put(caches::set_pin).delete(caches::remove_pin),
        );
    Router::new()
        .route("/_health", get(health::health))
        .route("/_ready", get(health::ready))
        .route("/metrics", get(crate::metrics::handler))
        .nest("/_api/v1", api)
        .route(
            "/{cache}/nix-cache-info",
            get(binary_cache::nix_cache_info).put(nix_upload::put_nix_cache_info),
        )
        .route(
            "/{cache}/nar/{file}",
            get(nar::get).head(nar::head).put(nix_upload::put_nar),
        )
        .route(
            "/{cache}/{file}",
            get(binary_cache::cache_file)
                .put(nix_upload::put_cache_file)
                .delete(binary_cache::delete_file),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::cache_control::layer,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                tracing::info_span!("request", method = %req.method(), route, request_id = id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, UlidRequestId))
        .with_state(state)
}
