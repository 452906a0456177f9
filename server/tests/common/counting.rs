//! A storage that counts the listings and reads asked of it and passes
//! every call on to a real backend: how a test shows that a periodic task
//! never lists, or how many requests a download costs.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use larder_shared::storage::{
    ByteStream, ObjectKey, ObjectMeta, ObjectMetaStream, Storage, StorageError,
};

/// A real backend, its `list` and `get` calls counted.
pub struct Counting {
    inner: Arc<dyn Storage>,
    lists: AtomicUsize,
    gets: AtomicUsize,
}

impl Counting {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Storage>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            lists: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
        })
    }

    /// How many listings were started.
    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    /// How many reads were started.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Storage for Counting {
    async fn put(&self, key: &ObjectKey, data: ByteStream) -> Result<u64, StorageError> {
        self.inner.put(key, data).await
    }

    async fn put_bytes(&self, key: &ObjectKey, data: Bytes) -> Result<u64, StorageError> {
        self.inner.put_bytes(key, data).await
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        self.inner.head(key).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }

    fn list(&self, prefix: &str) -> ObjectMetaStream {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix)
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.inner.check().await
    }

    async fn remove_incomplete(&self, max_age: Duration) -> Result<u64, StorageError> {
        self.inner.remove_incomplete(max_age).await
    }
}
