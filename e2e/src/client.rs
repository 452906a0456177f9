//! The HTTP side: Attic's cache-config and upload-path API (docs/protocol.md wire
//! format), and narinfo reads as a substituter would do them.

use std::process::Stdio;

use anyhow::Context;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::ReaderStream;

use crate::nix::{Nix, PathInfo, base_name};

/// An HTTP client with a bearer token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Attic's `UploadPathResult`.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadResult {
    /// `Uploaded` or `Deduplicated`.
    pub kind: String,
    /// Bytes stored, when known.
    #[serde(default)]
    pub file_size: Option<u64>,
    /// Share already stored.
    #[serde(default)]
    pub frac_deduplicated: Option<f64>,
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the bearer token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// `POST /_api/v1/cache-config/<cache>`: a private cache with a generated key.
    pub async fn create_cache(&self, cache: &str) -> anyhow::Result<()> {
        let body = json!({
            "keypair": "Generate",
            "is_public": false,
            "store_dir": "/nix/store",
            "priority": 41,
            "upstream_cache_key_names": [],
        });
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/_api/v1/cache-config/{cache}"),
            )
            .json(&body)
            .send()
            .await?;
        ok_or_body(resp, "creating the cache").await?;
        Ok(())
    }

    /// The cache's `public_key` from `GET /_api/v1/cache-config/<cache>`.
    pub async fn public_key(&self, cache: &str) -> anyhow::Result<String> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/_api/v1/cache-config/{cache}"),
            )
            .send()
            .await?;
        let text = ok_or_body(resp, "reading the cache config").await?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        v["public_key"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no public_key in {text}"))
    }

    /// `PUT /_api/v1/upload-path` of one store path, its NAR streamed from
    /// `nix-store --dump` (chunked transfer, no `Content-Length`).
    pub async fn upload_path(
        &self,
        nix: &Nix,
        cache: &str,
        info: &PathInfo,
    ) -> anyhow::Result<UploadResult> {
        let meta = json!({
            "cache": cache,
            "store_path_hash": info.hash_part(),
            "store_path": info.path,
            "references": info.references.iter().map(|r| base_name(r)).collect::<Vec<_>>(),
            "system": null,
            "deriver": info.deriver.as_deref().map(base_name),
            "sigs": info.signatures,
            "ca": info.ca,
            "nar_hash": typed_base16(&info.nar_hash)?,
            "nar_size": info.nar_size,
        });
        let mut dump = nix.command("nix-store");
        dump.args(["--dump", &info.path])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = dump.spawn().context("spawning nix-store --dump")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let body = reqwest::Body::wrap_stream(ReaderStream::new(stdout));
        let resp = self
            .request(reqwest::Method::PUT, "/_api/v1/upload-path")
            .header("X-Attic-Nar-Info", meta.to_string())
            .header("Content-Type", "application/x-nix-nar")
            .body(body)
            .send()
            .await;
        let resp = resp.with_context(|| format!("uploading {}", info.path))?;
        let text = ok_or_body(resp, &format!("uploading {}", info.path)).await;
        // The body is gone once the response is read; a dump still writing
        // then dies of SIGPIPE. Bounded anyway.
        let status =
            match tokio::time::timeout(std::time::Duration::from_secs(60), child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    child.kill().await?;
                    anyhow::bail!(
                        "nix-store --dump {} did not exit after the upload",
                        info.path
                    );
                }
            };
        let text = text?;
        anyhow::ensure!(
            status.success(),
            "nix-store --dump {} failed ({status})",
            info.path
        );
        serde_json::from_str(&text).with_context(|| format!("parsing the upload result {text}"))
    }

    /// Uploads the closure of `tops`, references first; returns its metadata.
    pub async fn upload_closure(
        &self,
        nix: &Nix,
        cache: &str,
        tops: &[String],
    ) -> anyhow::Result<Vec<PathInfo>> {
        let closure = nix.closure(tops).await?;
        let infos = nix.path_info(&closure).await?;
        // path-info may sort; keep the closure's references-first order.
        let mut ordered = Vec::with_capacity(closure.len());
        for path in &closure {
            let info = infos
                .iter()
                .find(|i| &i.path == path)
                .with_context(|| format!("no path-info for {path}"))?;
            ordered.push(info.clone());
        }
        for info in &ordered {
            let result = self.upload_path(nix, cache, info).await?;
            anyhow::ensure!(
                result.kind == "Uploaded" || result.kind == "Deduplicated",
                "unexpected upload kind {result:?}"
            );
        }
        Ok(ordered)
    }

    /// `GET /<cache>/<hash>.narinfo`, parsed.
    pub async fn narinfo(&self, cache: &str, store_path: &str) -> anyhow::Result<Narinfo> {
        let hash = crate::nix::hash_part(store_path);
        let resp = self
            .request(reqwest::Method::GET, &format!("/{cache}/{hash}.narinfo"))
            .send()
            .await?;
        let text = ok_or_body(resp, &format!("reading the narinfo of {store_path}")).await?;
        Narinfo::parse(&text)
    }

    /// `GET /<cache>/<file>` (a narinfo's `URL`): the declared
    /// `Content-Length` and the body.
    pub async fn download(&self, cache: &str, file: &str) -> anyhow::Result<Download> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/{cache}/{file}"))
            .send()
            .await?;
        let status = resp.status();
        let content_length = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.bytes().await?.to_vec();
        anyhow::ensure!(
            status.is_success(),
            "GET /{cache}/{file}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(Download {
            content_length,
            body,
        })
    }
}

