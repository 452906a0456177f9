//! The API calls GC scenarios make: deleting paths and caches, retention,
//! pins, get-missing-paths and statistics.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use bytes::Bytes;
use futures::SinkExt as _;
use futures::channel::mpsc;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::nar::TestNar;
use crate::common::read::{fetch, unzstd};
use crate::common::{TestApp, TestResponse, request, send};

/// Status of `GET /{cache}/{hash}.narinfo`.
pub async fn narinfo_status(app: &TestApp, token: &str, cache: &str, nar: &TestNar) -> StatusCode {
    app.get(
        &format!("/{cache}/{}.narinfo", nar.store_hash()),
        Some(token),
    )
    .await
    .status
}

/// Asserts which of `nars` `cache` serves (narinfo 200) and which it does
/// not (404), with `ctx` in the failure message.
pub async fn assert_served(
    app: &TestApp,
    token: &str,
    cache: &str,
    kept: &[&TestNar],
    gone: &[&TestNar],
    ctx: &str,
) {
    for n in kept {
        let s = narinfo_status(app, token, cache, n).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{ctx}: {cache} should still serve {}",
            n.base_name
        );
    }
    for n in gone {
        let s = narinfo_status(app, token, cache, n).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{ctx}: {cache} should no longer serve {}",
            n.base_name
        );
    }
}

/// Asserts `nar` downloads byte-identical through `cache` as `.nar.zst` and `.nar`.
pub async fn assert_bytes(app: &TestApp, token: &str, cache: &str, nar: &TestNar, ctx: &str) {
    let h = nar.url_hash();
    let zst = fetch(app, token, cache, &format!("nar/{h}.nar.zst")).await;
    assert!(
        unzstd(&zst) == nar.bytes,
        "{ctx}: .nar.zst of {} differs",
        nar.base_name
    );
    let plain = fetch(app, token, cache, &format!("nar/{h}.nar")).await;
    assert!(
        plain == nar.bytes,
        "{ctx}: .nar of {} differs",
        nar.base_name
    );
}

/// Status of both NAR URLs (`.nar`, `.nar.zst`) of `nar` through `cache`.
pub async fn nar_url_statuses(
    app: &TestApp,
    token: &str,
    cache: &str,
    nar: &TestNar,
) -> [StatusCode; 2] {
    let h = nar.url_hash();
    [
        app.get(&format!("/{cache}/nar/{h}.nar"), Some(token))
            .await
            .status,
        app.get(&format!("/{cache}/nar/{h}.nar.zst"), Some(token))
            .await
            .status,
    ]
}

async fn send_json(
    app: &TestApp,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> TestResponse {
    let b = request(method, uri, Some(token));
    let req = match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    };
    app.send(req.expect("request")).await
}

/// `DELETE /{cache}/{hash}.narinfo`.
pub async fn delete_path(app: &TestApp, token: &str, cache: &str, nar: &TestNar) -> TestResponse {
    let uri = format!("/{cache}/{}.narinfo", nar.store_hash());
    send_json(app, Method::DELETE, &uri, token, None).await
}

/// `DELETE /_api/v1/cache-config/{cache}` with the root token.
pub async fn destroy_cache(app: &TestApp, cache: &str) {
    let uri = format!("/_api/v1/cache-config/{cache}");
    send_json(app, Method::DELETE, &uri, &app.root_token(), None)
        .await
        .assert_status(StatusCode::OK);
}

/// `PATCH /_api/v1/cache-config/{cache}` with `{"retention_period": …}`
/// (`"Global"` or `{"Period": secs}`), then reads it back.
pub async fn set_retention(app: &TestApp, cache: &str, retention: Value) {
    let uri = format!("/_api/v1/cache-config/{cache}");
    let root = app.root_token();
    let body = json!({ "retention_period": retention });
    send_json(app, Method::PATCH, &uri, &root, Some(body))
        .await
        .assert_status(StatusCode::OK);
    let cfg: Value = app.get(&uri, Some(&root)).await.json();
    assert_eq!(cfg["retention_period"], retention, "{cache}: {cfg}");
}

