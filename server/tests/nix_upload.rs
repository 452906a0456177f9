//! Uploads from stock `nix copy --to http://…` (docs/protocol.md "What real Nix clients do")
//! through the router: the request sequence Nix 2.8 sends (docs/protocol.md
//! "What real Nix clients do") for every compression it uploads, reads back
//! the way Nix reads, the uploader's URL kept answering in its compression,
//! rejected uploads and narinfos, re-pushes, `.ls` listings, and the
//! clean-up. Every scenario runs on SQLite and on PostgreSQL.

use crate::common;

mod newer_clients;

use std::io::Write;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use bytes::Bytes;
use serde_json::Value;

use larder_core::nix::hash::FileHash;
use larder_core::nix::nar::{NarNode, NarValidator};
use larder_core::nix::narinfo::{Compression, NarInfo};
use larder_core::nix::signing::{SigningKey, fingerprint};
use larder_core::nix::store_path::{StoreDir, StorePath};
use larder_shared::db::unix_now;
use larder_shared::db::uploads::URL_RETENTION_SECS;
use larder_shared::token::Permission;
use larder_worker::jobs::nix_uploads;

use common::nar::{Rng, TestNar};
use common::read::{assert_signed, fetch, narinfo, narinfo_line, unzstd};
use common::{TestApp, TestResponse, request};

const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];

on_both_backends!(
    every_compression_round_trips,
    narinfo_without_its_nar_is_rejected,
    narinfo_not_matching_its_nar_is_rejected,
    bad_nar_files_are_rejected,
    pushing_again_costs_almost_nothing,
    uploader_urls_expire_and_are_cleaned_up,
    nix_cache_info_put_never_creates_a_cache,
    listing_put_then_get,
    listing_generated_for_attic_uploads,
    a_published_path_keeps_its_nar,
    a_narinfo_late_for_its_staged_copy_is_refused,
);

on_both_backends!(crate::pipeline::staging_quota::with_quota => the_staging_quota_lets_nix_copy_through);

// --- helpers --------------------------------------------------------------------

/// A store path with a NAR that compresses somewhat (text) and somewhat not
/// (random bytes), with an executable and a symlink, as real paths have.
fn test_path(name: &str, seed: u64) -> TestNar {
    let mut rng = Rng::new(seed);
    let node = NarNode::directory([
        (
            "bin",
            NarNode::directory([("hello", NarNode::executable(rng.bytes(30_000)))]),
        ),
        ("data", NarNode::file(rng.bytes(150_000))),
        ("link", NarNode::symlink(b"bin/hello".to_vec())),
        (
            "text",
            NarNode::file(format!("{name} lorem ipsum dolor sit amet\n").repeat(8000)),
        ),
    ]);
    TestNar::from_node(name, seed, &node)
}

/// The lzip container (`lzip(1)`: "LZIP", version 1, coded dictionary size,
/// an LZMA stream with end marker, CRC32, data size, member size) around
/// liblzma's `.lzma` encoder output, which has the properties lzip requires.
fn lzip(data: &[u8]) -> Vec<u8> {
    let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
    let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(data).unwrap();
    let alone = enc.finish().unwrap();
    assert_eq!(alone[0], 0x5d, "lc=3 lp=0 pb=2");
    let dict = u32::from_le_bytes(alone[1..5].try_into().unwrap());
    assert!(dict.is_power_of_two());
    let mut out = b"LZIP\x01".to_vec();
    out.push(dict.trailing_zeros() as u8);
    out.extend_from_slice(&alone[13..]);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let member = out.len() as u64 + 8;
    out.extend_from_slice(&member.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Compresses as Nix 2.8 would for `?compression=<c>`.
fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    fn finish<W: Write>(mut w: W, data: &[u8]) -> W {
        w.write_all(data).unwrap();
        w
    }
    match c {
        Compression::None => data.to_vec(),
        Compression::Xz => finish(liblzma::write::XzEncoder::new(Vec::new(), 6), data)
            .finish()
            .unwrap(),
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        Compression::Bzip2 => finish(
            bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default()),
            data,
        )
        .finish()
        .unwrap(),
        Compression::Gzip => finish(
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()),
            data,
        )
        .finish()
        .unwrap(),
        Compression::Lz4 => finish(lz4_flex::frame::FrameEncoder::new(Vec::new()), data)
            .finish()
            .unwrap(),
        Compression::Brotli => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data).unwrap();
            }
            out
        }
        Compression::Lzip => lzip(data),
    }
}

/// A NAR file as Nix 2.8 uploads it: `nar/<filehash>.nar<ext>` and its bytes.
struct NarFile {
    name: String,
    body: Bytes,
    compression: Compression,
}

