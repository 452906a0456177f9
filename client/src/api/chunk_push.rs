//! Calls of Larder's chunk-level push under `/_api/larder/v1`
//! (docs/protocol.md "Chunk-level push"). Every call here may be repeated:
//! asking is a read, a batch already received adds nothing, and a commit
//! of a NAR the cache holds links it again.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;

use larder_core::CacheName;
use larder_core::wire::UploadPathResult;
use larder_core::wire::chunk_push::{
    BATCH_CONTENT_TYPE, ChunkBatchResponse, ChunkParamsResponse, CommitNarRequest,
    MissingChunksRequest, MissingChunksResponse, PREFIX,
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

    /// Which of `chunks` (hex) the client must send for `store_path`.
    pub async fn missing_chunks(
        &self,
        cache: &CacheName,
        req: &MissingChunksRequest,
    ) -> Result<Vec<String>, ApiError> {
        let resp: MissingChunksResponse = self
            .retry
            .run(
                |_, _| {},
                |_| async {
                    let (call, rb) = self.larder_call(Method::POST, cache, "chunks/missing")?;
                    let resp = Self::send(&call, rb.json(req)).await?;
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

    /// Commits a NAR as its chunk list: one attempt (the caller retries).
    pub async fn commit_nar(
        &self,
        cache: &CacheName,
        req: &CommitNarRequest,
        replace: bool,
    ) -> Result<UploadPathResult, ApiError> {
        let (call, rb) = self.larder_call(Method::POST, cache, "nars")?;
        let rb = if replace {
            rb.header(REPLACE_HEADER, "1")
        } else {
            rb
        };
        // A large NAR's commit reads it back whole on the server.
        let rb = rb.timeout(COMMIT_TIMEOUT).json(req);
        let resp = Self::send(&call, rb).await?;
        Self::json(&call, resp).await
    }
}

/// Time limit of a commit, which verifies the whole NAR before answering.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
