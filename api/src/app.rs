//! The route table: every route of the API, in one place.

use axum::Router;
use axum::http::{HeaderName, Request};
use axum::routing::MethodRouter;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::error::{ApiError, json_errors};
use crate::routes::{
    binary_cache, build_log, cache_config, cache_file, caches, chunk_push, health, metrics,
    missing_paths, nar, nix_upload, oidc, realisation, upload_path,
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

/// Declares the route table once: the router's routes and [`ROUTES`], the
/// same list as data, which tests walk to check that every route answers
/// bad input with the contract's JSON errors.
macro_rules! route_table {
    ($($path:literal => $($method:ident $handler:expr),+;)*) => {
        /// Every route: (lower-case method, path template).
        pub const ROUTES: &[(&str, &str)] = &[$($((stringify!($method), $path),)+)*];

        fn routes() -> Router<AppState> {
            Router::new()$(.route($path, MethodRouter::new()$(.$method($handler))+))*
        }
    };
}

route_table! {
    "/_health" => get health::health;
    "/_ready" => get health::ready;
    "/metrics" => get metrics::handler;
    "/_api/v1/upload-path" => put upload_path::upload_path;
    "/_api/v1/get-missing-paths" => post missing_paths::get_missing_paths;
    "/_api/v1/cache-config/{cache}" =>
        get cache_config::get,
        post cache_config::create,
        patch cache_config::configure,
        delete cache_config::destroy;
    "/_api/v1/oidc/exchange" => post oidc::exchange;
    "/_api/v1/caches" => get caches::list;
    "/_api/v1/caches/{cache}/stats" => get caches::cache_stats;
    "/_api/v1/caches/{cache}/pins" => get caches::list_pins;
    "/_api/v1/caches/{cache}/pins/{name}" =>
        put caches::set_pin,
        delete caches::remove_pin;
    "/_api/larder/v1/caches/{cache}/chunk-push" => get chunk_push::params;
    "/_api/larder/v1/caches/{cache}/chunks/missing" => post chunk_push::missing;
    "/_api/larder/v1/caches/{cache}/chunks" => post chunk_push::upload;
    "/_api/larder/v1/caches/{cache}/nars" => post chunk_push::commit;
    "/{cache}/nix-cache-info" =>
        get binary_cache::nix_cache_info,
        put cache_file::put_nix_cache_info;
    "/{cache}/nar/{file}" =>
        get nar::get,
        head nar::head,
        put nix_upload::put_nar;
    "/{cache}/log/{drv}" =>
        get build_log::get,
        put build_log::put;
    "/{cache}/realisations/{file}" =>
        get realisation::get_legacy,
        put realisation::put_legacy;
    "/{cache}/build-trace-v2/{drv}/{file}" =>
        get realisation::get_trace,
        put realisation::put_trace;
    "/{cache}/{file}" =>
        get binary_cache::cache_file,
        put cache_file::put,
        delete binary_cache::delete_file;
}

/// Builds the application router.
pub fn router(state: AppState) -> Router {
    routes()
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
        .layer(axum::middleware::map_response(json_errors))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, UlidRequestId))
        .with_state(state)
}
