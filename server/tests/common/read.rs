//! Reading paths back the way Nix does: narinfo (parsed with
//! `larder_core::nix::narinfo`, signature checked against the cache's
//! public key), then the NAR at its `URL`.

use std::io::Read;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Value, json};

use larder_core::nix::narinfo::NarInfo;
use larder_core::nix::signing::{PublicKey, Signature, fingerprint};
use larder_core::nix::store_path::{StoreDir, StorePath};

use super::nar::TestNar;
use super::{TestApp, TestResponse};

/// The value of `Key: ` in a narinfo, if the line is there.
pub fn narinfo_line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// Fetches and parses a path's narinfo through `cache`, checking the parts
/// that do not depend on the NAR's state against what was pushed.
pub async fn narinfo(app: &TestApp, token: &str, cache: &str, nar: &TestNar) -> (String, NarInfo) {
    let resp = app
        .get(
            &format!("/{cache}/{}.narinfo", nar.store_hash()),
            Some(token),
        )
        .await;
    resp.assert_status(StatusCode::OK);
    let text = resp.text();
    assert!(
        text.ends_with('\n'),
        "narinfo must end in a newline: {text:?}"
    );
    let (info, store_dir) =
        NarInfo::parse(&text).unwrap_or_else(|e| panic!("narinfo does not parse ({e}):\n{text}"));
    assert_eq!(store_dir, StoreDir::default());
    assert_eq!(info.store_path.base_name(), nar.base_name);
    assert_eq!(info.nar_hash, nar.nar_hash);
    assert_eq!(info.nar_size, nar.nar_size());
    let refs: Vec<String> = info.references.iter().map(StorePath::base_name).collect();
    assert_eq!(refs, nar.references);
    assert_eq!(info.deriver.as_ref().map(StorePath::base_name), nar.deriver);
    (text, info)
}

/// Checks that the narinfo carries exactly one signature by the cache's
/// key, valid over the fingerprint of what was pushed (computed from the
/// test's own data, not from the narinfo's fields).
pub fn assert_signed(info: &NarInfo, key: &PublicKey, nar: &TestNar) {
    let refs: Vec<StorePath> = nar
        .references
        .iter()
        .map(|r| StorePath::from_base_name(r).expect("reference"))
        .collect();
    let path = StorePath::from_base_name(&nar.base_name).expect("store path");
    let fp = fingerprint(
        &StoreDir::default(),
        &path,
        &nar.nar_hash,
        nar.nar_size(),
        &refs,
    );
    assert_eq!(info.fingerprint(&StoreDir::default()), fp);
    let ours: Vec<Signature> = info
        .sigs
        .iter()
        .map(|s| s.parse::<Signature>().expect("signature parses"))
        .filter(|s| s.key_name() == key.name())
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "exactly one signature by {}: {:?}",
        key.name(),
        info.sigs
    );
    assert!(key.verify(&fp, &ours[0]), "signature does not verify");
}

/// GETs a NAR URL (as the narinfo names it, relative to the cache),
/// checking status 200 and `Content-Length` = body length.
pub async fn fetch(app: &TestApp, token: &str, cache: &str, url: &str) -> Bytes {
    let resp = app.get(&format!("/{cache}/{url}"), Some(token)).await;
    resp.assert_status(StatusCode::OK);
    assert_eq!(
        resp.content_length(),
        resp.body.len() as u64,
        "Content-Length of {url}"
    );
    resp.body
}

/// Decompresses `.nar.zst` (concatenated frames) with the streaming decoder.
pub fn unzstd(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data)
        .expect("zstd decoder")
        .read_to_end(&mut out)
        .expect("valid zstd stream");
    out
}

/// Asserts a ready NAR reads back byte-identical through `cache`, as
/// `.nar.zst` and as `.nar`.
pub async fn assert_ready_readable(app: &TestApp, token: &str, cache: &str, nar: &TestNar) {
    let h = nar.url_hash();
    let zst = fetch(app, token, cache, &format!("nar/{h}.nar.zst")).await;
    assert!(
        unzstd(&zst) == nar.bytes,
        "{cache}: .nar.zst does not decompress to the NAR"
    );
    let plain = fetch(app, token, cache, &format!("nar/{h}.nar")).await;
    assert!(plain == nar.bytes, "{cache}: .nar differs from the NAR");
}

/// Asserts an upload answered 200 with `kind` (`Uploaded`/`Deduplicated`).
#[track_caller]
pub fn assert_kind(resp: &TestResponse, kind: &str) -> Value {
    resp.assert_status(StatusCode::OK);
    let body: Value = resp.json();
    assert_eq!(body["kind"], json!(kind), "{body}");
    body
}
