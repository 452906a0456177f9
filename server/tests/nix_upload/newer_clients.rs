//! What newer Nix and Lix clients send that no packaged client here does
//! yet (docs/protocol.md "Build logs and realisations", "Compressed
//! metadata"): build logs, realisations, `Content-Encoding` on metadata
//! PUTs, several `Sig:` lines, multi-frame and large-window zstd, and Nix
//! 2.35's upload order (every NAR first, in parallel; narinfos after).

use super::*;
use larder_shared::storage::checksum::Checksum;

use crate::gc::gc_support::clock::{default_retention, gc_at, grace};

on_both_backends!(
    build_log_round_trip,
    build_logs_need_permissions,
    build_logs_expire_with_retention,
    realisations_round_trip,
    realisations_live_with_their_output,
    metadata_puts_are_decoded,
    every_uploader_signature_is_kept,
    zstd_frames_and_windows,
    nars_come_before_their_references,
);

on_both_backends!(crate::nix_upload::newer_clients::small_logs => a_log_over_max_log_size_is_refused);

/// An app whose `[http] max-log-size` is 4 KiB.
pub async fn small_logs(backend: common::Backend) -> TestApp {
    TestApp::builder(backend)
        .config("\n[http]\nmax-log-size = 4096\n")
        .build()
        .await
}

const DRV: &str = "0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10.drv";

fn log_text() -> Bytes {
    Bytes::from("building '/nix/store/…-hello-2.10.drv'...\nchecking for gcc... gcc\n".repeat(50))
}

/// A PUT with a `Content-Encoding`.
async fn put_encoded(
    app: &TestApp,
    token: &str,
    uri: &str,
    encoding: &str,
    body: Vec<u8>,
) -> TestResponse {
    let req = request(Method::PUT, uri, Some(token))
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_ENCODING, encoding)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap();
    app.send(req).await
}

async fn stats(app: &TestApp, cache: &str) -> Value {
    app.get(
        &format!("/_api/v1/caches/{cache}/stats"),
        Some(&app.root_token()),
    )
    .await
    .json()
}

