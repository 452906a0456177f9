//! Calls of Larder's chunk-level push under `/_api/larder/v1`
//! (docs/protocol.md "Chunk-level push"). Every call here may be repeated:
//! asking is a read, a batch already received adds nothing, a commit of a
//! NAR the cache holds links it again, a prepare stages another copy (the
//! unused one expires) and a publish of a published NAR links it again.
//!
//! Chunk lists go as raw hashes ([`HASH_LIST_CONTENT_TYPE`]) to a server
//! that advertises it, else as the hex JSON every server takes.

use futures::{Stream, StreamExt as _, stream};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;

use serde::Serialize;
use serde::de::DeserializeOwned;

use larder_core::CacheName;
use larder_core::chunk::ChunkHash;
use larder_core::wire::chunk_push::{
    BATCH_CONTENT_TYPE, ChunkBatchResponse, ChunkParamsResponse, CommitNarRequest,
    HASH_LIST_CONTENT_TYPE, INLINE_NAR_CONTENT_TYPE, MissingChunksRequest, MissingChunksResponse,
    PREFIX, PreparedNarResponse, encode_hash_list, encode_inline_nar,
};

use super::error::Call;
use super::{ApiClient, ApiError, CALL_TIMEOUT, REPLACE_HEADER};

impl ApiClient {
    fn larder_call(
        &self,
        method: Method,
        cache: &CacheName,
        path: &str,
    ) -> Result<(Call, reqwest::RequestBuilder), ApiError> {
        let url = format!("{}{PREFIX}/caches/{cache}/{path}", self.base);
        let (call, rb) = self.request_to(method, url)?;
        Ok((call, rb.timeout(CALL_TIMEOUT)))
    }

    /// `POST …/nars`, with `X-Larder-Replace` when `replace`. A large NAR's
    /// commit reads it back whole on the server, hence its own time limit.
    fn nars_call(
        &self,
        cache: &CacheName,
        replace: bool,
    ) -> Result<(Call, reqwest::RequestBuilder), ApiError> {
        let (call, rb) = self.larder_call(Method::POST, cache, "nars")?;
        let rb = rb.timeout(COMMIT_TIMEOUT);
        Ok((
            call,
            if replace {
                rb.header(REPLACE_HEADER, "1")
            } else {
                rb
            },
        ))
    }

    /// The cache's chunking, or the error of a server without chunk push
    /// (an Attic server, or `[chunk-push] enabled = false`: 404).
    pub async fn chunk_params(&self, cache: &CacheName) -> Result<ChunkParamsResponse, ApiError> {
        self.retry
            .run(
                |_, _| {},
                |_| async {
                    let (call, rb) = self.larder_call(Method::GET, cache, "chunk-push")?;
                    let resp = Self::send(&call, rb).await?;
                    Self::json(&call, resp).await
                },
            )
            .await
    }

    /// Which of `hashes` the client must send for `store_path` (hex, as
    /// the server answers); `compact` sends them as a hash list.
    pub async fn missing_chunks(
        &self,
        cache: &CacheName,
        store_path: &str,
        hashes: &[ChunkHash],
        compact: bool,
    ) -> Result<Vec<String>, ApiError> {
        let mut req = MissingChunksRequest {
            store_path: store_path.to_owned(),
            chunks: Vec::new(),
        };
        let body = if compact {
            hash_list_body(&req, hashes)?
        } else {
            req.chunks = hashes.iter().map(ToString::to_string).collect();
            json_body(&req)?
        };
        let resp: MissingChunksResponse = self
            .retry
            .run(
                |_, _| {},
                |_| async {
                    let (call, rb) = self.larder_call(Method::POST, cache, "chunks/missing")?;
                    let resp = Self::send(&call, body.attach(rb)).await?;
                    Self::json(&call, resp).await
                },
            )
            .await?;
        Ok(resp.missing)
    }

    /// Sends one batch body (entries of
    /// [`larder_core::wire::chunk_push::encode_entry`]).
    pub async fn upload_chunks(
        &self,
        cache: &CacheName,
        body: bytes::Bytes,
    ) -> Result<ChunkBatchResponse, ApiError> {
        self.retry
            .run(
                |_, _| {},
                |_| async {
                    let (call, rb) = self.larder_call(Method::POST, cache, "chunks")?;
                    let rb = rb
                        .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
                        .body(body.clone());
                    let resp = Self::send(&call, rb).await?;
                    Self::json(&call, resp).await
                },
            )
            .await
    }

