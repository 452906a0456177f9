//! Downloads over real TCP (docs/operations.md "Behind a reverse proxy or CDN"): byte ranges on every NAR
//! representation checked byte for byte against the whole body, ETags with
//! `If-None-Match` and `If-Range`, `HEAD` = `GET` headers, and the
//! `Cache-Control` matrix for public and private caches.

use axum::http::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde_json::json;

use larder_shared::db::chunks;
use larder_shared::token::Permission;

use crate::common::TestApp;
use crate::common::nar::TestNar;
use crate::common::read::{narinfo_line, unzstd};

const IMMUTABLE_PUBLIC: &str = "public, max-age=31536000, immutable";
const IMMUTABLE_PRIVATE: &str = "private, max-age=31536000, immutable";

/// Extra request headers.
type Extra = [(header::HeaderName, String)];
/// (client, path, extra headers, status, Cache-Control, Vary: authorization)
type Case<'a> = (&'a Client, String, &'a Extra, u16, &'a str, bool);

pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

pub(crate) struct Got {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Got {
    pub(crate) fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub(crate) fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::new(),
            token,
        }
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        extra: &[(header::HeaderName, String)],
    ) -> Got {
        let is_head = method == reqwest::Method::HEAD;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in extra {
            req = req.header(k.clone(), v);
        }
        let resp = req.send().await.expect("request sent");
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("whole body").to_vec();
        if let Some(len) = headers.get(header::CONTENT_LENGTH)
            && status != StatusCode::NOT_MODIFIED
            && !is_head
        {
            assert_eq!(
                len.to_str().unwrap().parse::<usize>().unwrap(),
                body.len(),
                "Content-Length of {path}"
            );
        }
        Got {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str, extra: &[(header::HeaderName, String)]) -> Got {
        self.send(reqwest::Method::GET, path, extra).await
    }

    pub(crate) async fn range(&self, path: &str, range: &str) -> Got {
        self.get(path, &[(header::RANGE, range.to_owned())]).await
    }
}

/// Chunk boundaries (offsets where a chunk starts) of a ready NAR, in the
/// plain and the compressed representation.
pub(crate) async fn boundaries(app: &TestApp, nar: &TestNar) -> (Vec<u64>, Vec<u64>) {
    let rec = app.nar_record(nar).await;
    let mut conn = app.state.db.conn().await.unwrap();
    let (mut plain, mut zst) = (vec![], vec![]);
    let (mut p, mut z) = (0u64, 0u64);
    for ids in rec.chunk_ids.chunks(chunks::BATCH) {
        let found = chunks::get_many(conn.raw(), ids).await.unwrap();
        for id in ids {
            plain.push(p);
            zst.push(z);
            p += found[id].chunk_size as u64;
            z += found[id].file_size as u64;
        }
    }
    (plain, zst)
}