async fn build_log_round_trip(app: &TestApp) {
    app.create_cache("logs", false).await;
    let token = app.token(&[("logs", PULL_PUSH)]);
    let uri = format!("/logs/log/{DRV}");
    app.get(&uri, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    put(app, &token, &uri, "text/plain; charset=utf-8", log_text())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let got = app.get(&uri, Some(&token)).await;
    got.assert_status(StatusCode::OK);
    assert_eq!(got.body, log_text());
    assert_eq!(
        got.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        head(app, &token, &uri).await.status,
        StatusCode::OK,
        "HEAD answers as GET"
    );
    // Stored compressed, and counted.
    let s = stats(app, "logs").await;
    assert_eq!(s["build_logs"], 1, "{s}");
    let stored = s["build_log_bytes"].as_i64().unwrap();
    assert!(stored > 0 && stored < log_text().len() as i64 / 4, "{s}");
    // A rebuild's log replaces it.
    put(
        app,
        &token,
        &uri,
        "text/plain",
        Bytes::from_static(b"second\n"),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(app.get(&uri, Some(&token)).await.body, "second\n");
    assert_eq!(stats(app, "logs").await["build_logs"], 1);
    // Each stored log is in the audit trail, with who sent it.
    let audited = app
        .scalar(
            "SELECT count(*) FROM audit_log WHERE kind = 'log-put' AND cache = 'logs' \
             AND subject IS NOT NULL",
        )
        .await;
    assert_eq!(audited, 2, "both uploads audited");
    // Only derivation names.
    for bad in [
        "not-a-store-path",
        "0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10",
    ] {
        put(
            app,
            &token,
            &format!("/logs/log/{bad}"),
            "text/plain",
            log_text(),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    }
}

async fn build_logs_need_permissions(app: &TestApp) {
    app.create_cache("private-logs", false).await;
    app.create_cache("public-logs", true).await;
    let uri = format!("/private-logs/log/{DRV}");
    let pusher = app.token(&[("private-logs", &[Permission::Push])]);
    let puller = app.token(&[("private-logs", &[Permission::Pull])]);
    let other = app.token(&[("public-logs", PULL_PUSH)]);
    put(app, &puller, &uri, "text/plain", log_text())
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    put(app, &pusher, &uri, "text/plain", log_text())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    app.get(&uri, Some(&pusher))
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    assert_eq!(app.get(&uri, Some(&puller)).await.body, log_text());
    // Strangers: the same 401 for a log that exists, one that does not, and
    // a cache that does not exist.
    let missing = "/private-logs/log/1c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-x.drv".to_owned();
    let no_cache = format!("/no-such-cache/log/{DRV}");
    let mut bodies = Vec::new();
    for u in [&uri, &missing, &no_cache] {
        for t in [None, Some(other.as_str())] {
            let r = app.get(u, t).await;
            r.assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
            bodies.push(r.body.clone());
        }
        put(app, &other, u, "text/plain", log_text())
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    // A public cache's logs are readable by anyone.
    let public = format!("/public-logs/log/{DRV}");
    put(app, &other, &public, "text/plain", log_text())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(app.get(&public, None).await.body, log_text());
}

async fn a_log_over_max_log_size_is_refused(app: &TestApp) {
    app.create_cache("logs", false).await;
    let token = app.token(&[("logs", PULL_PUSH)]);
    let uri = format!("/logs/log/{DRV}");
    put(
        app,
        &token,
        &uri,
        "text/plain",
        Bytes::from(vec![b'x'; 4097]),
    )
    .await
    .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    // Small once compressed is not enough: the decoded size counts.
    let bomb = zstd::encode_all(&vec![b'x'; 100_000][..], 3).unwrap();
    put_encoded(app, &token, &uri, "zstd", bomb)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    app.get(&uri, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    put(
        app,
        &token,
        &uri,
        "text/plain",
        Bytes::from(vec![b'x'; 4096]),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
}

async fn build_logs_expire_with_retention(app: &TestApp) {
    app.create_cache("logs", false).await;
    let token = app.token(&[("logs", PULL_PUSH)]);
    let log = format!("/logs/log/{DRV}");
    let doc =
        "/logs/realisations/sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!out.doi";
    put(app, &token, &log, "text/plain", log_text())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    put(
        app,
        &token,
        doc,
        "application/json",
        Bytes::from_static(b"{}"),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
    let now = unix_now();
    let retention = default_retention(app);
    let report = gc_at(app, now + retention - 3600).await;
    assert_eq!(
        (report.build_logs_expired, report.realisations_expired),
        (0, 0)
    );
    assert_eq!(app.get(&log, Some(&token)).await.status, StatusCode::OK);
    let report = gc_at(app, now + retention + 3600).await;
    assert_eq!(
        (report.build_logs_expired, report.realisations_expired),
        (1, 1)
    );
    app.get(&log, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    app.get(doc, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    assert_eq!(stats(app, "logs").await["build_logs"], 0);
}

async fn realisations_round_trip(app: &TestApp) {
    app.create_cache("ca", false).await;
    let token = app.token(&[("ca", PULL_PUSH)]);
    let puller = app.token(&[("ca", &[Permission::Pull])]);
    let body = Bytes::from_static(
        br#"{"id":"sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!out","outPath":"0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10","signatures":["k:sig"],"dependentRealisations":{}}"#,
    );
    for uri in [
        "/ca/realisations/sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!out.doi"
            .to_owned(),
        format!("/ca/build-trace-v2/{DRV}/out.doi"),
    ] {
        app.get(&uri, Some(&token))
            .await
            .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
        put(app, &puller, &uri, "application/json", body.clone())
            .await
            .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
        put(app, &token, &uri, "application/json", body.clone())
            .await
            .assert_status(StatusCode::NO_CONTENT);
        let got = app.get(&uri, Some(&puller)).await;
        got.assert_status(StatusCode::OK);
        assert_eq!(got.body, body, "as uploaded");
        assert_eq!(got.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(head(app, &puller, &uri).await.status, StatusCode::OK);
        app.get(&uri, None)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
        put(
            app,
            &token,
            &uri,
            "application/json",
            Bytes::from_static(b"not json"),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
        put(
            app,
            &token,
            &uri,
            "application/json",
            Bytes::from(vec![b' '; 65 * 1024]),
        )
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
        assert_eq!(app.get(&uri, Some(&token)).await.body, body, "unchanged");
    }
    assert_eq!(stats(app, "ca").await["realisations"], 2);
    let audited = app
        .scalar(
            "SELECT count(*) FROM audit_log WHERE kind = 'realisation-put' AND cache = 'ca' \
             AND subject IS NOT NULL",
        )
        .await;
    assert_eq!(
        audited, 2,
        "both stored realisations audited, no refused one"
    );
    for bad in [
        "/ca/realisations/no-bang.doi",
        "/ca/realisations/sha256:x!out.json",
        "/ca/build-trace-v2/not-a-drv/out.doi",
    ] {
        put(app, &token, bad, "application/json", body.clone())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    }
}

/// A realisation naming an output (`outPath`) is kept while the cache
/// keeps that path and goes with it; one naming a path the cache never had
/// goes once the grace period is over.
async fn realisations_live_with_their_output(app: &TestApp) {
    app.create_cache("live", false).await;
    let token = app.token(&[("live", PULL_PUSH)]);
    let nar = test_path("ca-out", 4242);
    app.upload(&token, "live", &nar)
        .await
        .assert_status(StatusCode::OK);
    let doc = |out: &str| {
        Bytes::from(format!(
            r#"{{"id":"sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!out","outPath":"{out}","signatures":[],"dependentRealisations":{{}}}}"#
        ))
    };
    let kept =
        "/live/realisations/sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!out.doi";
    let orphan =
        "/live/realisations/sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!dev.doi";
    put(app, &token, kept, "application/json", doc(&nar.base_name))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    put(
        app,
        &token,
        orphan,
        "application/json",
        doc("0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-never-pushed"),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
    put(
        app,
        &token,
        orphan,
        "application/json",
        doc("not a store path"),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    let now = unix_now();
    let report = gc_at(app, now + grace(app) + 60).await;
    assert_eq!(report.realisations_expired, 1, "{report:?}");
    assert_eq!(app.get(kept, Some(&token)).await.status, StatusCode::OK);
    app.get(orphan, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");

    // Its output expires (no access within the retention): it goes too.
    let report = gc_at(app, now + default_retention(app) + 3600).await;
    assert_eq!(
        (report.objects_expired, report.realisations_expired),
        (1, 1),
        "{report:?}"
    );
    app.get(kept, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
}

/// Nix ≥ 2.32 with `narinfo-compression`, `ls-compression` and
/// `log-compression`: the bodies are decoded before they are parsed.
async fn metadata_puts_are_decoded(app: &TestApp) {
    app.create_cache("enc", false).await;
    let token = app.token(&[("enc", PULL_PUSH)]);
    let encodings = [
        ("gzip", Compression::Gzip),
        ("br", Compression::Brotli),
        ("zstd", Compression::Zstd),
        ("xz", Compression::Xz),
        ("bzip2", Compression::Bzip2),
        ("identity", Compression::None),
    ];
    for (i, (encoding, c)) in encodings.into_iter().enumerate() {
        let nar = test_path(&format!("enc-{encoding}"), 500 + i as u64);
        let file = NarFile::new(Compression::Zstd, &nar);
        put_nar(app, &token, "enc", &file)
            .await
            .assert_status(StatusCode::OK);
        let info = nix_narinfo(&nar, &file, None).render(&StoreDir::default());
        let uri = format!("/enc/{}.narinfo", nar.store_hash());
        put_encoded(app, &token, &uri, encoding, compress(c, info.as_bytes()))
            .await
            .assert_status(StatusCode::NO_CONTENT);
        narinfo(app, &token, "enc", &nar).await;
        let ls = format!("/enc/{}.ls", nar.store_hash());
        let listing = listing_of(&nar);
        put_encoded(app, &token, &ls, encoding, compress(c, &listing))
            .await
            .assert_status(StatusCode::NO_CONTENT);
        assert_eq!(app.get(&ls, Some(&token)).await.body, listing, "{encoding}");
        let log = format!("/enc/log/{DRV}");
        put_encoded(app, &token, &log, encoding, compress(c, &log_text()))
            .await
            .assert_status(StatusCode::NO_CONTENT);
        assert_eq!(
            app.get(&log, Some(&token)).await.body,
            log_text(),
            "{encoding}"
        );
    }
    let nar = test_path("enc-bad", 599);
    let uri = format!("/enc/{}.narinfo", nar.store_hash());
    let r = put_encoded(app, &token, &uri, "compress", b"whatever".to_vec()).await;
    r.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType");
    assert!(r.text().contains("compress"), "{}", r.text());
    put_encoded(app, &token, &uri, "gzip", b"not gzip at all".to_vec())
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    put_encoded(
        app,
        &token,
        &format!("/enc/log/{DRV}"),
        "gzip, br",
        b"x".to_vec(),
    )
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType");
}

/// Several `secret-keys=`: one `Sig:` line each, every one kept, the
/// cache's own added first.
async fn every_uploader_signature_is_kept(app: &TestApp) {
    app.create_cache("sigs", true).await;
    let token = app.token(&[("sigs", PULL_PUSH)]);
    let nar = test_path("sigs", 700);
    let file = NarFile::new(Compression::Xz, &nar);
    let a = SigningKey::generate("uploader-a-1").unwrap();
    let b = SigningKey::generate("uploader-b-1").unwrap();
    let mut info = nix_narinfo(&nar, &file, Some(&a));
    info.sigs.extend(nix_narinfo(&nar, &file, Some(&b)).sigs);
    assert_eq!(info.sigs.len(), 2);
    put_nar(app, &token, "sigs", &file)
        .await
        .assert_status(StatusCode::OK);
    put_narinfo(app, &token, "sigs", &nar, &info)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    for _ in 0..2 {
        let (served, parsed) = narinfo(app, &token, "sigs", &nar).await;
        let sigs: Vec<&str> = served
            .lines()
            .filter_map(|l| l.strip_prefix("Sig: "))
            .collect();
        assert_eq!(sigs.len(), 3, "{served}");
        assert!(
            sigs[0].starts_with("sigs:"),
            "the cache's own first: {served}"
        );
        assert_eq!(&sigs[1..], &[info.sigs[0].as_str(), info.sigs[1].as_str()]);
        assert_signed(&parsed, &app.public_key("sigs").await, &nar);
        app.drain_jobs().await;
    }
}

/// Nix 2.35 writes concatenated 16 MiB frames; a frame asking for a window
/// past `[http] max-zstd-window-log` is refused, not allocated.
async fn zstd_frames_and_windows(app: &TestApp) {
    app.create_cache("zst", false).await;
    let token = app.token(&[("zst", PULL_PUSH)]);
    let nar = test_path("frames", 800);
    let (a, b) = nar.bytes.split_at(nar.bytes.len() / 3);
    let mut body = zstd::encode_all(a, 3).unwrap();
    body.extend(zstd::encode_all(b, 12).unwrap());
    let file = NarFile::from_body(Compression::Zstd, body);
    put_nar(app, &token, "zst", &file)
        .await
        .assert_status(StatusCode::OK);
    put_narinfo(app, &token, "zst", &nar, &nix_narinfo(&nar, &file, None))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    narinfo(app, &token, "zst", &nar).await;
    assert_eq!(
        app.nar_record(&nar).await.staged_checksum,
        Some(Checksum::of(&nar.bytes)),
        "the checksum of the decompressed copy, kept from .nar to .narinfo"
    );

    // A frame declaring a 2^28-byte window (zstd --long=28).
    let big = test_path("big-window", 801);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(28).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.write_all(&big.bytes).unwrap();
    let file = NarFile::from_body(Compression::Zstd, enc.finish().unwrap());
    let r = put_nar(app, &token, "zst", &file).await;
    r.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert!(r.text().contains("max-zstd-window-log"), "{}", r.text());
}

/// Nix 2.35: the NARs of a closure are uploaded first, in parallel and
/// largest first, before any narinfo; only the narinfos keep dependency
/// order. Nothing is checked on the NAR PUT, so this just works.
async fn nars_come_before_their_references(app: &TestApp) {
    app.create_cache("order", false).await;
    let token = app.token(&[("order", PULL_PUSH)]);
    let dep = test_path("order-dep", 900);
    let mut top = test_path("order-top", 901);
    top.references = vec![dep.base_name.clone(), top.base_name.clone()];
    let dep_file = NarFile::new(Compression::Zstd, &dep);
    let top_file = NarFile::new(Compression::Zstd, &top);
    let (a, b) = tokio::join!(
        put_nar(app, &token, "order", &top_file),
        put_nar(app, &token, "order", &dep_file),
    );
    a.assert_status(StatusCode::OK);
    b.assert_status(StatusCode::OK);
    for (nar, file) in [(&dep, &dep_file), (&top, &top_file)] {
        put_narinfo(app, &token, "order", nar, &nix_narinfo(nar, file, None))
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }
    let (_, info) = narinfo(app, &token, "order", &top).await;
    assert_eq!(info.references.len(), 2);
    narinfo(app, &token, "order", &dep).await;
}
