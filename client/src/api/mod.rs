//! The HTTP client for Larder's (Attic-compatible) API under `/_api/v1`.
//!
//! One [`ApiClient`] per server: it holds the endpoint and the bearer token,
//! turns error bodies (`{"code", "error", "message"}`, docs/protocol.md) into
//! [`ApiError::Status`], and retries the calls that are safe to repeat
//! (reads, `get-missing-paths`). Cache management calls are sent once: a
//! retried create or destroy could report the first attempt's effect as an
//! error.

mod chunk_push;
pub mod error;
mod oidc;
pub mod retry;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _, stream};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use larder_core::CacheName;
use larder_core::nix::store_path::StorePathHash;
use larder_core::wire::{
    CacheConfig, CacheSummary, ErrorBody, GetMissingPathsRequest, GetMissingPathsResponse, Pin,
    PinRequest, UploadPathNarInfo, UploadPathResult,
};

pub use error::ApiError;
use error::Call;
use retry::RetryPolicy;

/// Header carrying the upload metadata JSON.
pub const NAR_INFO_HEADER: &str = "x-attic-nar-info";
/// Header asking the server to replace a path it already has with another
/// NAR (`larder push --replace`; the token needs `d`).
pub const REPLACE_HEADER: &str = "x-larder-replace";
/// Header giving the size of a metadata preamble at the start of the body.
pub const PREAMBLE_SIZE_HEADER: &str = "x-attic-nar-info-preamble-size";
/// Metadata longer than this goes into the body preamble: proxies commonly
/// cap a header line at 4 to 8 KiB, and a path with many references
/// easily exceeds that.
pub const MAX_HEADER_METADATA: usize = 4096;
/// Most hashes per `get-missing-paths` request.
pub const MISSING_PATHS_BATCH: usize = 1000;
/// Time limit of a JSON call (not of uploads, which may stream for hours).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit for establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of TCP keepalive probes.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Bytes of a non-JSON error body shown to the user.
const ERROR_BODY_PREVIEW: usize = 512;

