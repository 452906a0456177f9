//! [`Storage`] on an S3-compatible bucket (AWS S3, R2, B2, Garage,
//! SeaweedFS, MinIO, Ceph), through the `object_store` crate's `AmazonS3`
//! client: SigV4, retries with exponential backoff and decorrelated jitter on
//! 5xx, 429, timeouts and connection resets, and resumption of interrupted
//! GET bodies (same ETag).
//!
//! The trait's semantics hold as on local disk:
//! - **Atomic visibility.** An object of up to [`PART_SIZE`] bytes is one
//!   `PUT`; a larger one a multipart upload, which S3 makes visible only on
//!   `CompleteMultipartUpload`. A failing input stream, a failed part, or the
//!   caller dropping the `put` future aborts the upload, so nothing is left
//!   and a previous object under the key stays.
//! - **Ranges** past the end are [`StorageError::InvalidRange`] (S3 would
//!   clamp them or answer 416), a missing object [`StorageError::NotFound`].
//! - **Delete** of a missing key succeeds (S3 does the same).
//! - **List** is S3's paginated `ListObjectsV2`, consumed lazily.
//!
//! Every request waits for one of `max-requests` slots of this backend, so a
//! burst of uploads cannot open unbounded connections; a GET holds its slot
//! until the response headers arrive, not while the body streams (a slow
//! reader must not starve writers, and a copy from one object to another can
//! never deadlock on slots).
//!
//! Multipart uploads left by a process that died mid-`put` cannot be listed
//! through `object_store`: a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`, docs/operations.md) removes them, so
//! [`Storage::remove_incomplete`] keeps its default.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::requests::{self, LIST_PAGE, Op};
use super::{ByteStream, ObjectKey, ObjectMeta, ObjectMetaStream, Storage, StorageError};
use crate::config::S3Config;

mod multipart;

/// Objects up to this size are one `PUT`; larger ones are uploaded in parts
/// of exactly this size (R2 wants equal parts; S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one `put` uploading at once (bounds its memory to about
/// `(PARTS_IN_FLIGHT + 1) * PART_SIZE`).
const PARTS_IN_FLIGHT: usize = 2;
/// Key probed by [`Storage::check`]; a dot segment is never an object key.
const CHECK_KEY: &str = ".larder-ready-check";
/// How long [`Storage::check`] waits (retries included) before it fails.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Objects in an S3 bucket, optionally under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Storage {
    store: Arc<AmazonS3>,
    /// `""` or the configured prefix with a trailing `/`.
    prefix: String,
    /// Slots for requests in flight.
    slots: Arc<Semaphore>,
}

/// Wraps a client error; `NotFound` stays distinguishable via the source.
fn remote(op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> StorageError + use<> {
    let key = key.to_owned();
    move |source| StorageError::Remote { op, key, source }
}

impl S3Storage {
    /// Builds the client from `config` (static credentials, else the `AWS_*`
    /// environment variables). Sends no request: [`Storage::check`] does.
    pub fn new(config: &S3Config) -> Result<Self, StorageError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.path_style())
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: config.max_retries,
                retry_timeout: config.retry_timeout.get(),
            });
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(c) = &config.credentials {
            builder = builder
                .with_access_key_id(c.access_key_id.expose())
                .with_secret_access_key(c.secret_access_key.expose());
            if let Some(token) = &c.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        let store = builder
            .build()
            .map_err(remote("configure", &config.bucket))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix().map(|p| format!("{p}/")).unwrap_or_default(),
            slots: Arc::new(Semaphore::new(config.max_requests)),
        })
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// Runs one request in a slot and counts it.
    async fn request<T>(
        &self,
        op: Op,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        counted(&self.slots, op, request).await
    }

    /// Size of the object, or `NotFound`.
    async fn size(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        match self.head(key).await? {
            Some(meta) => Ok(meta.size),
            None => Err(StorageError::NotFound(key.clone())),
        }
    }
}

