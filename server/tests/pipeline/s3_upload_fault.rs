//! SeaweedFS killed in the middle of a streaming upload (a private server,
//! so the shared one other tests use is not disturbed), with the body
//! already past one multipart part. Either the upload outlasts the outage
//! and succeeds, and its NAR is then served byte-identical after ingest; or
//! it gives up and the client gets a clear storage error, and nothing is
//! recorded. Either way, once the sweeper has run past `[staging] max-age`,
//! no staging object and no staging intent is left.

use std::io;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{FutureExt as _, SinkExt as _};

use larder_shared::db::unix_now;
use larder_worker::sweeper;

use super::{MIB, PULL_PUSH};
use crate::common::nar::TestNar;
use crate::common::read::{assert_kind, assert_ready_readable};
use crate::common::s3_server::S3Server;
use crate::common::{self, TestApp, TestResponse, request};

/// Pieces of the body sent before the server is stopped: more than one
/// 8 MiB part, so the multipart upload is under way.
const BEFORE_STOP: usize = 10;

/// An `upload-path` of `nar` whose body is fed piece by piece (1 MiB)
/// through a channel of one slot: a piece sent is one the handler takes.
/// Stops `server` after [`BEFORE_STOP`] pieces; `restart_early` restarts
/// it before waiting for the response (the upload's retries must outlast
/// the outage), otherwise after it.
async fn upload_through_outage(
    app: &TestApp,
    server: &mut S3Server,
    token: &str,
    nar: &TestNar,
    restart_early: bool,
) -> TestResponse {
    let (mut tx, rx) = mpsc::channel::<io::Result<Bytes>>(0);
    let req = request(Method::PUT, "/_api/v1/upload-path", Some(token))
        .header("x-attic-nar-info", nar.info("fault").to_string())
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .body(Body::from_stream(rx))
        .expect("request");
    let router = app.router();
    let response = tokio::spawn(async move { common::send(&router, req).await });
    let pieces: Vec<Bytes> = nar.bytes.chunks(MIB).map(Bytes::copy_from_slice).collect();
    assert!(pieces.len() > BEFORE_STOP + 2);
    for piece in &pieces[..BEFORE_STOP] {
        tx.send(Ok(piece.clone())).await.expect("handler reads");
    }
    server.stop();
    let rest = pieces[BEFORE_STOP..].to_vec();
    let sender = tokio::spawn(async move {
        for piece in rest {
            if tx.send(Ok(piece)).await.is_err() {
                break; // the handler gave up on the body
            }
        }
    });
    if restart_early {
        server.restart().await;
    }
    let resp = response.await.expect("request task");
    sender.await.expect("sender task");
    if !restart_early {
        server.restart().await;
    }
    resp
}

/// What must hold after either outcome: an acknowledged upload is served
/// byte-identical once ingested, a refused one recorded nothing; and past
/// `max-age` the sweeper leaves no staging object or intent behind.
async fn nothing_lost_nothing_leaked(app: &TestApp, token: &str, nar: &TestNar, ok: bool) {
    if ok {
        assert_eq!(app.drain_jobs().await, 1);
        assert_ready_readable(app, token, "fault", nar).await;
    } else {
        assert_eq!(
            app.count("nars").await,
            0,
            "a refused upload recorded a NAR"
        );
        assert_eq!(app.count("objects").await, 0);
    }
    let max_age = app.services.config.staging.max_age.as_secs() as i64;
    sweeper::sweep(&app.services, unix_now() + max_age + 60)
        .await
        .expect("sweep");
    app.assert_staging_empty().await;
}

async fn scenario(patient: &TestApp, impatient: &TestApp, server: &mut S3Server) {
    // Gives up while the server is down: a clear storage error, nothing
    // recorded; the upload's intent (its copy could not be deleted while
    // the server was down) is the sweeper's. Pushing again works.
    impatient.create_cache("fault", false).await;
    let token = impatient.token(&[("fault", PULL_PUSH)]);
    let nar = TestNar::files("outage-1.0", 61, &[12 * MIB, 8 * MIB]);
    let resp = upload_through_outage(impatient, server, &token, &nar, false).await;
    resp.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "StorageError");
    nothing_lost_nothing_leaked(impatient, &token, &nar, false).await;
    assert_kind(&impatient.upload(&token, "fault", &nar).await, "Uploaded");
    nothing_lost_nothing_leaked(impatient, &token, &nar, true).await;

    // Outlasts the outage: the client gets an answer either way; if it is a
    // success, the NAR is whole.
    patient.create_cache("fault", false).await;
    let token = patient.token(&[("fault", PULL_PUSH)]);
    let nar = TestNar::files("outage-2.0", 62, &[12 * MIB, 8 * MIB]);
    let resp = upload_through_outage(patient, server, &token, &nar, true).await;
    let ok = resp.status == StatusCode::OK;
    eprintln!("upload through the outage answered {}", resp.status);
    if ok {
        assert_kind(&resp, "Uploaded");
    } else {
        resp.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "StorageError");
    }
    nothing_lost_nothing_leaked(patient, &token, &nar, ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_restarted_during_upload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(mut server) = S3Server::start(18533, dir.path()).await else {
        return;
    };
    let app = |retries| {
        TestApp::builder(common::Backend::Sqlite)
            .storage(common::s3_storage_toml_at(&server.endpoint(), retries))
            .build()
    };
    let patient = app(200).await;
    let impatient = app(1).await;
    let outcome = std::panic::AssertUnwindSafe(scenario(&patient, &impatient, &mut server))
        .catch_unwind()
        .await;
    server.stop();
    patient.teardown().await;
    impatient.teardown().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