/// A server's API. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The endpoint without trailing `/`.
    base: String,
    token: Option<String>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ApiClient {
    /// A client for `endpoint` (e.g. `https://cache.example.com`), sending
    /// `token` as a bearer token when there is one.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("larder/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            // Uploads have no overall time limit; keepalive at least
            // notices a peer that vanished.
            .tcp_keepalive(TCP_KEEPALIVE)
            .build()
            .map_err(ApiError::Client)?;
        Ok(Self {
            http,
            base: endpoint.trim_end_matches('/').to_owned(),
            token,
            retry: RetryPolicy::default(),
        })
    }

    /// The endpoint, without trailing `/`.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// The retry policy of this client's idempotent calls and uploads.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    fn call(&self, method: Method, path: &str) -> Result<(Call, RequestBuilder), ApiError> {
        self.request_to(method, format!("{}/_api/v1/{path}", self.base))
    }

    /// A request to `url` with the token, and the [`Call`] its errors name.
    fn request_to(&self, method: Method, url: String) -> Result<(Call, RequestBuilder), ApiError> {
        let parsed = reqwest::Url::parse(&url).map_err(|source| ApiError::Url {
            url: url.clone(),
            source,
        })?;
        let mut rb = self.http.request(method.clone(), parsed);
        if let Some(token) = &self.token {
            rb = rb.bearer_auth(token);
        }
        Ok((Call { method, url }, rb))
    }

    /// Sends `rb` and returns the response if its status is a success.
    async fn send(call: &Call, rb: RequestBuilder) -> Result<Response, ApiError> {
        let resp = rb.send().await.map_err(|source| ApiError::Transport {
            call: call.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(status_error(call, resp).await)
    }

    async fn json<T: DeserializeOwned>(call: &Call, resp: Response) -> Result<T, ApiError> {
        let body = resp.bytes().await.map_err(|source| ApiError::Transport {
            call: call.clone(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode {
            call: call.clone(),
            source,
        })
    }

    /// Runs one JSON call, with retries when `idempotent`.
    async fn run<T: DeserializeOwned>(
        &self,
        idempotent: bool,
        method: Method,
        path: &str,
        body: Option<&(impl serde::Serialize + ?Sized)>,
    ) -> Result<T, ApiError> {
        let attempt = |_| async {
            let (call, mut rb) = self.call(method.clone(), path)?;
            rb = rb.timeout(CALL_TIMEOUT);
            if let Some(body) = body {
                rb = rb.json(body);
            }
            let resp = Self::send(&call, rb).await?;
            Self::json(&call, resp).await
        };
        if idempotent {
            self.retry.run(|_, _| {}, attempt).await
        } else {
            attempt(1).await
        }
    }

    /// Like [`Self::run`] for calls whose success body carries nothing.
    async fn run_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&CacheConfig>,
    ) -> Result<(), ApiError> {
        let (call, mut rb) = self.call(method, path)?;
        rb = rb.timeout(CALL_TIMEOUT);
        if let Some(body) = body {
            rb = rb.json(body);
        }
        Self::send(&call, rb).await.map(drop)
    }

    /// `GET /_api/v1/cache-config/{cache}` (needs `r` or `w`).
    pub async fn get_cache_config(&self, cache: &CacheName) -> Result<CacheConfig, ApiError> {
        let path = format!("cache-config/{cache}");
        self.run(true, Method::GET, &path, None::<&()>).await
    }

    /// `POST /_api/v1/cache-config/{cache}` (needs `cc`).
    pub async fn create_cache(
        &self,
        cache: &CacheName,
        config: &CacheConfig,
    ) -> Result<(), ApiError> {
        let path = format!("cache-config/{cache}");
        self.run_empty(Method::POST, &path, Some(config)).await
    }

    /// `PATCH /_api/v1/cache-config/{cache}` (needs `cr`, and `cq` for
    /// retention); only the fields set in `config` are sent.
    pub async fn configure_cache(
        &self,
        cache: &CacheName,
        config: &CacheConfig,
    ) -> Result<(), ApiError> {
        let path = format!("cache-config/{cache}");
        self.run_empty(Method::PATCH, &path, Some(config)).await
    }

    /// `DELETE /_api/v1/cache-config/{cache}` (needs `cd`).
    pub async fn destroy_cache(&self, cache: &CacheName) -> Result<(), ApiError> {
        let path = format!("cache-config/{cache}");
        self.run_empty(Method::DELETE, &path, None).await
    }

    /// `GET /_api/v1/caches/{cache}/pins` (needs `r`).
    pub async fn list_pins(&self, cache: &CacheName) -> Result<Vec<Pin>, ApiError> {
        let path = format!("caches/{cache}/pins");
        self.run(true, Method::GET, &path, None::<&()>).await
    }

    /// `PUT /_api/v1/caches/{cache}/pins/{name}` (needs `w`).
    pub async fn set_pin(
        &self,
        cache: &CacheName,
        name: &str,
        store_path: &str,
    ) -> Result<(), ApiError> {
        let (call, mut rb) = self.call(Method::PUT, &format!("caches/{cache}/pins/{name}"))?;
        rb = rb.timeout(CALL_TIMEOUT).json(&PinRequest {
            store_path: store_path.to_owned(),
        });
        Self::send(&call, rb).await.map(drop)
    }

    /// `DELETE /_api/v1/caches/{cache}/pins/{name}` (needs `w`).
    pub async fn remove_pin(&self, cache: &CacheName, name: &str) -> Result<(), ApiError> {
        let (call, rb) = self.call(Method::DELETE, &format!("caches/{cache}/pins/{name}"))?;
        Self::send(&call, rb.timeout(CALL_TIMEOUT)).await.map(drop)
    }

    /// `DELETE /{cache}/{hash}.narinfo` (needs `d`): removes a path now.
    pub async fn delete_path(
        &self,
        cache: &CacheName,
        hash: &StorePathHash,
    ) -> Result<(), ApiError> {
        let url = format!("{}/{cache}/{hash}.narinfo", self.base);
        let (call, rb) = self.request_to(Method::DELETE, url)?;
        Self::send(&call, rb.timeout(CALL_TIMEOUT)).await.map(drop)
    }

    /// `GET /_api/v1/caches`: Larder's list of [`CacheSummary`], or the JSON
    /// of a server that answers another shape, for the caller to render.
    pub async fn list_caches(&self) -> Result<CacheList, ApiError> {
        self.run(true, Method::GET, "caches", None::<&()>).await
    }

    /// `POST /_api/v1/get-missing-paths` (needs `w`), in batches of
    /// [`MISSING_PATHS_BATCH`]. Returns the hashes the cache lacks.
    pub async fn get_missing_paths(
        &self,
        cache: &CacheName,
        hashes: &[StorePathHash],
    ) -> Result<Vec<StorePathHash>, ApiError> {
        let mut missing = Vec::new();
        for batch in hashes.chunks(MISSING_PATHS_BATCH) {
            let req = GetMissingPathsRequest {
                cache: cache.to_string(),
                store_path_hashes: batch.iter().map(|h| h.as_str().to_owned()).collect(),
            };
            let resp: GetMissingPathsResponse = self
                .run(true, Method::POST, "get-missing-paths", Some(&req))
                .await?;
            // Only hashes we asked about count; anything else is noise.
            let answer: HashSet<String> = resp.missing_paths.into_iter().collect();
            missing.extend(
                batch
                    .iter()
                    .filter(|h| answer.contains(h.as_str()))
                    .cloned(),
            );
        }
        Ok(missing)
    }

    /// `PUT /_api/v1/upload-path` (needs `w`): one attempt. `nar` is the
    /// NAR's byte stream, `nar_size` bytes long; it is streamed, never held
    /// in memory. The metadata goes in the `X-Attic-Nar-Info` header, or in
    /// a body preamble when it is too long for a header. `replace` sends
    /// [`REPLACE_HEADER`]: without it, a path the cache has with another
    /// NAR is a 409 (first push wins).
    pub async fn upload_path<S, E>(
        &self,
        meta: &UploadPathNarInfo,
        nar: S,
        nar_size: u64,
        replace: bool,
    ) -> Result<UploadPathResult, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let (call, rb) = self.call(Method::PUT, "upload-path")?;
        let json = serde_json::to_vec(meta).map_err(|source| ApiError::Decode {
            call: call.clone(),
            source,
        })?;
        let rb = rb.header(CONTENT_TYPE, "application/octet-stream");
        let rb = if replace {
            rb.header(REPLACE_HEADER, "1")
        } else {
            rb
        };
        let header = (json.len() <= MAX_HEADER_METADATA)
            .then(|| HeaderValue::from_bytes(&json).ok())
            .flatten();
        let rb = match header {
            Some(value) => rb
                .header(NAR_INFO_HEADER, value)
                .header(CONTENT_LENGTH, nar_size)
                .body(reqwest::Body::wrap_stream(nar)),
            None => {
                let preamble_len = json.len() as u64;
                let preamble = stream::once(async move { Ok::<_, E>(Bytes::from(json)) });
                rb.header(PREAMBLE_SIZE_HEADER, preamble_len)
                    .header(CONTENT_LENGTH, preamble_len + nar_size)
                    .body(reqwest::Body::wrap_stream(preamble.chain(nar)))
            }
        };
        let resp = Self::send(&call, rb).await?;
        Self::json(&call, resp).await
    }
}

/// The body of `GET /_api/v1/caches`. The route is a Larder extension whose
/// shape Attic does not fix, so a body that is not a list of summaries is
/// kept as JSON rather than failing the command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CacheList {
    /// What Larder answers.
    Summaries(Vec<CacheSummary>),
    /// Any other JSON.
    Other(serde_json::Value),
}

/// Builds [`ApiError::Status`] from an error response.
async fn status_error(call: &Call, resp: Response) -> ApiError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.bytes().await.unwrap_or_default();
    let (kind, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody { error, message, .. }) => (
            error,
            message.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let preview: String = text.chars().take(ERROR_BODY_PREVIEW).collect();
            let message = if preview.is_empty() {
                status.canonical_reason().unwrap_or("").to_owned()
            } else {
                preview
            };
            (None, message)
        }
    };
    ApiError::Status {
        call: call.clone(),
        status,
        kind,
        message,
        retry_after,
    }
}
