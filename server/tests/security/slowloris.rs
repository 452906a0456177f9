//! Timeouts (docs/operations.md "Connections and timeouts"): clients that stop talking, against the real connection
//! loop (`larder_api::http_server`) on 127.0.0.1 with raw sockets and short
//! configured timeouts. Unfinished headers and idle keep-alive connections
//! are closed; an authenticated upload that stops sending is aborted and
//! leaves nothing in staging and no rows (both backends); connections past
//! `max-connections` wait until one closes; on shutdown, a request still in
//! progress after `shutdown-timeout` is cut off and the server stops. A
//! streamed chunk-push prepare may pause, but not fall silent.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use larder_core::chunk::ChunkHash;
use larder_core::nix::hash::FileHash;
use larder_core::wire::chunk_push::{
    BATCH_CONTENT_TYPE, HASH_LIST_CONTENT_TYPE, encode_entry, encode_hash_list,
};
use larder_shared::config::{ConfigDuration, HttpConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::nar::TestNar;
use crate::common::{Backend, TestApp};

/// How long anything that must happen may take (generous: CI is slow).
const BOUND: Duration = Duration::from_secs(20);

fn ms(n: u64) -> ConfigDuration {
    serde_json::from_value(serde_json::json!(format!("{n}ms"))).expect("duration")
}

/// Timeouts long enough never to fire during a test, unless overridden.
fn patient() -> HttpConfig {
    HttpConfig {
        header_read_timeout: ConfigDuration::from_secs(600),
        idle_timeout: ConfigDuration::from_secs(600),
        body_min_rate: 0,
        body_rate_window: ConfigDuration::from_secs(600),
        max_connections: 64,
        ..HttpConfig::default()
    }
}

/// A server for `app` on a free loopback port; stop it with the token.
async fn serve(app: &TestApp, http: HttpConfig) -> (SocketAddr, CancellationToken) {
    let (addr, stop, _) = serve_joined(app, http).await;
    (addr, stop)
}

/// [`serve`], with the server's task, which ends when it has stopped.
async fn serve_joined(
    app: &TestApp,
    http: HttpConfig,
) -> (
    SocketAddr,
    CancellationToken,
    JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let server = tokio::spawn(larder_api::http_server::serve(
        listener,
        app.router(),
        http,
        stop.clone(),
    ));
    (addr, stop, server)
}

/// Waits (within [`BOUND`]) for the server to close the connection;
/// returns what it sent before.
async fn closed_by_server(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after {BOUND:?}");
    got
}

/// Reads one response with a `Content-Length` body; returns its status line.
async fn response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("Content-Length"))
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return;
                }
            }
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no response within {BOUND:?}");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

const HEALTH: &[u8] = b"GET /_health HTTP/1.1\r\nHost: larder\r\n\r\n";

#[tokio::test]
async fn unfinished_headers_are_closed() {
    let app = TestApp::new(Backend::Sqlite).await;
    let (addr, stop) = serve(
        &app,
        HttpConfig {
            header_read_timeout: ms(300),
            ..patient()
        },
    )
    .await;
    // A well-behaved request on the same server is unaffected.
    let mut ok = TcpStream::connect(addr).await.expect("connect");
    ok.write_all(HEALTH).await.expect("write");
    assert!(response(&mut ok).await.starts_with("HTTP/1.1 200"));
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /_health HTTP/1.1\r\nHost: larder\r\nX-Slow: ")
        .await
        .expect("write");
    let sent = closed_by_server(s).await;
    assert!(
        sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
        "{sent:?}"
    );
    stop.cancel();
    app.teardown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let app = TestApp::new(Backend::Sqlite).await;
    let (addr, stop) = serve(
        &app,
        HttpConfig {
            idle_timeout: ms(300),
            ..patient()
        },
    )
    .await;
    // Keep-alive after a request, then silence.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(HEALTH).await.expect("write");
    assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(s).await.is_empty());
    // A connection that never says anything.
    let silent = TcpStream::connect(addr).await.expect("connect");
    assert!(closed_by_server(silent).await.is_empty());
    stop.cancel();
    app.teardown().await;
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let app = TestApp::new(Backend::Sqlite).await;
    let (addr, stop) = serve(
        &app,
        HttpConfig {
            max_connections: 2,
            ..patient()
        },
    )
    .await;
    // Two connections, each served once, so both hold their slot.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(HEALTH).await.expect("write");
        assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The third connects (kernel backlog) but is not served...
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third.write_all(HEALTH).await.expect("write");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past max-connections: {early:?}");
    // ...until a slot frees.
    drop(held.pop());
    assert!(response(&mut third).await.starts_with("HTTP/1.1 200"));
    stop.cancel();
    app.teardown().await;
}

/// The head of an Attic `upload-path` of `nar` to the cache "slow".
fn upload_path_head(token: &str, nar: &TestNar) -> String {
    format!(
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: larder\r\nAuthorization: Bearer {token}\r\n\
         X-Attic-Nar-Info: {}\r\nContent-Type: application/x-nix-nar\r\nContent-Length: {}\r\n\r\n",
        nar.info("slow"),
        nar.bytes.len()
    )
}

/// An upload sending its head and a first part of its body, then nothing.
fn stalled_upload(head: String, body: &[u8]) -> Vec<u8> {
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    req
}

