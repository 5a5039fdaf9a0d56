//! Request and byte counters over any object store.
//!
//! [`CountingStore`] wraps a store and counts the requests made to it and the bytes they fetch,
//! in [`StoreCounters`] shared by every store of one engine: the progress bar and `--stats` read
//! them. It must do nothing else: it changes no request and no result (the local fast path is
//! `local`'s, S3 settings are `s3`'s).

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of what the stores were asked for, shared by every store of one engine.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    pub(crate) get_requests: AtomicU64,
    pub(crate) bytes_fetched: AtomicU64,
    pub(crate) list_requests: AtomicU64,
    pub(crate) put_requests: AtomicU64,
}

impl StoreCounters {
    /// Total bytes fetched so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes_fetched.load(Ordering::Relaxed)
    }

    /// Requests of every kind so far.
    pub(crate) fn requests(&self) -> u64 {
        self.get_requests.load(Ordering::Relaxed)
            + self.list_requests.load(Ordering::Relaxed)
            + self.put_requests.load(Ordering::Relaxed)
    }
}

/// An object store that counts the requests made to the one it wraps and the bytes they fetch.
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<StoreCounters>,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, counters: Arc<StoreCounters>) -> Self {
        Self { inner, counters }
    }

    fn count_get(&self, bytes: u64) {
        self.counters.get_requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_fetched
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.counters.put_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.counters.put_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        let bytes = if head {
            0
        } else {
            result.range.end - result.range.start
        };
        self.count_get(bytes);
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &StorePath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let result = self.inner.get_ranges(location, ranges).await?;
        self.count_get(result.iter().map(|bytes| bytes.len() as u64).sum());
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counters.list_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counters.list_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.counters.list_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
