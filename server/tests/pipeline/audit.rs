//! The audit trail (docs/operations.md "Audit"): after a mint, a cache create, a push
//! through upload-path, a `nix copy` narinfo PUT, a replacement, a
//! configure, a pin set and removed, a delete, a GC, a revoke and a destroy,
//! `larder-admin audit` shows each with its subject, token id, cache and
//! client address (`X-Forwarded-For` believed only from a trusted proxy);
//! its filters select; `objects.created_by` shows in `path-info`; a token's
//! `last_used_at` is written only by the access flusher; no token or secret
//! key is ever in the log; over real TCP the connection loop supplies the
//! peer; `--prune-before` deletes only older events.

use std::net::SocketAddr;
use std::process::Command;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use serde_json::{Value, json};

use larder_core::nix::hash::FileHash;
use larder_core::nix::narinfo::{Compression, NarInfo};
use larder_core::nix::store_path::{StoreDir, StorePath};
use larder_shared::db::unix_now;
use larder_worker::jobs::gc;

use crate::common::nar::TestNar;
use crate::common::{Backend, TestApp, TestResponse, request, upload_request};

/// The proxy in front of the test server.
const PROXY: &str = "127.0.0.1:40000";
/// A client connecting directly (not a trusted proxy).
const DIRECT: &str = "192.0.2.10:50000";