    /// Commits, prepares or publishes a NAR (`req.mode`; `req.chunks`
    /// empty, the list is `hashes`): one attempt (the caller retries). The
    /// answer is an [`larder_core::wire::UploadPathResult`], or for a
    /// prepare a [`larder_core::wire::chunk_push::PreparedNarResponse`].
    pub async fn commit_nar<T: DeserializeOwned>(
        &self,
        cache: &CacheName,
        req: &CommitNarRequest,
        hashes: &[ChunkHash],
        compact: bool,
        replace: bool,
    ) -> Result<T, ApiError> {
        let body = if compact {
            hash_list_body(req, hashes)?
        } else {
            let mut req = req.clone();
            req.chunks = hashes.iter().map(ToString::to_string).collect();
            json_body(&req)?
        };
        let (call, rb) = self.nars_call(cache, replace)?;
        let rb = body.attach(rb);
        let resp = Self::send(&call, rb).await?;
        Self::json(&call, resp).await
    }

    /// A one-step commit (`req`, no chunks in it) carrying its NAR of one
    /// chunk as `compressed` zstd, for a server that advertises
    /// [`ChunkParamsResponse::inline_nars`].
    pub async fn commit_inline_nar<T: DeserializeOwned>(
        &self,
        cache: &CacheName,
        req: &CommitNarRequest,
        compressed: &[u8],
        replace: bool,
    ) -> Result<T, ApiError> {
        let head = serde_json::to_vec(req).map_err(ApiError::Encode)?;
        let body = Payload {
            content_type: INLINE_NAR_CONTENT_TYPE,
            bytes: encode_inline_nar(&head, compressed).into(),
        };
        let (call, rb) = self.nars_call(cache, replace)?;
        let resp = Self::send(&call, body.attach(rb)).await?;
        Self::json(&call, resp).await
    }

    /// Opens a prepare (`req.mode`, no chunks in it) whose chunk list is
    /// `hashes`, raw 32-byte hashes in pieces as the caller learns that
    /// their chunks are in, for a server that advertises
    /// [`ChunkParamsResponse::streamed_prepare`]: it verifies the NAR as
    /// the pieces arrive. One attempt: a stream cannot be replayed, so the
    /// caller falls back to a prepare listing the chunks whole.
    pub async fn prepare_streamed<S>(
        &self,
        cache: &CacheName,
        req: &CommitNarRequest,
        hashes: S,
        replace: bool,
    ) -> Result<PreparedNarResponse, ApiError>
    where
        S: Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
    {
        let head = bytes::Bytes::from(encode_hash_list(
            &serde_json::to_vec(req).map_err(ApiError::Encode)?,
            &[],
        ));
        let body = stream::once(async move { Ok(head) }).chain(hashes);
        let (call, rb) = self.nars_call(cache, replace)?;
        let rb = rb
            .header(CONTENT_TYPE, HASH_LIST_CONTENT_TYPE)
            .body(reqwest::Body::wrap_stream(body));
        let resp = Self::send(&call, rb).await?;
        Self::json(&call, resp).await
    }
}

/// A request body and its content type.
struct Payload {
    content_type: &'static str,
    bytes: bytes::Bytes,
}

impl Payload {
    fn attach(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.header(CONTENT_TYPE, self.content_type)
            .body(self.bytes.clone())
    }
}

fn json_body(req: &impl Serialize) -> Result<Payload, ApiError> {
    Ok(Payload {
        content_type: "application/json",
        bytes: serde_json::to_vec(req).map_err(ApiError::Encode)?.into(),
    })
}

/// `head` as JSON (with no hex `chunks`), then `hashes` raw.
fn hash_list_body(head: &impl Serialize, hashes: &[ChunkHash]) -> Result<Payload, ApiError> {
    let head = serde_json::to_vec(head).map_err(ApiError::Encode)?;
    Ok(Payload {
        content_type: HASH_LIST_CONTENT_TYPE,
        bytes: encode_hash_list(&head, hashes).into(),
    })
}

/// Time limit of a commit, which verifies the whole NAR before answering.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