impl NarFile {
    fn new(c: Compression, nar: &TestNar) -> Self {
        Self::from_body(c, compress(c, &nar.bytes))
    }

    /// A file of compressed bytes made some other way than [`compress`].
    fn from_body(c: Compression, body: Vec<u8>) -> Self {
        let hash = FileHash::digest(&body);
        Self {
            name: format!("{}.nar{}", hash.to_base32(), c.file_extension()),
            body: Bytes::from(body),
            compression: c,
        }
    }

    fn url(&self) -> String {
        format!("nar/{}", self.name)
    }
}

/// The narinfo Nix 2.8 PUTs for `nar` uploaded as `file`, signed by `key`.
fn nix_narinfo(nar: &TestNar, file: &NarFile, key: Option<&SigningKey>) -> NarInfo {
    let references: Vec<StorePath> = nar
        .references
        .iter()
        .map(|r| StorePath::from_base_name(r).unwrap())
        .collect();
    let store_path = StorePath::from_base_name(&nar.base_name).unwrap();
    let sigs = key
        .map(|k| {
            let fp = fingerprint(
                &StoreDir::default(),
                &store_path,
                &nar.nar_hash,
                nar.nar_size(),
                &references,
            );
            vec![k.sign(&fp).to_string()]
        })
        .unwrap_or_default();
    NarInfo {
        store_path,
        url: file.url(),
        compression: file.compression,
        file_hash: Some(FileHash::digest(&file.body)),
        file_size: Some(file.body.len() as u64),
        nar_hash: nar.nar_hash,
        nar_size: nar.nar_size(),
        references,
        deriver: nar
            .deriver
            .as_deref()
            .map(|d| StorePath::from_base_name(d).unwrap()),
        system: Some("x86_64-linux".into()),
        sigs,
        ca: None,
    }
}

/// A PUT as Nix sends it (Content-Length and Content-Type set).
async fn put(app: &TestApp, token: &str, uri: &str, ctype: &str, body: Bytes) -> TestResponse {
    let req = request(Method::PUT, uri, Some(token))
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap();
    app.send(req).await
}

async fn head(app: &TestApp, token: &str, uri: &str) -> TestResponse {
    let req = request(Method::HEAD, uri, Some(token))
        .body(Body::empty())
        .unwrap();
    app.send(req).await
}

async fn put_nar(app: &TestApp, token: &str, cache: &str, file: &NarFile) -> TestResponse {
    put(
        app,
        token,
        &format!("/{cache}/{}", file.url()),
        "application/x-nix-nar",
        file.body.clone(),
    )
    .await
}

async fn put_narinfo(
    app: &TestApp,
    token: &str,
    cache: &str,
    nar: &TestNar,
    info: &NarInfo,
) -> TestResponse {
    put(
        app,
        token,
        &format!("/{cache}/{}.narinfo", nar.store_hash()),
        "text/x-nix-narinfo",
        Bytes::from(info.render(&StoreDir::default())),
    )
    .await
}