/// The table of ranges, each checked against the same slice of `full`;
/// `cuts` are chunk starts, so ranges straddle chunk boundaries.
pub(crate) async fn check_ranges(c: &Client, path: &str, full: &[u8], cuts: &[u64]) {
    let len = full.len() as u64;
    let whole = c.get(path, &[]).await;
    assert_eq!(whole.status, StatusCode::OK, "{path}");
    assert_eq!(whole.header(header::ACCEPT_RANGES), Some("bytes"), "{path}");
    assert!(whole.body == full, "{path}: whole body differs");
    let etag = whole.header(header::ETAG).expect("ETag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag {etag}"
    );

    let mut table: Vec<(String, u64, u64)> = vec![
        ("bytes=0-0".into(), 0, 1),
        ("bytes=0-99".into(), 0, 100),
        (
            format!("bytes={}-{}", len / 2, len / 2 + 999),
            len / 2,
            len / 2 + 1000,
        ),
        (format!("bytes={}-", len / 3), len / 3, len),
        (format!("bytes={}-", len - 100), len - 100, len),
        ("bytes=-500".into(), len - 500, len),
        (format!("bytes={}-{}", len - 1, len - 1), len - 1, len),
        (format!("bytes={}-", len - 1), len - 1, len),
        (format!("bytes={}-{}", len - 10, len + 1000), len - 10, len),
        (format!("bytes=-{}", len + 5), 0, len),
    ];
    for &cut in cuts.iter().skip(1).take(4) {
        // The last byte of one chunk through the first of the next, a range
        // starting exactly on a boundary, and one spanning several chunks.
        table.push((format!("bytes={}-{}", cut - 1, cut), cut - 1, cut + 1));
        table.push((format!("bytes={cut}-"), cut, len));
        let end = (cut + 300_000).min(len);
        table.push((format!("bytes={}-{}", cut - 7, end - 1), cut - 7, end));
    }
    for (range, a, b) in table {
        let got = c.range(path, &range).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{path} {range}");
        assert_eq!(
            got.header(header::CONTENT_RANGE),
            Some(format!("bytes {a}-{}/{len}", b - 1).as_str()),
            "{path} {range}"
        );
        assert!(
            got.body == full[a as usize..b as usize],
            "{path} {range}: bytes differ from the slice {a}..{b}"
        );
        assert_eq!(got.header(header::ETAG), Some(etag.as_str()));
    }
    for range in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 9),
        "bytes=-0".into(),
    ] {
        let got = c.range(path, &range).await;
        assert_eq!(
            got.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{path} {range}"
        );
        assert_eq!(
            got.header(header::CONTENT_RANGE),
            Some(format!("bytes */{len}").as_str())
        );
        assert_eq!(
            got.header(header::CACHE_CONTROL)
                .map(|v| v.contains("no-store")),
            Some(true)
        );
    }
    // Several ranges, or a malformed one: the whole body.
    for range in ["bytes=0-1,5-6", "bytes=5-1", "lines=1-2"] {
        let got = c.range(path, range).await;
        assert_eq!(got.status, StatusCode::OK, "{path} {range}");
        assert!(got.body == full, "{path} {range}");
    }
    // Validators.
    let got = c.get(path, &[(header::IF_NONE_MATCH, etag.clone())]).await;
    assert_eq!(got.status, StatusCode::NOT_MODIFIED, "{path}");
    assert!(got.body.is_empty());
    assert_eq!(got.header(header::ETAG), Some(etag.as_str()));
    let got = c
        .get(path, &[(header::IF_NONE_MATCH, "\"other\"".into())])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let resume = [
        (header::RANGE, "bytes=10-".to_owned()),
        (header::IF_RANGE, etag.clone()),
    ];
    let got = c.get(path, &resume).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert!(got.body == full[10..]);
    let stale = [
        (header::RANGE, "bytes=10-".to_owned()),
        (header::IF_RANGE, "\"stale\"".into()),
    ];
    let got = c.get(path, &stale).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "If-Range mismatch: the whole body"
    );
    assert!(got.body == full);
    assert_head_matches_get(c, path, &[]).await;
    assert_head_matches_get(c, path, &[(header::RANGE, "bytes=5-9".into())]).await;
}

/// `HEAD` answers the status and headers of the `GET`, without a body.
async fn assert_head_matches_get(c: &Client, path: &str, extra: &[(header::HeaderName, String)]) {
    let get = c.get(path, extra).await;
    let head = c.send(reqwest::Method::HEAD, path, extra).await;
    assert_eq!(head.status, get.status, "HEAD {path}");
    assert!(head.body.is_empty());
    let mut names: Vec<_> = get
        .headers
        .keys()
        .chain(head.headers.keys())
        .cloned()
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    for name in names
        .into_iter()
        .filter(|n| n != header::DATE && n.as_str() != "x-request-id")
        // A 304 has no content; hyper writes `Content-Length: 0` on HEAD only.
        .filter(|n| get.status != StatusCode::NOT_MODIFIED || n != header::CONTENT_LENGTH)
    {
        let g: Vec<_> = get.headers.get_all(&name).iter().collect();
        let h: Vec<_> = head.headers.get_all(&name).iter().collect();
        assert_eq!(h, g, "HEAD {path}: header {name}");
    }
}