/// `larder-admin -f CONFIG ARGS…` as operator `alice`; stdout.
fn admin(app: &TestApp, args: &[&str]) -> String {
    let mut cmd = Command::new(crate::common::package_binary("larder-admin"));
    cmd.arg("-f").arg(&app.config_path).args(args);
    for var in ["LARDER_CONFIG", "LARDER_DATABASE_URL", "LARDER_DATA_DIR"] {
        cmd.env_remove(var);
    }
    cmd.env("USER", "alice");
    // The test config is written without the KEK (the app gets it in memory).
    cmd.env("LARDER_SIGNING_KEK", crate::common::TEST_KEK);
    let out = cmd.output().expect("running larder-admin");
    assert!(
        out.status.success(),
        "larder-admin {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `larder-admin audit --json ARGS…`, one object per line.
fn audit_json(app: &TestApp, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    admin(app, &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// `req` as if it arrived from `peer`, optionally with `X-Forwarded-For`.
fn from(mut req: Request<Body>, peer: &str, forwarded: Option<&str>) -> Request<Body> {
    let peer: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    if let Some(f) = forwarded {
        req.headers_mut()
            .insert("x-forwarded-for", f.parse().unwrap());
    }
    req
}

fn json_request(method: Method, uri: &str, token: &str, body: Value) -> Request<Body> {
    request(method, uri, Some(token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send_from(
    app: &TestApp,
    req: Request<Body>,
    peer: &str,
    fwd: Option<&str>,
) -> TestResponse {
    app.send(from(req, peer, fwd)).await
}

/// `nix copy`'s two PUTs of an uncompressed NAR and its narinfo.
async fn nix_copy(app: &TestApp, token: &str, cache: &str, nar: &TestNar) {
    let file_hash = FileHash::digest(&nar.bytes);
    let url = format!("nar/{}.nar", file_hash.to_base32());
    let req = request(Method::PUT, &format!("/{cache}/{url}"), Some(token))
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CONTENT_LENGTH, nar.bytes.len())
        .body(Body::from(nar.bytes.clone()))
        .unwrap();
    send_from(app, req, PROXY, None)
        .await
        .assert_status(StatusCode::OK);
    let info = NarInfo {
        store_path: StorePath::from_base_name(&nar.base_name).unwrap(),
        url,
        compression: Compression::None,
        file_hash: Some(file_hash),
        file_size: Some(nar.nar_size()),
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size(),
        references: Vec::new(),
        deriver: None,
        system: Some("x86_64-linux".into()),
        sigs: Vec::new(),
        ca: None,
    };
    let req = request(
        Method::PUT,
        &format!("/{cache}/{}.narinfo", nar.store_hash()),
        Some(token),
    )
    .header(header::CONTENT_TYPE, "text/x-nix-narinfo")
    .body(Body::from(Bytes::from(info.render(&StoreDir::default()))))
    .unwrap();
    send_from(app, req, PROXY, None)
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

async fn last_used_at(app: &TestApp, jti: &str) -> Option<i64> {
    let v = app
        .scalar(&format!(
            "SELECT COALESCE(last_used_at, -1) FROM tokens WHERE jti = '{jti}'"
        ))
        .await;
    (v >= 0).then_some(v)
}

/// Runs [`scenario`] on a fresh app whose proxy (127.0.0.1) is trusted.
pub async fn audit_trail(backend: Backend) {
    TestApp::builder(backend)
        .config("[http]\ntrusted-proxies = [\"127.0.0.1\"]\n")
        .build()
        .await
        .run(scenario)
        .await
}

async fn scenario(app: &TestApp) {
    // Mint (operator alice, through the binary).
    let token = admin(
        app,
        &[
            "make-token",
            "--sub",
            "ci-bot",
            "--validity",
            "1d",
            "--pull",
            "aud-*",
            "--push",
            "aud-*",
            "--delete",
            "aud-*",
            "--create-cache",
            "aud-*",
            "--configure-cache",
            "aud-*",
            "--configure-cache-retention",
            "aud-*",
            "--destroy-cache",
            "aud-*",
        ],
    )
    .trim()
    .to_owned();
    let listing = admin(app, &["list-tokens"]);
    let line = listing
        .lines()
        .find(|l| l.contains("ci-bot"))
        .unwrap_or_else(|| panic!("{listing}"));
    let jti = line.split_whitespace().next().unwrap().to_owned();
    assert!(line.contains("never"), "not used yet: {line}");

    // Create (a direct client spoofing X-Forwarded-For: not believed).
    let create = |name: &str| {
        json_request(
            Method::POST,
            &format!("/_api/v1/cache-config/{name}"),
            &token,
            json!({
                "keypair": "Generate",
                "is_public": false,
                "store_dir": "/nix/store",
                "priority": 41,
                "upstream_cache_key_names": [],
            }),
        )
    };
    send_from(app, create("aud-main"), DIRECT, Some("6.6.6.6"))
        .await
        .assert_status(StatusCode::OK);

    // Push through upload-path via the proxy, which names the client.
    let a = TestNar::files("audited-a", 71, &[4000, 9000]);
    let req = upload_request(&token, &a.info("aud-main"), a.bytes.clone());
    let resp = send_from(app, req, PROXY, Some("6.6.6.6, 198.51.100.7")).await;
    resp.assert_status(StatusCode::OK);
    // Push through nix copy's narinfo PUT (the proxy, no header: itself).
    let b = TestNar::files("audited-b", 72, &[3000]);
    nix_copy(app, &token, "aud-main", &b).await;

    // Replace a's NAR (X-Larder-Replace, d permission).
    let a2 = TestNar {
        base_name: a.base_name.clone(),
        ..TestNar::files("audited-a", 73, &[4000, 9001])
    };
    let mut req = upload_request(&token, &a2.info("aud-main"), a2.bytes.clone());
    req.headers_mut()
        .insert("x-larder-replace", "1".parse().unwrap());
    send_from(app, req, PROXY, Some("198.51.100.7"))
        .await
        .assert_status(StatusCode::OK);
    app.drain_jobs().await;

    // Configure: a new key, a priority, a short retention.
    let req = json_request(
        Method::PATCH,
        "/_api/v1/cache-config/aud-main",
        &token,
        json!({"keypair": "Generate", "priority": 50, "retention_period": {"Period": 60}}),
    );
    send_from(app, req, DIRECT, None)
        .await
        .assert_status(StatusCode::OK);

    // Pin b, unpin it; delete b.
    let req = json_request(
        Method::PUT,
        "/_api/v1/caches/aud-main/pins/keep",
        &token,
        json!({"store_path": b.store_path()}),
    );
    send_from(app, req, DIRECT, None)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let req = request(
        Method::DELETE,
        "/_api/v1/caches/aud-main/pins/keep",
        Some(&token),
    )
    .body(Body::empty())
    .unwrap();
    send_from(app, req, DIRECT, None)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let req = request(
        Method::DELETE,
        &format!("/aud-main/{}.narinfo", b.store_hash()),
        Some(&token),
    )
    .body(Body::empty())
    .unwrap();
    send_from(app, req, DIRECT, None)
        .await
        .assert_status(StatusCode::NO_CONTENT);

    // created_by, shown by path-info.
    let info = admin(app, &["path-info", "--cache", "aud-main", &a.store_path()]);
    assert!(info.contains("pushed by:      ci-bot"), "{info}");
    assert!(info.contains(&a2.nar_hash.to_string()), "{info}");

    // last_used_at: requests only note the token; the flusher writes it,
    // once per flush however many requests there were, never backwards.
    assert_eq!(last_used_at(app, &jti).await, None);
    let t1 = unix_now();
    app.state.access.flush(&app.state.db, t1).await.unwrap();
    assert_eq!(last_used_at(app, &jti).await, Some(t1));
    for _ in 0..3 {
        let resp = app
            .get("/_api/v1/cache-config/aud-main", Some(&token))
            .await;
        resp.assert_status(StatusCode::OK);
    }
    assert_eq!(
        last_used_at(app, &jti).await,
        Some(t1),
        "no write per request"
    );
    app.state
        .access
        .flush(&app.state.db, t1 - 100)
        .await
        .unwrap();
    assert_eq!(last_used_at(app, &jti).await, Some(t1), "never backwards");
    let listing = admin(app, &["list-tokens"]);
    let line = listing.lines().find(|l| l.contains(&jti)).unwrap();
    assert!(!line.contains("never"), "{line}");

    // GC: a expires (60 s retention), the replaced and deleted NARs go.
    let grace = app
        .services
        .config
        .garbage_collection
        .grace_period
        .as_secs() as i64;
    let report = gc::run(&app.services, unix_now() + grace + 120, "test-gc")
        .await
        .unwrap()
        .expect("no other GC");
    assert!(
        report.objects_expired >= 1 && report.nars_deleted >= 2,
        "{report:?}"
    );

    // Create and destroy a second cache; revoke the token (operator).
    send_from(app, create("aud-tmp"), DIRECT, None)
        .await
        .assert_status(StatusCode::OK);
    let req = request(
        Method::DELETE,
        "/_api/v1/cache-config/aud-tmp",
        Some(&token),
    )
    .body(Body::empty())
    .unwrap();
    send_from(app, req, DIRECT, None)
        .await
        .assert_status(StatusCode::OK);
    admin(app, &["revoke-token", "--jti", &jti]);

    // Everything, oldest first.
    let all = audit_json(app, &[]);
    assert_eq!(
        kinds(&all),
        [
            "token-mint",
            "cache-create",
            "push",
            "push",
            "replace",
            "cache-configure",
            "pin-set",
            "pin-remove",
            "delete",
            "gc",
            "cache-create",
            "cache-destroy",
            "token-revoke",
        ],
        "{all:#?}"
    );
    let by_token: Vec<&Value> = all.iter().filter(|e| e["subject"] == "ci-bot").collect();
    assert_eq!(by_token.len(), 10);
    for e in &by_token {
        assert_eq!(e["jti"], json!(jti), "{e}");
        assert!(e["cache"].as_str().unwrap().starts_with("aud-"), "{e}");
    }
    let mint = &all[0];
    assert_eq!(mint["subject"], "larder-admin:alice");
    assert_eq!(mint["jti"], Value::Null);
    assert_eq!(mint["detail"]["token_jti"], json!(jti));
    assert_eq!(mint["detail"]["token_subject"], "ci-bot");
    assert_eq!(
        all[1]["client_addr"], "192.0.2.10",
        "spoofed header ignored"
    );
    let push = &all[2];
    assert_eq!(
        push["client_addr"], "198.51.100.7",
        "named by the trusted proxy"
    );
    assert_eq!(push["store_path"], json!(a.store_path()));
    assert_eq!(push["nar_hash"], json!(a.nar_hash.to_string()));
    assert_eq!(push["detail"]["route"], "upload-path");
    let nix = &all[3];
    assert_eq!(nix["client_addr"], "127.0.0.1");
    assert_eq!(nix["store_path"], json!(b.store_path()));
    assert_eq!(nix["detail"]["route"], "nix-copy");
    let replace = &all[4];
    assert_eq!(replace["nar_hash"], json!(a2.nar_hash.to_string()));
    assert_eq!(
        replace["detail"]["old_nar_hash"],
        json!(a.nar_hash.to_string())
    );
    let configure = &all[5]["detail"]["changes"];
    assert_eq!(configure["keypair"], "Generate");
    assert_eq!(configure["priority"], 50);
    assert_eq!(configure["retention_period"], json!({"Period": 60}));
    assert_eq!(all[6]["store_path"], json!(b.store_path()));
    assert_eq!(all[6]["detail"]["pin"], "keep");
    let delete = &all[8];
    assert_eq!(delete["store_path"], json!(b.store_path()));
    assert_eq!(delete["nar_hash"], json!(b.nar_hash.to_string()));
    let gc_row = &all[9];
    assert_eq!(gc_row["subject"], "test-gc");
    assert_eq!(
        gc_row["detail"]["expired_by_cache"]["aud-main"],
        json!(report.objects_expired)
    );
    assert_eq!(gc_row["detail"]["nars_deleted"], json!(report.nars_deleted));
    assert_eq!(gc_row["detail"]["bytes_freed"], json!(report.bytes_freed));
    assert_eq!(all[12]["detail"]["token_jti"], json!(jti));
    assert_eq!(all[12]["subject"], "larder-admin:alice");

    // Filters.
    assert_eq!(audit_json(app, &["--sub", "ci-bot"]).len(), 10);
    assert_eq!(audit_json(app, &["--jti", &jti]).len(), 10);
    assert_eq!(
        kinds(&audit_json(app, &["--sub", "ci-bot", "--kind", "push"])),
        ["push", "push"]
    );
    assert_eq!(
        kinds(&audit_json(app, &["--cache", "aud-tmp"])),
        ["cache-create", "cache-destroy"],
        "the log outlives a destroyed cache"
    );
    assert_eq!(audit_json(app, &["--cache", "aud-main"]).len(), 8);
    assert_eq!(audit_json(app, &["--since", "1h"]).len(), all.len());
    assert_eq!(
        audit_json(app, &["--since", "2000-01-01T00:00:00Z"]).len(),
        all.len()
    );
    assert!(audit_json(app, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert!(audit_json(app, &["--sub", "nobody"]).is_empty());

    // The table; and no secret anywhere.
    let table = admin(app, &["audit"]);
    assert_eq!(table.lines().count(), all.len() + 1, "{table}");
    assert!(table.lines().next().unwrap().starts_with("TIME"), "{table}");
    assert!(
        table.contains(&a.store_path()) && table.contains("198.51.100.7"),
        "{table}"
    );
    let dump = serde_json::to_string(&all).unwrap();
    for secret in [
        token.as_str(),
        "bGFyZGVyLXBpcGVsaW5lLXRlc3RzLWhzMjU2LXNlY3I=",
    ] {
        assert!(!dump.contains(secret) && !table.contains(secret));
    }
    assert!(
        !dump.contains("aud-main:"),
        "no signing key in the log: {dump}"
    );

    // Over real TCP, the connection loop supplies the peer (127.0.0.1, a
    // trusted proxy here, so its X-Forwarded-For names the client).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(larder_api::http_server::serve(
        listener,
        app.router(),
        app.state.config.http.clone(),
        stop.clone(),
    ));
    let root = app.root_token();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/_api/v1/cache-config/aud-tcp"))
        .bearer_auth(&root)
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({
            "keypair": "Generate",
            "is_public": false,
            "store_dir": "/nix/store",
            "priority": 41,
            "upstream_cache_key_names": [],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    stop.cancel();
    server.await.unwrap().unwrap();
    let tcp = audit_json(app, &["--cache", "aud-tcp"]);
    assert_eq!(kinds(&tcp), ["cache-create"]);
    assert_eq!(tcp[0]["client_addr"], "203.0.113.9");
    assert_eq!(tcp[0]["subject"], "pipeline-test");

    // The operator's prune deletes only what is older than asked: a GC
    // pass run as of ten days ago is the one old event.
    gc::run(&app.services, unix_now() - 10 * 86400, "old-gc")
        .await
        .unwrap()
        .expect("no other GC");
    let before = audit_json(app, &[]).len();
    let out = admin(app, &["audit", "--prune-before", "5d"]);
    assert!(out.starts_with("deleted 1 audit events"), "{out}");
    let after = audit_json(app, &[]);
    assert_eq!(after.len(), before - 1);
    assert!(after.iter().all(|e| e["subject"] != "old-gc"));
}