/// A downloaded file.
#[derive(Debug)]
pub struct Download {
    /// The `Content-Length` header, if any.
    pub content_length: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
}

/// The body of a 2xx response, or an error with status and body.
async fn ok_or_body(resp: reqwest::Response, what: &str) -> anyhow::Result<String> {
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "{what}: HTTP {status}: {text}");
    Ok(text)
}

/// `sha256-<base64>` (SRI, as Nix 2.8 prints) → `sha256:<hex>`, what Attic's
/// client sends. Other forms pass through.
pub fn typed_base16(hash: &str) -> anyhow::Result<String> {
    match hash.strip_prefix("sha256-") {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("bad SRI hash {hash}"))?;
            Ok(format!("sha256:{}", hex::encode(bytes)))
        }
        None => Ok(hash.to_owned()),
    }
}

/// A narinfo as `Key: value` lines, in order (`Sig` may repeat).
#[derive(Debug, Clone)]
pub struct Narinfo {
    /// The raw text.
    pub text: String,
    /// Fields in order.
    pub fields: Vec<(String, String)>,
}

impl Narinfo {
    /// Parses the line format Nix reads: every line `Key: value\n`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            text.ends_with('\n'),
            "narinfo does not end in a newline:\n{text}"
        );
        let fields = text
            .lines()
            .map(|line| {
                line.split_once(": ")
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .or_else(|| {
                        line.strip_suffix(':')
                            .map(|k| (k.to_owned(), String::new()))
                    })
                    .with_context(|| format!("narinfo line {line:?} is not `Key: value`"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            text: text.to_owned(),
            fields,
        })
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `Compression`, which Nix reads as bzip2 when missing.
    pub fn compression(&self) -> &str {
        self.get("Compression").unwrap_or("bzip2")
    }

    /// `URL`.
    pub fn url(&self) -> &str {
        self.get("URL").unwrap_or("")
    }
}

/// Nix's base32 (alphabet without e, o, u, t; last byte first), as narinfo
/// `NarHash` and NAR URLs print digests.
pub fn nix_base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    if bytes.is_empty() {
        return String::new();
    }
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let lo = u16::from(bytes[i]) >> j;
            let hi = bytes.get(i + 1).map_or(0, |&x| u16::from(x) << (8 - j));
            char::from(ALPHABET[usize::from((lo | hi) & 0x1f)])
        })
        .collect()
}

/// `sha256-<base64>` (SRI) → `sha256:<nix-base32>`, as narinfo `NarHash`
/// prints it. Other forms pass through.
pub fn typed_nix_base32(hash: &str) -> anyhow::Result<String> {
    match hash.strip_prefix("sha256-") {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("bad SRI hash {hash}"))?;
            Ok(format!("sha256:{}", nix_base32(&bytes)))
        }
        None => Ok(hash.to_owned()),
    }
}