/// `PUT /_api/v1/caches/{cache}/pins/{name}` pinning `store_path`.
pub async fn pin(
    app: &TestApp,
    token: &str,
    cache: &str,
    name: &str,
    store_path: &str,
) -> TestResponse {
    let uri = format!("/_api/v1/caches/{cache}/pins/{name}");
    let body = json!({ "store_path": store_path });
    send_json(app, Method::PUT, &uri, token, Some(body)).await
}

/// `DELETE /_api/v1/caches/{cache}/pins/{name}`.
pub async fn unpin(app: &TestApp, token: &str, cache: &str, name: &str) -> TestResponse {
    let uri = format!("/_api/v1/caches/{cache}/pins/{name}");
    send_json(app, Method::DELETE, &uri, token, None).await
}

/// `POST /_api/v1/get-missing-paths`: which of `nars` `cache` lacks.
pub async fn missing_paths(
    app: &TestApp,
    token: &str,
    cache: &str,
    nars: &[&TestNar],
) -> BTreeSet<String> {
    let body = json!({
        "cache": cache,
        "store_path_hashes": nars.iter().map(|n| n.store_hash()).collect::<Vec<_>>(),
    });
    let resp = send_json(
        app,
        Method::POST,
        "/_api/v1/get-missing-paths",
        token,
        Some(body),
    )
    .await;
    resp.assert_status(StatusCode::OK);
    let answer: Value = resp.json();
    serde_json::from_value(answer["missing_paths"].clone()).expect("missing_paths")
}

/// `GET /_api/v1/caches/{cache}/stats`.
pub async fn cache_stats(app: &TestApp, token: &str, cache: &str) -> Value {
    let resp = app
        .get(&format!("/_api/v1/caches/{cache}/stats"), Some(token))
        .await;
    resp.assert_status(StatusCode::OK);
    resp.json()
}

/// Asserts a cache's statistics; `dedup_ratio` must be `nar_bytes /
/// stored_bytes` (1.0 when nothing is stored).
#[track_caller]
pub fn assert_cache_stats(v: &Value, objects: i64, nars: i64, nar_bytes: i64, stored_bytes: i64) {
    assert_eq!(v["objects"], json!(objects), "{v}");
    assert_eq!(v["nars"], json!(nars), "{v}");
    assert_eq!(v["nar_bytes"], json!(nar_bytes), "{v}");
    assert_eq!(v["stored_bytes"], json!(stored_bytes), "{v}");
    let want = if stored_bytes == 0 {
        1.0
    } else {
        nar_bytes as f64 / stored_bytes as f64
    };
    let ratio = v["dedup_ratio"].as_f64().expect("dedup_ratio");
    assert!(
        (ratio - want).abs() < 1e-9,
        "dedup_ratio {ratio}, want {want}: {v}"
    );
}

/// An upload whose body is held back until [`HeldUpload::release`], so a
/// test can act while the handler waits for it: by then it has looked up
/// (and touched) an existing NAR, but not linked the path to it.
pub struct HeldUpload {
    body: Bytes,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    task: JoinHandle<TestResponse>,
}

impl HeldUpload {
    /// Sends the request (metadata in `X-Attic-Nar-Info`) with no body yet.
    pub fn start(app: &TestApp, token: &str, cache: &str, nar: &TestNar) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let req = request(Method::PUT, "/_api/v1/upload-path", Some(token))
            .header("x-attic-nar-info", nar.info(cache).to_string())
            .header(header::CONTENT_TYPE, "application/x-nix-nar")
            .body(Body::from_stream(rx))
            .expect("request");
        let router = app.router();
        Self {
            body: nar.bytes.clone(),
            tx,
            task: tokio::spawn(async move { send(&router, req).await }),
        }
    }

    /// Sends the body and waits for the response.
    pub async fn release(mut self) -> TestResponse {
        self.tx
            .send(Ok(self.body))
            .await
            .expect("handler reads the body");
        drop(self.tx);
        self.task.await.expect("upload task")
    }
}