/// Ranges on a staged NAR, then on the same NAR ingested (chunked and as a
/// single whole chunk), as `.nar.zst` and `.nar`, before and after a key
/// rotation; one URL always names the same bytes (same ETag).
pub async fn ranges_on_every_representation(app: &TestApp) {
    app.create_cache("ranges", true).await;
    let root = app.root_token();
    let big = TestNar::files("big", 1801, &[700_000, 1_300_000, 500_000]);
    let small = TestNar::files("small", 1802, &[20_000]);
    for nar in [&big, &small] {
        app.upload(&root, "ranges", nar)
            .await
            .assert_status(StatusCode::OK);
    }
    let base = app.serve().await;
    let c = Client::new(&base, Some(root.clone()));
    let staged_url = format!("/ranges/nar/{}.nar", big.url_hash());
    check_ranges(&c, &staged_url, &big.bytes, &[]).await;
    let staged_etag = c
        .get(&staged_url, &[])
        .await
        .header(header::ETAG)
        .unwrap()
        .to_owned();

    app.drain_jobs().await;
    let (plain_cuts, zst_cuts) = boundaries(app, &big).await;
    assert!(plain_cuts.len() > 5, "the big NAR is chunked");
    check_ranges(&c, &staged_url, &big.bytes, &plain_cuts).await;
    let ingested_etag = c
        .get(&staged_url, &[])
        .await
        .header(header::ETAG)
        .unwrap()
        .to_owned();
    assert_eq!(staged_etag, ingested_etag, "one URL, one byte sequence");
    let zst_url = format!("/ranges/nar/{}.nar.zst", big.url_hash());
    let zst = c.get(&zst_url, &[]).await;
    assert_eq!(zst.header(header::CONTENT_TYPE), Some("application/zstd"));
    assert!(unzstd(&zst.body) == big.bytes);
    check_ranges(&c, &zst_url, &zst.body, &zst_cuts).await;

    let (small_cuts, _) = boundaries(app, &small).await;
    assert_eq!(small_cuts.len(), 1, "the small NAR is one whole chunk");
    let small_url = format!("/ranges/nar/{}.nar", small.url_hash());
    check_ranges(&c, &small_url, &small.bytes, &[]).await;
    let small_zst_url = format!("/ranges/nar/{}.nar.zst", small.url_hash());
    let small_zst = c.get(&small_zst_url, &[]).await.body;
    check_ranges(&c, &small_zst_url, &small_zst, &[]).await;

    // Key rotation changes the narinfo, not the NAR URLs or their bytes.
    let patch = reqwest::Client::new()
        .patch(format!("{base}/_api/v1/cache-config/ranges"))
        .bearer_auth(&root)
        .json(&json!({"keypair": "Generate"}))
        .send()
        .await
        .unwrap();
    assert!(patch.status().is_success(), "{}", patch.status());
    let info = c
        .get(&format!("/ranges/{}.narinfo", big.store_hash()), &[])
        .await;
    let info = String::from_utf8(info.body).unwrap();
    assert_eq!(
        narinfo_line(&info, "URL"),
        Some(format!("nar/{}.nar.zst", big.url_hash()).as_str())
    );
    check_ranges(&c, &zst_url, &zst.body, &zst_cuts[..zst_cuts.len().min(3)]).await;
    assert_head_matches_get(&c, &format!("/ranges/{}.narinfo", big.store_hash()), &[]).await;
    assert_head_matches_get(&c, &format!("/ranges/{}.ls", big.store_hash()), &[]).await;
    assert_head_matches_get(&c, "/ranges/nix-cache-info", &[]).await;
    assert_head_matches_get(&c, &format!("/ranges/{}.narinfo", "0".repeat(32)), &[]).await;
}

