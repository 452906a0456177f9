//! `GET /metrics`: the Prometheus text of [`crate::metrics::Metrics`],
//! guarded by `[metrics] token` when one is set.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use larder_shared::db::packs::{self, PackTotals};
use larder_shared::db::{DbError, unix_now};

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// `GET /metrics`.
pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let reveal = match &state.config.metrics.token {
        None => false,
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
                return Err(ApiError::Unauthorized("metrics token required".into()));
            }
            true
        }
    };
    let mut text = state.metrics.render(reveal);
    match pack_totals(&state).await {
        Ok(t) => metrics::render_pack_totals(&mut text, &t),
        // The counters still answer; the gauges come back with the database.
        Err(e) => tracing::warn!(error = %e, "reading pack totals for /metrics"),
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn pack_totals(state: &AppState) -> Result<PackTotals, DbError> {
    let c = &state.config.compression;
    let cold_before = unix_now() - c.archive_after.as_secs() as i64;
    let mut conn = state.db.conn().await?;
    packs::totals(conn.raw(), c.archive(), cold_before).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"", b"t"));
    }
}