async fn stalled_uploads_are_aborted(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create_cache("slow", false).await;
    let token = app.root_token();
    let (addr, stop) = serve(
        &app,
        HttpConfig {
            body_min_rate: 1024,
            body_rate_window: ms(300),
            ..patient()
        },
    )
    .await;
    let nar = TestNar::files("slow-1.0", 80, &[256 * 1024]);
    let attic = upload_path_head(&token, &nar);
    let file = format!("{}.nar", FileHash::digest(&nar.bytes).to_base32());
    let nix = format!(
        "PUT /slow/nar/{file} HTTP/1.1\r\nHost: larder\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-nix-nar\r\nContent-Length: {}\r\n\r\n",
        nar.bytes.len()
    );
    for (what, head) in [("upload-path", attic), ("nix PUT nar", nix)] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&stalled_upload(head, &nar.bytes[..64 * 1024]))
            .await
            .expect("write");
        // Staging has the partial upload while the client still sends.
        let sent = closed_by_server(s).await;
        let status = String::from_utf8_lossy(&sent);
        assert!(
            sent.is_empty() || status.starts_with("HTTP/1.1 4"),
            "{what}: {status}"
        );
        app.assert_staging_empty().await;
        for table in ["nars", "objects", "nix_uploads"] {
            assert_eq!(app.count(table).await, 0, "{what}: rows in {table}");
        }
    }
    stop.cancel();
    app.teardown().await;
}

#[tokio::test]
async fn stalled_uploads_are_aborted_sqlite() {
    stalled_uploads_are_aborted(Backend::Sqlite).await;
}

#[tokio::test]
async fn stalled_uploads_are_aborted_postgres() {
    stalled_uploads_are_aborted(Backend::Postgres).await;
}

/// A stalled upload (no rate limit to abort it) keeps its connection in a
/// request; on shutdown the server waits `shutdown-timeout` for it, then
/// closes the connection and returns, with nothing recorded.
#[tokio::test]
async fn shutdown_cuts_off_requests_after_the_timeout() {
    let app = TestApp::new(Backend::Sqlite).await;
    app.create_cache("slow", false).await;
    let token = app.root_token();
    let (addr, stop, server) = serve_joined(
        &app,
        HttpConfig {
            shutdown_timeout: ms(300),
            ..patient()
        },
    )
    .await;
    let nar = TestNar::files("slow-1.0", 80, &[256 * 1024]);
    let head = upload_path_head(&token, &nar);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&stalled_upload(head, &nar.bytes[..64 * 1024]))
        .await
        .expect("write");
    // The upload is in progress once its bytes are being staged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let stopped = tokio::time::timeout(BOUND, server).await;
    assert!(
        stopped.is_ok(),
        "the server still waits for a stalled request {BOUND:?} after shutdown"
    );
    closed_by_server(s).await;
    for table in ["nars", "objects"] {
        assert_eq!(app.count(table).await, 0, "rows in {table}");
    }
    app.teardown().await;
}

/// A streamed chunk-push prepare (docs/protocol.md "Streamed prepare")
/// may pause between the pieces of its list far below `body-min-rate`,
/// as its pieces follow the client's batches, but not fall silent for a
/// whole window: then it is aborted, leaving nothing in staging.
#[tokio::test]
async fn a_streamed_prepare_may_pause_but_not_fall_silent() {
    let app = TestApp::new(Backend::Sqlite).await;
    app.create_cache("slow", false).await;
    let token = app.root_token();
    let (addr, stop) = serve(
        &app,
        HttpConfig {
            body_min_rate: 1 << 20,
            body_rate_window: ms(600),
            ..patient()
        },
    )
    .await;
    // Under the chunking threshold: the NAR is its one chunk.
    let nar = TestNar::files("slow-1.0", 81, &[20 * 1024]);
    let hash = ChunkHash::of(&nar.bytes);
    let base = format!("http://{addr}/_api/larder/v1/caches/slow");
    let client = reqwest::Client::new();
    let mut batch = Vec::new();
    let frame = zstd::bulk::compress(&nar.bytes, 3).expect("zstd");
    encode_entry(&mut batch, &hash, &frame);
    let sent = client
        .post(format!("{base}/chunks"))
        .bearer_auth(&token)
        .header("content-type", BATCH_CONTENT_TYPE)
        .body(batch)
        .send()
        .await
        .expect("batch");
    assert_eq!(sent.status(), 200);

    let intents = app.count("staging_intents").await;

    let head = serde_json::json!({"info": nar.info("slow"), "mode": "prepare"});
    let head = encode_hash_list(head.to_string().as_bytes(), &[]);
    let raw = hash.as_bytes().to_vec();
    // Each piece after its pause (ms).
    let prepare = |pieces: Vec<(u64, Vec<u8>)>| {
        let body = futures::stream::iter(pieces).then(|(pause, piece)| async move {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            Ok::<_, std::io::Error>(piece)
        });
        client
            .post(format!("{base}/nars"))
            .bearer_auth(&token)
            .header("content-type", HASH_LIST_CONTENT_TYPE)
            .body(reqwest::Body::wrap_stream(body))
            .send()
    };

    // Silent for over two windows after its first bytes (the first
    // window had some): aborted.
    let silent = prepare(vec![
        (0, head.clone()),
        (0, raw[..10].to_vec()),
        (2500, raw[10..].to_vec()),
    ])
    .await;
    assert!(
        silent.as_ref().map_or(true, |r| r.status() == 400),
        "{silent:?}"
    );
    let staged = app.files_on_disk("staging");
    assert!(
        staged
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "chunks")),
        "only the batch is staged: {staged:?}"
    );
    assert_eq!(app.count("staging_intents").await, intents, "no new intent");

    // 32 bytes over 750 ms of pauses, each shorter than a window.
    let paused = prepare(vec![
        (0, head),
        (250, raw[..10].to_vec()),
        (250, raw[10..20].to_vec()),
        (250, raw[20..].to_vec()),
    ])
    .await
    .expect("prepare");
    assert_eq!(paused.status(), 200, "{:?}", paused.text().await);
    stop.cancel();
    app.teardown().await;
}