/// Nix 2.8's whole push of one path: existence checks, NAR, narinfo.
async fn nix_push(
    app: &TestApp,
    token: &str,
    cache: &str,
    nar: &TestNar,
    file: &NarFile,
    key: &SigningKey,
) {
    app.get(&format!("/{cache}/nix-cache-info"), Some(token))
        .await
        .assert_status(StatusCode::OK);
    app.get(
        &format!("/{cache}/{}.narinfo", nar.store_hash()),
        Some(token),
    )
    .await
    .assert_status(StatusCode::NOT_FOUND);
    let nar_uri = format!("/{cache}/{}", file.url());
    head(app, token, &nar_uri)
        .await
        .assert_status(StatusCode::NOT_FOUND);
    let resp = put_nar(app, token, cache, file).await;
    resp.assert_status(StatusCode::OK);
    let body: Value = resp.json();
    assert_eq!(body["compression"], file.compression.as_str(), "{body}");
    assert_eq!(body["nar_hash"], nar.nar_hash.to_string(), "{body}");
    let resp = head(app, token, &nar_uri).await;
    resp.assert_status(StatusCode::OK);
    assert_eq!(resp.content_length(), file.body.len() as u64);
    put_narinfo(app, token, cache, nar, &nix_narinfo(nar, file, Some(key)))
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

const ALL: [Compression; 8] = [
    Compression::Xz,
    Compression::Zstd,
    Compression::Bzip2,
    Compression::Brotli,
    Compression::Gzip,
    Compression::Lz4,
    Compression::Lzip,
    Compression::None,
];

// --- 1. the full sequence, every compression ------------------------------------

async fn every_compression_round_trips(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.token(&[("nixed", PULL_PUSH)]);
    let key = app.public_key("nixed").await;
    let uploader = SigningKey::generate("uploader-1").unwrap();
    let dep = test_path("dep", 100);
    let mut pushed = Vec::new();
    for (i, c) in ALL.into_iter().enumerate() {
        let mut nar = test_path(&format!("path-{c}"), i as u64 + 1);
        nar.references = vec![dep.base_name.clone(), nar.base_name.clone()];
        nar.deriver = Some(format!("{}-path.drv", Rng::new(50 + i as u64).store_hash()));
        let file = NarFile::new(c, &nar);
        nix_push(app, &token, "nixed", &nar, &file, &uploader).await;
        pushed.push((nar, file));
    }
    assert_eq!(
        app.count("nix_uploads").await,
        0,
        "every pending upload consumed"
    );

    let check = async |ingested: bool| {
        for (nar, file) in &pushed {
            let c = file.compression;
            let (text, info) = narinfo(app, &token, "nixed", nar).await;
            assert_signed(&info, &key, nar);
            let theirs = nix_narinfo(nar, file, Some(&uploader)).sigs;
            assert!(
                info.sigs.contains(&theirs[0]),
                "{c}: uploader's Sig kept:\n{text}"
            );
            assert_eq!(narinfo_line(&text, "System"), Some("x86_64-linux"));
            // Larder's own URL, as docs/protocol.md says.
            let own = if ingested {
                format!("nar/{}.nar.zst", nar.url_hash())
            } else {
                format!("nar/{}.nar", nar.url_hash())
            };
            assert_eq!(info.url, own, "{c}");
            let body = fetch(app, &token, "nixed", &info.url).await;
            let plain = if ingested {
                unzstd(&body)
            } else {
                body.to_vec()
            };
            assert!(plain == nar.bytes, "{c}: NAR read back differs");
            // The uploader's URL, in the uploader's compression.
            let theirs = fetch(app, &token, "nixed", &file.url()).await;
            assert!(
                theirs == file.body,
                "{c}: uploader URL differs (ingested: {ingested})"
            );
            assert_uploader_ranges(app, &token, &format!("/nixed/{}", file.url()), &file.body)
                .await;
        }
    };
    check(false).await;
    assert_eq!(app.drain_jobs().await, ALL.len());
    app.assert_staging_empty().await;
    check(true).await;
    // `none`'s URL is Larder's own `.nar` URL: no second copy kept.
    let kept = app.object_keys("uploads/").await;
    assert_eq!(kept.len(), ALL.len() - 1, "{kept:?}");
}

/// Ranges of an uploader's URL (kept in its compression) resume a download
/// as on Larder's own URLs (docs/operations.md "Behind a reverse proxy or CDN").
async fn assert_uploader_ranges(app: &TestApp, token: &str, uri: &str, body: &[u8]) {
    let len = body.len() as u64;
    for (range, a, b) in [
        ("bytes=0-0".to_owned(), 0, 1),
        (format!("bytes={}-", len / 2), len / 2, len),
        (
            format!("bytes={}-{}", len / 3, len / 3 + 99),
            len / 3,
            len / 3 + 100,
        ),
        ("bytes=-7".to_owned(), len - 7, len),
    ] {
        let req = request(Method::GET, uri, Some(token))
            .header(header::RANGE, &range)
            .body(Body::empty())
            .unwrap();
        let resp = app.send(req).await;
        resp.assert_status(StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            resp.headers[header::CONTENT_RANGE],
            format!("bytes {a}-{}/{len}", b - 1).as_str(),
            "{uri} {range}"
        );
        assert_eq!(resp.content_length(), b - a);
        assert!(resp.body == body[a as usize..b as usize], "{uri} {range}");
        assert_eq!(resp.headers[header::ACCEPT_RANGES], "bytes");
    }
    let req = request(Method::GET, uri, Some(token))
        .header(header::RANGE, format!("bytes={len}-"))
        .body(Body::empty())
        .unwrap();
    let resp = app.send(req).await;
    resp.assert_error(StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable");
    assert_eq!(
        resp.headers[header::CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );
}

// --- 2. a narinfo whose NAR never arrived ------------------------------------------

async fn narinfo_without_its_nar_is_rejected(app: &TestApp) {
    app.create_cache("nixed", false).await;
    app.create_cache("other", false).await;
    let token = app.token(&[("*", PULL_PUSH)]);
    let nar = test_path("lonely", 7);
    let file = NarFile::new(Compression::Xz, &nar);
    let info = nix_narinfo(&nar, &file, None);
    let resp = put_narinfo(app, &token, "nixed", &nar, &info).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    assert!(resp.text().contains("PUT the NAR"), "{}", resp.text());

    // Uploaded to another cache: still unknown here.
    put_nar(app, &token, "other", &file)
        .await
        .assert_status(StatusCode::OK);
    head(app, &token, &format!("/nixed/{}", file.url()))
        .await
        .assert_status(StatusCode::NOT_FOUND);
    put_narinfo(app, &token, "nixed", &nar, &info)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    app.get(
        &format!("/nixed/{}.narinfo", nar.store_hash()),
        Some(&token),
    )
    .await
    .assert_status(StatusCode::NOT_FOUND);
    // A URL that is not nar/<file>.
    let mut odd = info.clone();
    odd.url = "elsewhere/x.nar".into();
    put_narinfo(app, &token, "other", &nar, &odd)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    // Garbage is not a narinfo.
    put(
        app,
        &token,
        &format!("/other/{}.narinfo", nar.store_hash()),
        "text/x-nix-narinfo",
        Bytes::from_static(b"hello\n"),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    // A pull-only token may not push.
    let reader = app.token(&[("*", &[Permission::Pull])]);
    put_nar(app, &reader, "other", &file)
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
    // The right narinfo in the right cache works.
    put_narinfo(app, &token, "other", &nar, &info)
        .await
        .assert_status(StatusCode::NO_CONTENT);
}

// --- 3. a narinfo that does not match its NAR --------------------------------------

async fn narinfo_not_matching_its_nar_is_rejected(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.token(&[("nixed", PULL_PUSH)]);
    let nar = test_path("real", 8);
    let other = test_path("other", 9);
    let file = NarFile::new(Compression::Zstd, &nar);
    put_nar(app, &token, "nixed", &file)
        .await
        .assert_status(StatusCode::OK);
    let good = nix_narinfo(&nar, &file, None);

    let mut wrong_hash = good.clone();
    wrong_hash.nar_hash = other.nar_hash;
    let resp = put_narinfo(app, &token, "nixed", &nar, &wrong_hash).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert!(resp.text().contains("NarHash"), "{}", resp.text());

    let mut wrong_size = good.clone();
    wrong_size.nar_size += 1;
    put_narinfo(app, &token, "nixed", &nar, &wrong_size)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    let mut wrong_file = good.clone();
    wrong_file.file_hash = Some(FileHash::digest(b"not it"));
    put_narinfo(app, &token, "nixed", &nar, &wrong_file)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    let mut wrong_compression = good.clone();
    wrong_compression.compression = Compression::Xz;
    let resp = put_narinfo(app, &token, "nixed", &nar, &wrong_compression).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert!(resp.text().contains("Compression"), "{}", resp.text());
    // docs/operations.md "What uploads must look like": a CA or Sig Nix cannot parse fails every later substitution.
    let mut bad_ca = good.clone();
    bad_ca.ca = Some("definitely not a CA".into());
    let resp = put_narinfo(app, &token, "nixed", &nar, &bad_ca).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    assert!(resp.text().contains("content address"), "{}", resp.text());
    for sig in ["cache.nixos.org-1:!!!not-base64!!!", "k:AAAA", ":AAAA"] {
        let mut bad_sig = good.clone();
        bad_sig.sigs.push(sig.into());
        let resp = put_narinfo(app, &token, "nixed", &nar, &bad_sig).await;
        resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");
        assert!(resp.text().contains("signature"), "{sig}: {}", resp.text());
    }
    // Uploaded under another path's name.
    put_narinfo(app, &token, "nixed", &other, &good)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    app.get(
        &format!("/nixed/{}.narinfo", nar.store_hash()),
        Some(&token),
    )
    .await
    .assert_status(StatusCode::NOT_FOUND);
    // Rejections left the upload pending: the right narinfo still works.
    put_narinfo(app, &token, "nixed", &nar, &good)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    narinfo(app, &token, "nixed", &nar).await;
}

// --- 4. NAR files that are not what they claim -------------------------------------

async fn bad_nar_files_are_rejected(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.token(&[("nixed", PULL_PUSH)]);
    let put_raw = async |name: String, body: Vec<u8>| {
        put(
            app,
            &token,
            &format!("/nixed/nar/{name}"),
            "application/x-nix-nar",
            Bytes::from(body),
        )
        .await
    };
    let named = |body: &[u8], ext: &str| format!("{}.nar{ext}", FileHash::digest(body).to_base32());

    // Unrecognised compression.
    let garbage = b"PK\x03\x04 this is a zip file, not anything Nix uploads".repeat(20);
    let resp = put_raw(named(&garbage, ""), garbage.clone()).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    assert!(
        resp.text().contains("unrecognised compression"),
        "{}",
        resp.text()
    );
    let resp = put_raw(named(&garbage, ".br"), garbage.clone()).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    // Valid xz of something that is not a NAR.
    let not_nar = compress(Compression::Xz, &b"just text\n".repeat(1000));
    let resp = put_raw(named(&not_nar, ".xz"), not_nar).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert!(resp.text().contains("malformed NAR"), "{}", resp.text());

    // A truncated xz NAR.
    let nar = test_path("cut", 10);
    let xz = compress(Compression::Xz, &nar.bytes);
    let cut = xz[..xz.len() - 100].to_vec();
    let resp = put_raw(named(&cut, ".xz"), cut).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert!(resp.text().contains("invalid xz data"), "{}", resp.text());

    // A body that does not hash to its name.
    let resp = put_raw(named(b"something else", ".xz"), xz.clone()).await;
    resp.assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
    assert!(resp.text().contains("its name says"), "{}", resp.text());

    // Not a NAR file name at all.
    put_raw("hello.txt".into(), xz)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "BadRequest");

    assert_eq!(app.count("nix_uploads").await, 0);
    assert!(app.object_keys("uploads/").await.is_empty());
    app.assert_staging_empty().await;
    let left = app.files_on_disk("uploads");
    assert!(left.is_empty(), "temp files left: {left:?}");
}

// --- 5. re-pushes ---------------------------------------------------------------------

async fn pushing_again_costs_almost_nothing(app: &TestApp) {
    app.create_cache("nixed", false).await;
    app.create_cache("second", false).await;
    let token = app.token(&[("*", PULL_PUSH)]);
    let uploader = SigningKey::generate("uploader-1").unwrap();
    let nar = test_path("twice", 11);
    let file = NarFile::new(Compression::Xz, &nar);
    nix_push(app, &token, "nixed", &nar, &file, &uploader).await;

    // Another path with the same NAR: Nix's HEAD says the file is there,
    // so it sends only the narinfo.
    let twin = nar.with_path("twin", 12);
    head(app, &token, &format!("/nixed/{}", file.url()))
        .await
        .assert_status(StatusCode::OK);
    put_narinfo(
        app,
        &token,
        "nixed",
        &twin,
        &nix_narinfo(&twin, &file, None),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
    narinfo(app, &token, "nixed", &twin).await;

    // The same file PUT again, here and in another cache: hashed, not
    // decompressed or staged again.
    let staged_before = app.count("nars").await;
    for cache in ["nixed", "second"] {
        let resp = put_nar(app, &token, cache, &file).await;
        resp.assert_status(StatusCode::OK);
        let body: Value = resp.json();
        assert_eq!(body["deduplicated"], true, "{body}");
    }
    assert_eq!(app.count("nars").await, staged_before);
    assert!(
        app.files_on_disk("staging").len() <= 1,
        "no second staged copy"
    );
    put_narinfo(app, &token, "second", &nar, &nix_narinfo(&nar, &file, None))
        .await
        .assert_status(StatusCode::NO_CONTENT);

    // The same NAR in another compression: decompressed once to learn its
    // hash, then the staged copy is dropped (the NAR is stored).
    let zst = NarFile::new(Compression::Zstd, &nar);
    let resp = put_nar(app, &token, "second", &zst).await;
    resp.assert_status(StatusCode::OK);
    assert_eq!(resp.json::<Value>()["deduplicated"], true);
    put_narinfo(app, &token, "second", &nar, &nix_narinfo(&nar, &zst, None))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(app.count("nars").await, staged_before);

    app.drain_jobs().await;
    app.assert_staging_empty().await;
    for (cache, f) in [("nixed", &file), ("second", &file), ("second", &zst)] {
        let got = fetch(app, &token, cache, &f.url()).await;
        assert!(got == f.body, "{cache}: {}", f.name);
    }
    // A narinfo naming Larder's own URL for a NAR of this cache (what Nix
    // sends after its HEAD found `nar/<narhash>.nar`): linked, nothing sent.
    let own = test_path("own", 13);
    app.upload(&token, "second", &own)
        .await
        .assert_status(StatusCode::OK);
    let copy = own.with_path("own-copy", 14);
    let mut info = nix_narinfo(&copy, &NarFile::new(Compression::None, &copy), None);
    assert_eq!(info.url, format!("nar/{}.nar", own.url_hash()));
    head(app, &token, &format!("/second/{}", info.url))
        .await
        .assert_status(StatusCode::OK);
    put_narinfo(app, &token, "second", &copy, &info)
        .await
        .assert_status(StatusCode::NO_CONTENT);
    narinfo(app, &token, "second", &copy).await;
    info.compression = Compression::Zstd;
    put_narinfo(app, &token, "second", &copy, &info)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidNar");
}

// --- 6. expiry and clean-up --------------------------------------------------------------

async fn uploader_urls_expire_and_are_cleaned_up(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.token(&[(
        "nixed",
        &[Permission::Pull, Permission::Push, Permission::Delete],
    )]);
    let uploader = SigningKey::generate("uploader-1").unwrap();
    let kept = test_path("kept", 20);
    let deleted = test_path("deleted", 21);
    let abandoned = test_path("abandoned", 22);
    let kept_file = NarFile::new(Compression::Bzip2, &kept);
    let deleted_file = NarFile::new(Compression::Gzip, &deleted);
    let abandoned_file = NarFile::new(Compression::Lz4, &abandoned);
    nix_push(app, &token, "nixed", &kept, &kept_file, &uploader).await;
    nix_push(app, &token, "nixed", &deleted, &deleted_file, &uploader).await;
    put_nar(app, &token, "nixed", &abandoned_file)
        .await
        .assert_status(StatusCode::OK);
    app.drain_jobs().await;

    // Deleting a path stops its uploader URL at once.
    let req = request(
        Method::DELETE,
        &format!("/nixed/{}.narinfo", deleted.store_hash()),
        Some(&token),
    )
    .body(Body::empty())
    .unwrap();
    app.send(req).await.assert_status(StatusCode::NO_CONTENT);
    app.get(&format!("/nixed/{}", deleted_file.url()), Some(&token))
        .await
        .assert_status(StatusCode::NOT_FOUND);

    // A sweep now removes nothing: everything is in use or too young.
    let now = unix_now();
    let report = nix_uploads::sweep(&app.services, now).await.unwrap();
    assert_eq!(report, Default::default());
    fetch(app, &token, "nixed", &kept_file.url()).await;

    // A day on, the abandoned upload and the deleted path's URL go, with
    // their files; thirty days on, the kept path's URL still answers.
    let report = nix_uploads::sweep(&app.services, now + 30 * 86400)
        .await
        .unwrap();
    assert_eq!(report.pending_dropped, 1, "{report:?}");
    assert_eq!(report.urls_dropped, 1, "{report:?}");
    assert_eq!(report.files_deleted, 2, "{report:?}");
    let got = fetch(app, &token, "nixed", &kept_file.url()).await;
    assert!(got == kept_file.body);
    assert_eq!(app.count("nix_uploads").await, 0);
    app.assert_staging_empty().await;
    assert_eq!(app.object_keys("uploads/").await.len(), 1);

    // Past its retention it goes, and its file with it.
    let later = now + URL_RETENTION_SECS + 60;
    let report = nix_uploads::sweep(&app.services, later).await.unwrap();
    assert_eq!(report.urls_dropped, 1, "{report:?}");
    assert_eq!(report.files_deleted, 1, "{report:?}");
    assert!(app.object_keys("uploads/").await.is_empty());
    assert_eq!(app.count("nix_upload_urls").await, 0);
    // The path itself stays, at Larder's own URL.
    let (_, info) = narinfo(app, &token, "nixed", &kept).await;
    let body = fetch(app, &token, "nixed", &info.url).await;
    assert!(unzstd(&body) == kept.bytes);
}

// --- 7. nix-cache-info --------------------------------------------------------------------

async fn nix_cache_info_put_never_creates_a_cache(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.root_token();
    let body = Bytes::from_static(b"StoreDir: /nix/store\n");
    put(
        app,
        &token,
        "/nixed/nix-cache-info",
        "text/x-nix-cache-info",
        body.clone(),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
    put(
        app,
        &token,
        "/missing/nix-cache-info",
        "text/x-nix-cache-info",
        body.clone(),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NoSuchCache");
    app.get("/missing/nix-cache-info", Some(&token))
        .await
        .assert_status(StatusCode::NOT_FOUND);
    let req = request(Method::PUT, "/nixed/nix-cache-info", None)
        .body(Body::from(body))
        .unwrap();
    app.send(req).await.assert_status(StatusCode::UNAUTHORIZED);
}

// --- 8. `.ls` uploaded by Nix ---------------------------------------------------------------

fn listing_of(nar: &TestNar) -> Vec<u8> {
    let mut v = NarValidator::with_listing();
    v.update(&nar.bytes).unwrap();
    v.finish().unwrap().listing.unwrap().to_json()
}

async fn listing_put_then_get(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.token(&[("nixed", PULL_PUSH)]);
    let nar = test_path("listed", 30);
    let file = NarFile::new(Compression::Xz, &nar);
    // As uploaded, byte for byte (here pretty-printed, unlike Larder's).
    let value: Value = serde_json::from_slice(&listing_of(&nar)).unwrap();
    let uploaded = Bytes::from(serde_json::to_vec_pretty(&value).unwrap());
    let ls = format!("/nixed/{}.ls", nar.store_hash());
    // Nix 2.8 order: the listing, the NAR, the narinfo.
    put(app, &token, &ls, "application/json", uploaded.clone())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    app.get(&ls, Some(&token))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
    put_nar(app, &token, "nixed", &file)
        .await
        .assert_status(StatusCode::OK);
    put_narinfo(app, &token, "nixed", &nar, &nix_narinfo(&nar, &file, None))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    let resp = app.get(&ls, Some(&token)).await;
    resp.assert_status(StatusCode::OK);
    assert_eq!(resp.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(resp.body, uploaded);
    app.drain_jobs().await;
    assert_eq!(app.get(&ls, Some(&token)).await.body, uploaded);

    // A listing PUT for a path already present is bound to it at once.
    let again = Bytes::from(listing_of(&nar));
    put(app, &token, &ls, "application/json", again.clone())
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(app.get(&ls, Some(&token)).await.body, again);
    // Not JSON: refused.
    put(
        app,
        &token,
        &ls,
        "application/json",
        Bytes::from_static(b"nope"),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "BadRequest");
    // Reading needs `r`.
    let pusher = app.token(&[("nixed", &[Permission::Push])]);
    app.get(&ls, Some(&pusher))
        .await
        .assert_error(StatusCode::FORBIDDEN, "PermissionDenied");
}

// --- 9. `.ls` generated for paths pushed without one -----------------------------------------

async fn listing_generated_for_attic_uploads(app: &TestApp) {
    app.create_cache("attic", false).await;
    let token = app.token(&[("attic", PULL_PUSH)]);
    let staged = test_path("staged", 40);
    let ingested = test_path("ingested", 41);
    app.upload(&token, "attic", &ingested)
        .await
        .assert_status(StatusCode::OK);
    app.drain_jobs().await;
    // The ingest job records the listing of a path pushed without one.
    assert_eq!(app.count("nar_listings").await, 1);
    app.upload(&token, "attic", &staged)
        .await
        .assert_status(StatusCode::OK);

    for nar in [&staged, &ingested] {
        let ls = format!("/attic/{}.ls", nar.store_hash());
        let resp = app.get(&ls, Some(&token)).await;
        resp.assert_status(StatusCode::OK);
        assert_eq!(resp.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.body, listing_of(nar), "{}", resp.text());
        let v: Value = resp.json();
        assert_eq!(v["root"]["entries"]["link"]["target"], "bin/hello");
        assert_eq!(
            v["root"]["entries"]["bin"]["entries"]["hello"]["executable"],
            true
        );
        // Served again from the recorded copy.
        assert_eq!(app.get(&ls, Some(&token)).await.body, listing_of(nar));
    }
    assert_eq!(app.count("nar_listings").await, 2);
    app.drain_jobs().await;
    assert_eq!(
        app.get(&format!("/attic/{}.ls", staged.store_hash()), Some(&token))
            .await
            .body,
        listing_of(&staged)
    );
    app.get(
        &format!("/attic/{}.ls", test_path("absent", 42).store_hash()),
        Some(&token),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NoSuchObject");
}

// --- first push wins (docs/protocol.md) -----------------------------------------

/// Another NAR under a published path: the narinfo PUT is a 409, the served
/// narinfo stays byte-identical, and the refused NAR's staged copy goes.
async fn a_published_path_keeps_its_nar(app: &TestApp) {
    app.create_cache("nixed", false).await;
    let token = app.token(&[("nixed", PULL_PUSH)]);
    let uploader = SigningKey::generate("uploader-1").unwrap();
    let nar = test_path("published", 21);
    let file = NarFile::new(Compression::Zstd, &nar);
    nix_push(app, &token, "nixed", &nar, &file, &uploader).await;
    app.drain_jobs().await;
    app.assert_staging_empty().await;
    let (before, _) = narinfo(app, &token, "nixed", &nar).await;
    let rows = (app.count("objects").await, app.count("nars").await);

    let impostor = TestNar {
        base_name: nar.base_name.clone(),
        ..test_path("published", 22)
    };
    let evil = NarFile::new(Compression::Zstd, &impostor);
    put_nar(app, &token, "nixed", &evil)
        .await
        .assert_status(StatusCode::OK);
    put_narinfo(
        app,
        &token,
        "nixed",
        &impostor,
        &nix_narinfo(&impostor, &evil, None),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "PathConflict");
    let (after, _) = narinfo(app, &token, "nixed", &nar).await;
    assert_eq!(before, after, "the served narinfo is byte-identical");
    assert_eq!(
        (app.count("objects").await, app.count("nars").await),
        rows,
        "no rows added"
    );
    assert_eq!(app.count("nix_uploads").await, 0, "no pending upload left");
    app.assert_staging_empty().await;

    // The same NAR again: a 204 that changes nothing.
    put_narinfo(
        app,
        &token,
        "nixed",
        &nar,
        &nix_narinfo(&nar, &file, Some(&uploader)),
    )
    .await
    .assert_status(StatusCode::NO_CONTENT);
    let (again, _) = narinfo(app, &token, "nixed", &nar).await;
    assert_eq!(before, again);
}

// --- staging intents ------------------------------------------------------------------------

/// The sweeper claimed a pending upload's staging intent (older than
/// `[staging] max-age`) before its narinfo came: the narinfo's commit cannot
/// take the copy over, so it is refused and the file forgotten, the sweeper
/// deletes copy and intent, and pushing again works.
async fn a_narinfo_late_for_its_staged_copy_is_refused(app: &TestApp) {
    use larder_shared::db::staging_intents;
    use larder_worker::sweeper;

    app.create_cache("late", false).await;
    let token = app.token(&[("late", PULL_PUSH)]);
    let uploader = SigningKey::generate("uploader-1").unwrap();
    let nar = test_path("late", 40);
    let file = NarFile::new(Compression::Xz, &nar);
    put_nar(app, &token, "late", &file)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(
        app.count("staging_intents").await,
        1,
        "pending: still an intent"
    );

    let max_age = app.services.config.staging.max_age.as_secs() as i64;
    let later = unix_now() + max_age + 60;
    {
        let mut conn = app.state.db.conn().await.unwrap();
        let claimed = staging_intents::claim_abandoned(conn.raw(), later - max_age, later, 10)
            .await
            .unwrap();
        assert_eq!(claimed, 1);
    }
    let resp = put_narinfo(
        app,
        &token,
        "late",
        &nar,
        &nix_narinfo(&nar, &file, Some(&uploader)),
    )
    .await;
    resp.assert_status(StatusCode::BAD_REQUEST);
    assert!(resp.text().contains("no longer stored"), "{}", resp.text());
    head(app, &token, &format!("/late/{}", file.url()))
        .await
        .assert_status(StatusCode::NOT_FOUND);
    let report = sweeper::sweep(&app.services, later).await.unwrap();
    assert_eq!(report.staging_deleted, 1);
    app.assert_staging_empty().await;

    nix_push(app, &token, "late", &nar, &file, &uploader).await;
    assert_eq!(app.drain_jobs().await, 1);
    app.assert_staging_empty().await;
    let (_, info) = narinfo(app, &token, "late", &nar).await;
    let body = fetch(app, &token, "late", &info.url).await;
    assert!(unzstd(&body) == nar.bytes);
}

// --- the staging quota -------------------------------------------------------------

/// Stock `nix copy` is never refused by the staging quota (docs/protocol.md
/// "Staging quota"): Nix retries a 503, 429 or 408 on a PUT, and 2.8 then
/// hangs, while any other refusal fails the push. Its NARs count towards
/// the quota, so Attic-API uploads wait for them.
async fn the_staging_quota_lets_nix_copy_through(app: &TestApp) {
    app.create_cache("nq", false).await;
    let token = app.token(&[("nq", PULL_PUSH)]);
    let uploader = SigningKey::generate("uploader-1").unwrap();
    for i in 0..2 {
        let nar = test_path(&format!("attic-{i}"), 700 + i);
        common::read::assert_kind(&app.upload(&token, "nq", &nar).await, "Uploaded");
    }
    let refused = app.upload(&token, "nq", &test_path("attic-2", 702)).await;
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "StagingFull");

    for (i, c) in [Compression::Zstd, Compression::Xz].into_iter().enumerate() {
        let nar = test_path(&format!("copied-{i}"), 710 + i as u64);
        nix_push(app, &token, "nq", &nar, &NarFile::new(c, &nar), &uploader).await;
    }
    assert_eq!(
        app.staged_nar_ids().await.len(),
        4,
        "nix copy staged its NARs"
    );
    let text = app.get("/metrics", None).await.text();
    assert!(text.contains("\nlarder_staged_nars 4\n"), "{text}");

    // Nix ≥ 2.35 retries a 503 with Retry-After by itself: it alone is
    // asked to wait, before a byte is staged.
    let nar = test_path("copied-new", 720);
    let file = NarFile::new(Compression::Zstd, &nar);
    let req = request(Method::PUT, &format!("/nq/{}", file.url()), Some(&token))
        .header(header::USER_AGENT, "curl/8.16.0 Nix/2.35.0")
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .body(Body::from(file.body.clone()))
        .unwrap();
    let refused = app.send(req).await;
    refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "StagingFull");
    assert_eq!(
        refused
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    assert_eq!(app.staged_nar_ids().await.len(), 4, "nothing staged");
    assert_eq!(app.count("staging_intents").await, 0);
    assert_eq!(app.drain_jobs().await, 4);
}
