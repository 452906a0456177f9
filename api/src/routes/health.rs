//! `/_health` (liveness) and `/_ready` (database and storage reachable).
//! `larder-worker` serves the same two on `[worker] metrics-listen`
//! ([`readiness`] with its own database and storage).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use larder_shared::db::Db;
use larder_shared::storage::Storage;

use crate::state::AppState;

/// Liveness: the process answers.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: one database round trip and one storage probe.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    readiness(&state.db, state.storage.as_ref()).await
}

/// What `/_ready` answers for a process with `db` and `storage`: 200 when
/// both are reachable, else 503; the body says which one is not.
pub async fn readiness(db: &Db, storage: &dyn Storage) -> (StatusCode, Json<Value>) {
    let db = db.ping().await;
    let storage = storage.check().await;
    let ok = db.is_ok() && storage.is_ok();
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database unreachable");
    }
    if let Err(e) = &storage {
        tracing::warn!(error = %e, "readiness: storage unreachable");
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"database": db.is_ok(), "storage": storage.is_ok()})),
    )
}