/// Runs `request` in one of `slots` and counts it; a missing object counts
/// as a successful request.
async fn counted<T>(
    slots: &Semaphore,
    op: Op,
    request: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    // The semaphore is never closed, so `acquire` cannot fail.
    let _slot = slots.acquire().await.ok();
    let r = request.await;
    requests::record(
        op,
        matches!(&r, Ok(_) | Err(object_store::Error::NotFound { .. })),
    );
    r
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &ObjectKey, mut data: ByteStream) -> Result<u64, StorageError> {
        let mut first = Vec::new();
        let mut size = 0usize;
        while let Some(piece) = data.next().await {
            let mut piece = piece.map_err(|source| StorageError::Input {
                key: key.clone(),
                source,
            })?;
            if size + piece.len() >= PART_SIZE {
                // Too big for one PUT: the rest goes as a multipart upload,
                // on a task of its own so that dropping this future aborts
                // the upload instead of abandoning it.
                let rest = piece.split_off(PART_SIZE - size);
                first.push(piece);
                let rest: ByteStream = Box::pin(futures::stream::iter([Ok(rest)]).chain(data));
                let cancel = CancellationToken::new();
                let _abort_on_drop = cancel.clone().drop_guard();
                let upload = self.clone().put_multipart(key.clone(), first, rest, cancel);
                return tokio::spawn(upload).await?;
            }
            size += piece.len();
            first.push(piece);
        }
        self.request(
            Op::Put,
            self.store
                .put(&self.path(key.as_str()), PutPayload::from_iter(first)),
        )
        .await
        .map_err(remote("put", key.as_str()))?;
        Ok(size as u64)
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        let invalid = |size| StorageError::InvalidRange {
            key: key.clone(),
            start: range.as_ref().map_or(0, |r| r.start),
            end: range.as_ref().map_or(0, |r| r.end),
            size,
        };
        if let Some(r) = &range
            && r.start >= r.end
        {
            // S3 has no empty ranges: check the bounds, send nothing.
            let size = self.size(key).await?;
            if r.start > r.end || r.end > size {
                return Err(invalid(size));
            }
            return Ok(Box::pin(futures::stream::empty()));
        }
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let path = self.path(key.as_str());
        match self
            .request(Op::Get, self.store.get_opts(&path, options))
            .await
        {
            Ok(got) => {
                if let Some(r) = &range
                    && got.range != *r
                {
                    // S3 clamps a range that ends past the object.
                    return Err(invalid(got.meta.size));
                }
                Ok(Box::pin(got.into_stream().map_err(io::Error::other)))
            }
            Err(e) if is_not_found(&e) => Err(StorageError::NotFound(key.clone())),
            Err(e) => match &range {
                // 416 for a range starting past the end: report it as such.
                Some(r) => match self.size(key).await? {
                    size if r.end > size => Err(invalid(size)),
                    _ => Err(remote("get", key.as_str())(e)),
                },
                None => Err(remote("get", key.as_str())(e)),
            },
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key.as_str());
        match self.request(Op::Head, self.store.head(&path)).await {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: meta.size,
                last_modified: SystemTime::from(meta.last_modified),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(remote("head", key.as_str())(e)),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path(key.as_str());
        match self.request(Op::Delete, self.store.delete(&path)).await {
            Err(e) if !is_not_found(&e) => Err(remote("delete", key.as_str())(e)),
            _ => Ok(()),
        }
    }

    fn list(&self, prefix: &str) -> ObjectMetaStream {
        if let Err(e) = super::validate_prefix(prefix) {
            return Box::pin(futures::stream::iter([Err(e.into())]));
        }
        // object_store lists whole path segments: list the deepest complete
        // directory and filter by the (possibly partial) last segment.
        let full = format!("{}{prefix}", self.prefix);
        let dir = full.rsplit_once('/').map(|(dir, _)| Path::from(dir));
        let strip = self.prefix.len();
        requests::record(Op::List, true);
        let mut seen = 0u64;
        let failed = remote("list", prefix);
        let listed = self
            .store
            .list(dir.as_ref())
            .inspect(move |r| {
                seen += 1;
                if r.is_ok() && seen.is_multiple_of(LIST_PAGE) {
                    requests::record(Op::List, true);
                }
            })
            .try_filter_map(move |meta| {
                let location = meta.location.as_ref();
                let key = location
                    .starts_with(&full)
                    .then(|| ObjectKey::new(&location[strip..]).ok())
                    .flatten();
                futures::future::ready(Ok(key.map(|key| ObjectMeta {
                    key,
                    size: meta.size,
                    last_modified: SystemTime::from(meta.last_modified),
                })))
            });
        // The first error ends the listing.
        let mut failed = Some(failed);
        Box::pin(listed.scan((), move |(), r| {
            futures::future::ready(match r {
                Ok(meta) => failed.is_some().then_some(Ok(meta)),
                Err(e) => failed.take().map(|wrap| Err(wrap(e))),
            })
        }))
    }

    async fn check(&self) -> Result<(), StorageError> {
        // One signed HEAD: 404 proves the bucket reachable and the
        // credentials accepted, without writing on every readiness probe.
        // Bounded: a probe must answer while the client would still be
        // retrying an unreachable server.
        let path = self.path(CHECK_KEY);
        let head = self.request(Op::Head, self.store.head(&path));
        let result = match tokio::time::timeout(CHECK_TIMEOUT, head).await {
            Ok(result) => result,
            Err(elapsed) => Err(object_store::Error::Generic {
                store: "S3",
                source: Box::new(elapsed),
            }),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(remote("check", CHECK_KEY)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigDuration, S3Credentials, Secret};

    /// The test server from `LARDER_TEST_S3_*` (scripts/test-all starts
    /// SeaweedFS), in a fresh prefix; `None` (skip) when unset.
    pub(crate) fn test_storage() -> Option<S3Storage> {
        let config = test_config()?;
        Some(S3Storage::new(&config).expect("S3 client"))
    }

    pub(crate) fn test_config() -> Option<S3Config> {
        let Ok(endpoint) = std::env::var("LARDER_TEST_S3_ENDPOINT") else {
            eprintln!("LARDER_TEST_S3_ENDPOINT unset: skipping S3 test (scripts/test-all sets it)");
            return None;
        };
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set"));
        Some(S3Config {
            bucket: var("LARDER_TEST_S3_BUCKET"),
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint),
            prefix: Some(format!(
                "t-{}",
                ulid::Ulid::new().to_string().to_lowercase()
            )),
            path_style: None,
            credentials: Some(S3Credentials {
                access_key_id: Secret::new(var("LARDER_TEST_S3_ACCESS_KEY_ID")),
                secret_access_key: Secret::new(var("LARDER_TEST_S3_SECRET_ACCESS_KEY")),
                session_token: None,
            }),
            max_requests: 16,
            max_retries: 3,
            retry_timeout: ConfigDuration::from_secs(20),
        })
    }

    use crate::storage::conformance;

    /// The conformance suite in one test: one client, one prefix, one pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_a_real_s3_server() {
        let Some(s) = test_storage() else { return };
        let s: Arc<dyn Storage> = Arc::new(s);
        // Each case expects an empty store: give it its own prefix.
        let fresh = || -> Arc<dyn Storage> { Arc::new(test_storage().unwrap()) };
        conformance::put_get_round_trip_of_a_multi_piece_stream(&*s).await;
        conformance::range_get_reads_exactly_the_range(&*fresh()).await;
        conformance::put_overwrites(&*fresh()).await;
        conformance::delete_is_idempotent(&*fresh()).await;
        conformance::list_by_prefix(&*fresh()).await;
        conformance::list_paginates(&*fresh()).await;
        conformance::failed_input_stream_leaves_nothing_behind(&*fresh()).await;
        conformance::concurrent_puts_of_one_key_leave_one_intact_object(fresh()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multipart_puts_round_trip_and_failed_or_cancelled_ones_leave_nothing() {
        let Some(s) = test_storage() else { return };
        let before = requests::count(Op::AbortMultipart, true);
        conformance::large_objects(&s, PART_SIZE).await;
        let aborted = requests::count(Op::AbortMultipart, true);
        assert!(aborted > before, "the failed upload was aborted");
        conformance::cancelled_put_leaves_no_object(Arc::new(s), PART_SIZE).await;
        // The abort runs on the upload's own task: poll for it (bounded).
        for _ in 0..100 {
            if requests::count(Op::AbortMultipart, true) > aborted {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the cancelled upload was not aborted");
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_a_clear_error_after_retries() {
        let mut config = S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            max_retries: 2,
            retry_timeout: ConfigDuration::from_secs(5),
            ..test_config_or_dummy()
        };
        config.prefix = None;
        let s = S3Storage::new(&config).unwrap();
        let err = s.check().await.unwrap_err();
        assert!(
            matches!(err, StorageError::Remote { op: "check", .. }),
            "{err:?}"
        );
        let err = s
            .put_bytes(
                &ObjectKey::new("a").unwrap(),
                bytes::Bytes::from_static(b"x"),
            )
            .await
            .unwrap_err();
        let text = format!("{err}");
        assert!(text.contains("put") && text.contains('a'), "{text}");
    }

    fn test_config_or_dummy() -> S3Config {
        S3Config {
            bucket: "nowhere".into(),
            region: Some("us-east-1".into()),
            endpoint: None,
            prefix: None,
            path_style: None,
            credentials: Some(S3Credentials {
                access_key_id: Secret::new("id"),
                secret_access_key: Secret::new("secret"),
                session_token: None,
            }),
            max_requests: 4,
            max_retries: 0,
            retry_timeout: ConfigDuration::from_secs(1),
        }
    }
}
