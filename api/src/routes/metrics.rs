//! `GET /metrics`: the Prometheus text of [`crate::metrics::Metrics`], the
//! process-wide counters ([`larder_shared::metrics`]) and the cluster's
//! pack and backlog gauges, guarded by
//! `[metrics] token` when one is set; and the same endpoint, process-wide
//! counters only, for `larder-worker` ([`worker_router`]).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use larder_shared::config::Secret;
use larder_shared::db::packs::{self, PackTotals};
use larder_shared::db::{DbError, unix_now};
use larder_shared::db::{nars, queue};
use larder_shared::jobs::INGEST_QUEUE;
use larder_shared::metrics::{self as process, access::Access};

use crate::error::{ApiError, json_errors};
use crate::metrics;
use crate::state::AppState;

/// Checks `[metrics] token` against the request: `Ok(true)` when the token
/// was presented (private caches may be named), `Ok(false)` when none is
/// configured, the contract's 401 otherwise.
pub fn authorize(token: Option<&Secret>, headers: &HeaderMap) -> Result<bool, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match process::access::check(token, given) {
        Access::Open => Ok(false),
        Access::Full => Ok(true),
        Access::Refused => Err(ApiError::Unauthorized("metrics token required".into())),
    }
}

/// `GET /metrics`.
pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let reveal = authorize(state.config.metrics.token.as_ref(), &headers)?;
    let mut text = state.metrics.render(reveal);
    match pack_totals(&state).await {
        Ok(t) => metrics::render_pack_totals(&mut text, &t),
        // The counters still answer; the gauges come back with the database.
        Err(e) => tracing::warn!(error = %e, "reading pack totals for /metrics"),
    }
    match backlog(&state).await {
        Ok(b) => metrics::render_backlog(&mut text, &b),
        Err(e) => tracing::warn!(error = %e, "reading the ingest backlog for /metrics"),
    }
    Ok(prometheus(text))
}

/// Queue depth and staged NARs: two cheap reads (a partial index each on
/// PostgreSQL).
async fn backlog(state: &AppState) -> Result<metrics::Backlog, DbError> {
    let mut conn = state.db.conn().await?;
    let mut pending_jobs = queue::pending_jobs(conn.raw()).await?;
    if !pending_jobs.iter().any(|(q, _)| q == INGEST_QUEUE) {
        pending_jobs.push((INGEST_QUEUE.to_owned(), 0));
        pending_jobs.sort();
    }
    let staged = nars::staged_totals(conn.raw()).await?;
    Ok(metrics::Backlog {
        pending_jobs,
        staged,
        quota_nars: state.config.staging.max_nars,
        quota_bytes: state.config.staging.max_bytes,
        now: unix_now(),
    })
}

async fn pack_totals(state: &AppState) -> Result<PackTotals, DbError> {
    let c = &state.config.compression;
    let cold_before = unix_now() - c.archive_after.as_secs() as i64;
    let mut conn = state.db.conn().await?;
    packs::totals(conn.raw(), c.archive(), cold_before).await
}

fn prometheus(text: String) -> Response {
    ([(header::CONTENT_TYPE, process::CONTENT_TYPE)], text).into_response()
}

/// The router of a process that serves only `GET /metrics` with the
/// process-wide counters (`larder-worker`, `[worker] metrics-listen`):
/// the same token check and JSON errors as the API's. The cluster-wide
/// gauges read from the database (packs, the ingest backlog) stay with the
/// API, which every deployment runs.
pub fn worker_router(token: Option<Secret>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |State(token): State<Option<Secret>>, headers: HeaderMap| async move {
                    authorize(token.as_ref(), &headers)?;
                    let mut text = String::new();
                    process::render_process(&mut text);
                    Ok::<_, ApiError>(prometheus(text))
                },
            ),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(token)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;

    async fn get(router: &Router, uri: &str, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn worker_router_checks_the_token_and_answers_json_errors() {
        let router = worker_router(Some(Secret::new("t0ken")));
        let (status, body) = get(&router, "/metrics", Some("Bearer t0ken")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("# TYPE larder_storage_requests_total counter"),
            "{body}"
        );
        assert!(
            !body.contains("larder_uploads_total"),
            "API counters on a worker: {body}"
        );
        for auth in [None, Some("Bearer wrong")] {
            let (status, body) = get(&router, "/metrics", auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert_eq!(v["error"], "Unauthorized", "{body}");
        }
        let (status, body) = get(&router, "/elsewhere", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("\"NotFound\""), "{body}");
        let open = worker_router(None);
        assert_eq!(get(&open, "/metrics", None).await.0, StatusCode::OK);
    }
}