/// Cache-Control and Vary for public and private caches across statuses.
pub async fn cache_control_matrix(app: &TestApp) {
    app.create_cache("open", true).await;
    app.create_cache("closed", false).await;
    let root = app.root_token();
    let nar = TestNar::files("cc", 1803, &[100_000]);
    for cache in ["open", "closed"] {
        app.upload(&root, cache, &nar)
            .await
            .assert_status(StatusCode::OK);
    }
    app.drain_jobs().await;
    let base = app.serve().await;
    let member = Client::new(&base, Some(app.token(&[("closed", &[Permission::Pull])])));
    let pusher = Client::new(&base, Some(app.token(&[("closed", &[Permission::Push])])));
    let stranger = Client::new(&base, None);
    let h = nar.store_hash();
    let nar_path = |cache: &str| format!("/{cache}/nar/{}.nar.zst", nar.url_hash());
    let missing = format!("{}.narinfo", "1".repeat(32));
    let etag = member
        .get(&nar_path("closed"), &[])
        .await
        .header(header::ETAG)
        .unwrap()
        .to_owned();
    let inm = [(header::IF_NONE_MATCH, etag)];
    let range = [(header::RANGE, "bytes=3-9".to_owned())];

    // (client, path, extra headers, status, Cache-Control, Vary: authorization)
    let cases: Vec<Case> = vec![
        (
            &stranger,
            nar_path("open"),
            &[],
            200,
            IMMUTABLE_PUBLIC,
            false,
        ),
        (
            &stranger,
            nar_path("open"),
            &range,
            206,
            IMMUTABLE_PUBLIC,
            false,
        ),
        (
            &stranger,
            nar_path("open"),
            &inm,
            304,
            IMMUTABLE_PUBLIC,
            false,
        ),
        (
            &stranger,
            format!("/open/{h}.narinfo"),
            &[],
            200,
            "public, max-age=60",
            false,
        ),
        (
            &stranger,
            format!("/open/{h}.ls"),
            &[],
            200,
            "public, max-age=60",
            false,
        ),
        (
            &stranger,
            "/open/nix-cache-info".into(),
            &[],
            200,
            "public, max-age=60",
            false,
        ),
        (
            &stranger,
            format!("/open/{missing}"),
            &[],
            404,
            "no-store",
            false,
        ),
        (
            &stranger,
            "/open/nar/nothing.nar.xz".into(),
            &[],
            404,
            "no-store",
            false,
        ),
        (
            &member,
            nar_path("closed"),
            &[],
            200,
            IMMUTABLE_PRIVATE,
            true,
        ),
        (
            &member,
            nar_path("closed"),
            &range,
            206,
            IMMUTABLE_PRIVATE,
            true,
        ),
        (
            &member,
            nar_path("closed"),
            &inm,
            304,
            IMMUTABLE_PRIVATE,
            true,
        ),
        (
            &member,
            format!("/closed/{h}.narinfo"),
            &[],
            200,
            "private, max-age=60",
            true,
        ),
        (
            &member,
            format!("/closed/{h}.ls"),
            &[],
            200,
            "private, max-age=60",
            true,
        ),
        (
            &member,
            "/closed/nix-cache-info".into(),
            &[],
            200,
            "private, max-age=60",
            true,
        ),
        (
            &member,
            format!("/closed/{missing}"),
            &[],
            404,
            "private, no-store",
            true,
        ),
        (&pusher, nar_path("closed"), &[], 403, "no-store", false),
        (&stranger, nar_path("closed"), &[], 401, "no-store", false),
        (
            &stranger,
            format!("/closed/{h}.narinfo"),
            &[],
            401,
            "no-store",
            false,
        ),
        (
            &stranger,
            format!("/no-such-cache/{h}.narinfo"),
            &[],
            401,
            "no-store",
            false,
        ),
        (
            &member,
            "/_api/v1/caches".into(),
            &[],
            200,
            "no-store",
            false,
        ),
        (&stranger, "/_health".into(), &[], 200, "no-store", false),
    ];
    for (client, path, extra, status, cc, vary) in cases {
        let got = client.get(&path, extra).await;
        assert_eq!(got.status.as_u16(), status, "{path}");
        assert_eq!(
            got.header(header::CACHE_CONTROL),
            Some(cc),
            "{path} {status}"
        );
        let varies = got.headers.get_all(header::VARY).iter().any(|v| {
            v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("authorization")
        });
        assert_eq!(varies, vary, "{path} {status}: Vary");
        if status != 304 && status != 200 && status != 206 {
            continue;
        }
        assert_head_matches_get(client, &path, extra).await;
    }
    // A stranger's 401 is the same whether the private cache exists or not.
    let a = stranger.get(&format!("/closed/{h}.narinfo"), &[]).await;
    let b = stranger
        .get(&format!("/no-such-cache/{h}.narinfo"), &[])
        .await;
    for name in [
        header::CACHE_CONTROL,
        header::VARY,
        header::WWW_AUTHENTICATE,
    ] {
        assert_eq!(a.header(name.clone()), b.header(name.clone()), "{name}");
    }
    assert_eq!(a.body, b.body);
    // Uploads are never stored by a cache.
    let put = reqwest::Client::new()
        .put(format!("{base}/closed/nix-cache-info"))
        .bearer_auth(&root)
        .body("StoreDir: /nix/store\n")
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.headers().get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
}
