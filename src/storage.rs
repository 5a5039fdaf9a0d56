//! Where table files live: locations, globs and object stores.
//!
//! A table location is a file, a folder or a glob (`*`, `**`, `?`, `[..]`, `{a,b}`), on local disk
//! or behind a URL. DataFusion's listing only globs local paths without a scheme, and only in
//! the `glob` crate's dialect, so this module splits a location into a listing prefix and a
//! pattern itself, lists the prefix once, and matches with `globset` (the matcher ripgrep uses),
//! so every store globs the same way. It also wraps each object store in [`CountingStore`], which
//! counts requests and bytes fetched: the progress bar and `--stats` read those counters.
//!
//! Must not print or log secrets; must not interpret table data (the catalog and engine do):
//! it only hands out bytes.

use crate::config::{S3Settings, Secret};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use globset::{Glob, GlobMatcher};
#[cfg(target_os = "linux")]
use memmap2::Advice;
use memmap2::MmapOptions;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Characters that make a path segment a glob pattern.
const GLOB_CHARS: &[char] = &['*', '?', '[', '{'];

/// A parsed table location: the store it is in, the listing prefix, and an optional pattern
/// that files below the prefix must match.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// What the user wrote, for error messages.
    pub(crate) original: String,
    /// The store's URL, e.g. `file://` or `s3://bucket`.
    pub(crate) store_url: ObjectStoreUrl,
    /// The folder (or single file) to list, as a URL.
    pub(crate) base: Url,
    /// The glob, relative to `base`, if the location has one.
    pub(crate) pattern: Option<String>,
}

/// A location resolved to the files it names.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedLocation {
    pub(crate) location: Location,
    /// Matching files, sorted by path, hidden and `_`-prefixed files left out.
    pub(crate) files: Vec<ObjectMeta>,
}

impl Location {
    /// Parse what the user wrote. Local paths may be relative to the current directory.
    pub(crate) fn parse(text: &str) -> Result<Location> {
        if text.trim().is_empty() {
            return Err(Error::Usage("an empty table location".into()));
        }
        if let Some(rest) = text.strip_prefix("file://") {
            return Self::parse_local(text, rest);
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            return Self::parse_s3(text, rest);
        }
        if text.contains("://") {
            return Err(Error::Usage(format!(
                "location `{text}`: unknown scheme (local paths, file:// and s3:// are supported)"
            )));
        }
        Self::parse_local(text, text)
    }

    fn parse_s3(original: &str, rest: &str) -> Result<Location> {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!(
                "location `{original}`: no bucket name"
            )));
        }
        let (prefix, pattern) = split_glob(key);
        let store_url = ObjectStoreUrl::parse(format!("s3://{bucket}"))?;
        let mut base = Url::parse(&format!("s3://{bucket}/"))
            .map_err(|e| Error::Usage(format!("location `{original}`: {e}")))?;
        let as_folder = pattern.is_some() || prefix.is_empty() || prefix.ends_with('/');
        let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        {
            let mut path = base
                .path_segments_mut()
                .map_err(|()| Error::Usage(format!("location `{original}` is not a valid URL")))?;
            path.clear().extend(&segments);
            if as_folder && !segments.is_empty() {
                path.push("");
            }
        }
        Ok(Location {
            original: original.to_string(),
            store_url,
            base,
            pattern: pattern.map(str::to_string),
        })
    }

    /// The bucket of an `s3://` location.
    pub(crate) fn bucket(&self) -> Option<&str> {
        (self.base.scheme() == "s3")
            .then(|| self.base.host_str())
            .flatten()
    }

    /// The same location seen as a folder (for a key that turned out to be a prefix).
    pub(crate) fn as_folder(&self) -> Location {
        let mut folder = self.clone();
        if !folder.base.path().ends_with('/') {
            let path = format!("{}/", folder.base.path());
            folder.base.set_path(&path);
        }
        folder
    }

    fn parse_local(original: &str, path: &str) -> Result<Location> {
        let (prefix, pattern) = split_glob(path);
        let prefix = if prefix.is_empty() { "." } else { prefix };
        let absolute = std::path::absolute(prefix)
            .map_err(|e| Error::Usage(format!("location `{original}`: {e}")))?;
        let as_folder = pattern.is_some() || absolute.is_dir();
        let base = if as_folder {
            Url::from_directory_path(&absolute)
        } else {
            Url::from_file_path(&absolute)
        }
        .map_err(|()| Error::Usage(format!("location `{original}` is not a valid path")))?;
        Ok(Location {
            original: original.to_string(),
            store_url: ObjectStoreUrl::local_filesystem(),
            base,
            pattern: pattern.map(str::to_string),
        })
    }

    /// The listing prefix in the store's own path syntax.
    pub(crate) fn prefix(&self) -> Result<StorePath> {
        StorePath::from_url_path(self.base.path())
            .map_err(|e| Error::Usage(format!("location `{}`: {e}", self.original)))
    }

    /// Whether the location names a folder (or a glob) rather than one file.
    pub(crate) fn is_folder(&self) -> bool {
        self.base.path().ends_with('/')
    }

    /// The URL of one file of this location's store, for DataFusion's listing table.
    pub(crate) fn file_url(&self, path: &StorePath) -> Result<ListingTableUrl> {
        let mut url = self.base.clone();
        url.set_path("");
        url.path_segments_mut()
            .map_err(|()| Error::Internal(format!("`{}` cannot hold a path", self.base)))?
            .extend(path.parts().map(|part| part.as_ref().to_string()));
        ListingTableUrl::try_new(url, None).map_err(Error::from)
    }

    /// The location's folder as a DataFusion listing URL (for hive-partitioned tables, whose
    /// partition values DataFusion reads from the paths below it).
    pub(crate) fn folder_url(&self) -> Result<ListingTableUrl> {
        ListingTableUrl::try_new(self.base.clone(), None).map_err(Error::from)
    }
}

/// Split a path at the first segment holding a glob character: `("data/", "claims_*.csv")`.
pub(crate) fn split_glob(path: &str) -> (&str, Option<&str>) {
    let mut offset = 0;
    for segment in path.split_inclusive('/') {
        if segment.contains(GLOB_CHARS) {
            return (&path[..offset], Some(&path[offset..]));
        }
        offset += segment.len();
    }
    (path, None)
}

/// Build the matcher for a glob: `*` and `?` stay within one path segment, `**` crosses them.
fn glob_matcher(location: &Location, pattern: &str) -> Result<GlobMatcher> {
    Glob::new(pattern)
        .and_then(|_| {
            globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
        })
        .map(|glob| glob.compile_matcher())
        .map_err(|e| Error::Usage(format!("location `{}`: bad glob: {e}", location.original)))
}

/// Hidden files (`.name`) and markers (`_SUCCESS`) are never table data: temporary outputs and
/// manifests live beside the data.
fn is_hidden(relative: &str) -> bool {
    relative
        .split('/')
        .any(|segment| segment.starts_with('.') || segment.starts_with('_'))
}

/// List the files a location names. A single file is returned as is; a folder yields every
/// file below it (recursively); a glob yields the files below its prefix that match it.
/// An empty result is an error that names the location.
pub(crate) async fn resolve(
    store: &Arc<dyn ObjectStore>,
    location: &Location,
) -> Result<ResolvedLocation> {
    let mut location = location.clone();
    let prefix = location.prefix()?;
    let files = if location.is_folder() {
        list_matching(store, &location, &prefix).await?
    } else {
        match store.head(&prefix).await {
            Ok(meta) => vec![meta],
            // An object store has no folders: a key that is not an object may be a prefix.
            Err(object_store::Error::NotFound { .. }) if location.bucket().is_some() => {
                location = location.as_folder();
                list_matching(store, &location, &prefix).await?
            }
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            // Some S3-compatible servers answer HEAD on a "folder" with an error, not 404.
            Err(e) if location.bucket().is_some() => {
                let folder = location.as_folder();
                let files = list_matching(store, &folder, &prefix).await?;
                if files.is_empty() {
                    return Err(store_error(&location.original, e));
                }
                location = folder;
                files
            }
            Err(e) => return Err(store_error(&location.original, e)),
        }
    };
    if files.is_empty() {
        let what = if location.pattern.is_some() {
            "no file matches the glob"
        } else if location.is_folder() {
            "the folder holds no files"
        } else {
            "no such file"
        };
        return Err(Error::Input(format!("{what} `{}`", location.original)));
    }
    Ok(ResolvedLocation { location, files })
}

async fn list_matching(
    store: &Arc<dyn ObjectStore>,
    location: &Location,
    prefix: &StorePath,
) -> Result<Vec<ObjectMeta>> {
    let matcher = match &location.pattern {
        Some(pattern) => Some(glob_matcher(location, pattern)?),
        None => None,
    };
    let prefix_text = prefix.as_ref();
    let listed: Vec<ObjectMeta> = store
        .list(Some(prefix))
        .map_err(|e| store_error(&location.original, e))
        .try_collect()
        .await?;
    let mut files: Vec<ObjectMeta> = listed
        .into_iter()
        .filter(|meta| {
            let relative = relative_to(meta.location.as_ref(), prefix_text);
            !is_hidden(relative) && matcher.as_ref().is_none_or(|glob| glob.is_match(relative))
        })
        .collect();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

fn relative_to<'a>(path: &'a str, prefix: &str) -> &'a str {
    let stripped = path.strip_prefix(prefix).unwrap_or(path);
    stripped.strip_prefix('/').unwrap_or(stripped)
}

/// Describe an object store error with the location it concerns, classified.
pub(crate) fn store_error(location: &str, error: object_store::Error) -> Error {
    let message = crate::error::one_line(&error.to_string());
    match error {
        object_store::Error::NotFound { .. } => Error::Input(format!("`{location}`: {message}")),
        object_store::Error::Generic { store, .. } if store == "LocalFileSystem" => {
            Error::Input(format!("`{location}`: {message}"))
        }
        _ => Error::Storage(format!("`{location}`: {message}")),
    }
}

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
    /// Set for the local file system: byte ranges are then mapped, not copied ([`mapped_ranges`]).
    local: Option<Arc<LocalFileSystem>>,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, counters: Arc<StoreCounters>) -> Self {
        Self {
            inner,
            counters,
            local: None,
        }
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
        let mut result = self.inner.get_opts(location, options).await?;
        let bytes = if head {
            0
        } else {
            result.range.end - result.range.start
        };
        let mapped = self.local.is_some() && !head && bytes >= MIN_MAPPED_GET;
        result.payload = match result.payload {
            GetResultPayload::File(file, _) if mapped => {
                GetResultPayload::Stream(mapped_stream(file, result.range.clone()))
            }
            payload => payload,
        };
        self.count_get(bytes);
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &StorePath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let mapped = match &self.local {
            Some(local) => {
                let path = local.path_to_filesystem(location)?;
                let wanted = ranges.to_vec();
                tokio::task::spawn_blocking(move || mapped_ranges(&path, &wanted))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let result = match mapped {
            Some(result) => result,
            None => self.inner.get_ranges(location, ranges).await?,
        };
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

/// The local file system store, counted, its byte ranges mapped.
pub(crate) fn local_store(counters: Arc<StoreCounters>) -> Arc<dyn ObjectStore> {
    let local = Arc::new(LocalFileSystem::new());
    Arc::new(CountingStore {
        inner: local.clone(),
        counters,
        local: Some(local),
    })
}

/// The byte ranges of a local file (Parquet column chunks, mostly) as views of one read-only
/// memory map of the span they cover, populated up front, or `None` to read them the usual
/// way (empty or out-of-bounds ranges, a map the OS refuses: the caller's `pread` path then
/// reports the error or copes).
///
/// Why: object_store copies every range out of the page cache into a fresh buffer, and the
/// Parquet decoder then copies it again while decoding; on H2O 1e7 Parquet that kernel copy
/// was 8 % of q6's CPU and 19 % of q4's. A map hands the decoder the page cache itself.
/// Only the span the ranges cover is mapped (for a Parquet scan, at most one row group), so an
/// address-space cap sees little more than the copy would take; a map it refuses falls back.
/// A file truncated while mapped raises SIGBUS, which `signal` turns into a clean exit.
fn mapped_ranges(path: &std::path::Path, ranges: &[Range<u64>]) -> Option<Vec<Bytes>> {
    let start = ranges.iter().map(|r| r.start).min()?;
    let end = ranges.iter().map(|r| r.end).max()?;
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    if end > size || ranges.iter().any(|r| r.start >= r.end) {
        return None;
    }
    let (whole, offset) = map_span(&file, start..end, ranges)?;
    Some(ranges.iter().map(|r| view(&whole, offset, r)).collect())
}

/// The bytes of file `range` within a map of the file that starts at file offset `offset`.
fn view(map: &Bytes, offset: u64, range: &Range<u64>) -> Bytes {
    map.slice((range.start - offset) as usize..(range.end - offset) as usize)
}

/// Smallest `get_opts` range served from a map: below it (Parquet footers, schema probes) one
/// `pread` costs less than setting up and tearing down a map.
const MIN_MAPPED_GET: u64 = 256 * 1024;

/// Bytes per map a streamed local read makes. Each window is its own map, unmapped once every
/// slice of it is dropped, so a scan holds one or two windows per partition, not its whole file
/// range (a file's pages that a map has touched count in the process's RSS until it goes).
const MAPPED_WINDOW: u64 = 4 * 1024 * 1024;

/// Bytes per slice of a window the stream yields: DataFusion's CSV and JSON readers pull one
/// more chunk from their input for every batch they emit, so chunks must stay smaller than a
/// batch's bytes or the chunks queued ahead of the decoder grow with the file (4 MiB chunks
/// held ~110 MiB of a CSV scan's pages). 8 KiB is what DataFusion itself reads per call.
const MAPPED_SLICE: usize = 8 * 1024;

/// A ranged read of a local file (CSV and JSON partitions, Arrow record batches, large Parquet
/// reads) as a stream of slices of mapped windows, in place of object_store's open file,
/// which DataFusion's CSV and JSON readers consume in 8 KiB `read` calls, each copied out of
/// the page cache into a fresh buffer (the kernel copy alone was 7 % of CSV q4's CPU). The
/// window after the current one is handed to the kernel's readahead, so a file that is not in
/// the page cache is read ahead of the decoder as `read` would be. A window the OS will not
/// map is read with `pread` instead.
fn mapped_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let file = Arc::new(file);
    let end = range.end;
    futures::stream::try_unfold(
        (range.start, Bytes::new()),
        move |(mut next, mut window)| {
            let file = file.clone();
            async move {
                if window.is_empty() {
                    if next >= end {
                        return Ok(None);
                    }
                    let stop = end.min(next.saturating_add(MAPPED_WINDOW));
                    let span = next..stop;
                    let ahead = stop..end.min(stop.saturating_add(MAPPED_WINDOW));
                    window = tokio::task::spawn_blocking(move || {
                        read_ahead(&file, ahead);
                        read_span(&file, span)
                    })
                    .await
                    .map_err(|e| local_error(std::io::Error::other(e)))??;
                    next = stop;
                }
                let slice = window.split_to(window.len().min(MAPPED_SLICE));
                Ok(Some((slice, (next, window))))
            }
        },
    )
    .boxed()
}

/// Ask the kernel to start reading `span` of `file` into the page cache (no wait).
fn read_ahead(file: &std::fs::File, span: Range<u64>) {
    #[cfg(target_os = "linux")]
    if span.start < span.end {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(length)) = (
            libc::off_t::try_from(span.start),
            libc::off_t::try_from(span.end - span.start),
        ) else {
            return;
        };
        // SAFETY: advice on an open descriptor; failure only means no readahead.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, length, libc::POSIX_FADV_WILLNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, span);
}

/// `span` of `file` as one mapped view, or copied with `pread` if the OS refuses the map.
fn read_span(file: &std::fs::File, span: Range<u64>) -> object_store::Result<Bytes> {
    if let Some((whole, offset)) = map_span(file, span.clone(), std::slice::from_ref(&span)) {
        return Ok(view(&whole, offset, &span));
    }
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0; (span.end - span.start) as usize];
    file.read_exact_at(&mut buffer, span.start)
        .map_err(local_error)?;
    Ok(Bytes::from(buffer))
}

fn local_error(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    }
}

/// A read-only map of `file` from the page boundary at or below `span.start` to `span.end`,
/// with the pages of each of `populate` faulted in up front, and the file offset the map
/// starts at; `None` if the span is empty or the OS refuses the map.
fn map_span(
    file: &std::fs::File,
    span: Range<u64>,
    populate: &[Range<u64>],
) -> Option<(Bytes, u64)> {
    if span.start >= span.end {
        return None;
    }
    let offset = span.start - span.start % page_size();
    let length = usize::try_from(span.end - offset).ok()?;
    crate::process::signal::catch_truncated_maps();
    // SAFETY: the map is read-only and private to this process; the one way it can fail later
    // (the file shrinking under it) raises SIGBUS, which `signal::catch_truncated_maps` handles.
    let map = unsafe { MmapOptions::new().offset(offset).len(length).map(file) }.ok()?;
    #[cfg(target_os = "linux")]
    for range in populate {
        // Fault the pages in with one call per range instead of one fault per 16 pages;
        // refused on kernels before 5.14, which then fault them in as they are read.
        let _ = map.advise_range(
            Advice::PopulateRead,
            (range.start - offset) as usize,
            (range.end - range.start) as usize,
        );
    }
    Some((Bytes::from_owner(map), offset))
}

/// The memory page size, which a map's file offset must be a multiple of.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Keep only the files of a resolved location (for callers that need plain metadata).
pub(crate) fn total_bytes(files: &[ObjectMeta]) -> u64 {
    files.iter().map(|meta| meta.size).sum()
}

/// Request timeout, connect timeout, retries and the bound on retrying, unless configured.
const S3_TIMEOUT: Duration = Duration::from_secs(30);
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const S3_MAX_RETRIES: usize = 4;
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 store for one bucket. Settings come from `settings` (table over `[storage.s3]`), then an
/// AWS profile, then the standard `AWS_*` variables. A region is always set, so nothing ever asks
/// AWS where a bucket lives (offline, that would hang).
pub(crate) fn s3_store(
    bucket: &str,
    settings: &S3Settings,
    counters: Arc<StoreCounters>,
) -> Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let profile_name = settings
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok());
    let profile = match &profile_name {
        Some(name) => aws_profile(name)?,
        None => AwsProfile::default(),
    };
    let seconds =
        |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
    let endpoint = settings.endpoint.clone().or(profile.endpoint);
    let allow_http = settings.allow_http.unwrap_or_else(|| {
        endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    });
    builder = builder
        .with_client_options(
            ClientOptions::new()
                .with_timeout(seconds(settings.timeout_seconds, S3_TIMEOUT))
                .with_connect_timeout(seconds(
                    settings.connect_timeout_seconds,
                    S3_CONNECT_TIMEOUT,
                ))
                .with_allow_http(allow_http),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: settings.max_retries.unwrap_or(S3_MAX_RETRIES),
            retry_timeout: seconds(settings.retry_timeout_seconds, S3_RETRY_TIMEOUT),
        })
        .with_allow_http(allow_http);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let region = settings
        .region
        .clone()
        .or(profile.region)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder.with_region(region);
    if let Some(key) = settings.access_key_id.clone().or(profile.access_key_id) {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = settings
        .secret_access_key
        .clone()
        .or(profile.secret_access_key)
    {
        builder = builder.with_secret_access_key(secret.expose());
    }
    if let Some(token) = settings.session_token.clone().or(profile.session_token) {
        builder = builder.with_token(token.expose());
    }
    if let Some(virtual_hosted) = settings.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    if settings.unsigned == Some(true) {
        builder = builder.with_skip_signature(true);
    }
    // The builder's errors name a setting, never its value.
    let store = builder.build().map_err(|e| {
        Error::Config(format!(
            "S3 settings for bucket `{bucket}`: {}",
            crate::error::one_line(&e.to_string())
        ))
    })?;
    Ok(Arc::new(CountingStore::new(Arc::new(store), counters)))
}

/// What an AWS profile says (`~/.aws/credentials` and `~/.aws/config`).
#[derive(Default)]
struct AwsProfile {
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
    region: Option<String>,
    endpoint: Option<String>,
}

/// Read a named profile. The files are INI; the handful of keys Spillway needs do not justify
/// the AWS SDK (object_store reads no profiles), so they are read by hand.
fn aws_profile(name: &str) -> Result<AwsProfile> {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let file = |variable: &str, default: &str| {
        std::env::var_os(variable)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| home.join(default))
    };
    let credentials_path = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_path = file("AWS_CONFIG_FILE", ".aws/config");
    let credentials = std::fs::read_to_string(&credentials_path).unwrap_or_default();
    let config = std::fs::read_to_string(&config_path).unwrap_or_default();
    let config_section = if name == "default" {
        name.to_string()
    } else {
        format!("profile {name}")
    };
    let pairs: Vec<(String, String)> = ini_section(&credentials, name)
        .into_iter()
        .chain(ini_section(&config, &config_section))
        .collect();
    if pairs.is_empty() {
        return Err(Error::Config(format!(
            "AWS profile `{name}` is in neither {} nor {}",
            credentials_path.display(),
            config_path.display()
        )));
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Ok(AwsProfile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key").map(Secret::new),
        session_token: get("aws_session_token").map(Secret::new),
        region: get("region"),
        endpoint: get("endpoint_url"),
    })
}

/// The `key = value` pairs of one `[section]` of an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == section;
        } else if inside {
            if let Some((key, value)) = line.split_once('=') {
                pairs.push((key.trim().to_string(), value.trim().to_string()));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ranges_hold_the_same_bytes_as_the_file_across_page_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let ranges = [5000..5001, 4090..8200, 12000..12388];
        let mapped = mapped_ranges(&path, &ranges).expect("mapped");
        for (range, bytes) in ranges.iter().zip(&mapped) {
            assert_eq!(
                &bytes[..],
                &content[range.start as usize..range.end as usize]
            );
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_file_truncated_under_its_map_ends_the_process_with_the_input_code_not_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let mapped = mapped_ranges(&path, &[0..64 * 1024]).expect("mapped");
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let last = mapped[0].as_ptr().wrapping_add(60 * 1024);
        // SAFETY: the child only truncates through an open descriptor and reads one byte (no
        // allocation after fork); the parent only waits for it.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            unsafe {
                libc::ftruncate(fd, 0);
                let byte = std::ptr::read_volatile(last);
                libc::_exit(i32::from(byte)); // not reached: the read raises SIGBUS
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status),
            "child died by signal {}",
            libc::WTERMSIG(status)
        );
        assert_eq!(libc::WEXITSTATUS(status), 5);
        drop(mapped);
    }

    #[tokio::test]
    async fn a_large_ranged_local_read_streams_mapped_views_with_the_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        let size = 2 * MAPPED_WINDOW + 12345;
        let content: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let store = local_store(Arc::new(StoreCounters::default()));
        let location = StorePath::from_filesystem_path(&path).unwrap();
        let range = 4097..size - 3;
        let options = GetOptions {
            range: Some(range.clone().into()),
            ..Default::default()
        };
        let result = store.get_opts(&location, options).await.unwrap();
        assert!(matches!(result.payload, GetResultPayload::Stream(_)));
        let chunks: Vec<Bytes> = result.into_stream().try_collect().await.unwrap();
        assert!(chunks.iter().all(|chunk| chunk.len() <= MAPPED_SLICE));
        assert_eq!(
            chunks.concat(),
            &content[range.start as usize..range.end as usize]
        );
    }

    #[tokio::test]
    async fn small_or_head_local_reads_keep_the_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        std::fs::write(&path, vec![3u8; 1000]).unwrap();
        let store = local_store(Arc::new(StoreCounters::default()));
        let location = StorePath::from_filesystem_path(&path).unwrap();
        let result = store
            .get_opts(&location, GetOptions::default())
            .await
            .unwrap();
        assert!(matches!(result.payload, GetResultPayload::File(..)));
        assert_eq!(
            store.get_range(&location, 10..20).await.unwrap(),
            vec![3u8; 10]
        );
    }

    #[test]
    fn ranges_past_the_end_or_empty_are_left_to_the_ordinary_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, [1u8; 100]).unwrap();
        assert!(mapped_ranges(&path, &[10..101]).is_none());
        assert!(mapped_ranges(&path, &[10..10]).is_none());
        assert!(mapped_ranges(&path, &[]).is_none());
        assert!(mapped_ranges(&dir.path().join("missing"), &[0..1]).is_none());
    }

    #[test]
    fn globs_split_at_the_first_segment_with_a_glob_character() {
        assert_eq!(
            split_glob("data/claims_*.csv"),
            ("data/", Some("claims_*.csv"))
        );
        assert_eq!(split_glob("/a/b/**/x?.csv"), ("/a/b/", Some("**/x?.csv")));
        assert_eq!(split_glob("/a/{x,y}/f.csv"), ("/a/", Some("{x,y}/f.csv")));
        assert_eq!(split_glob("*.parquet"), ("", Some("*.parquet")));
        assert_eq!(split_glob("/a/b.csv"), ("/a/b.csv", None));
    }

    #[test]
    fn s3_locations_split_bucket_prefix_and_glob() {
        let location = Location::parse("s3://claims/2024/part-*.csv").unwrap();
        assert_eq!(location.bucket(), Some("claims"));
        assert_eq!(location.prefix().unwrap().as_ref(), "2024");
        assert_eq!(location.pattern.as_deref(), Some("part-*.csv"));
        assert!(location.is_folder());
        let file = Location::parse("s3://claims/dir with space/naïve.csv").unwrap();
        assert_eq!(file.prefix().unwrap().as_ref(), "dir with space/naïve.csv");
        assert!(!file.is_folder());
        assert!(Location::parse("s3:///x.csv").is_err());
    }

    #[test]
    fn profiles_are_read_from_ini_sections() {
        let text = "[default]\nregion = eu-west-1\n\n[profile ci]\n# comment\nregion = us-east-2\nendpoint_url = http://127.0.0.1:9000\n";
        let expected = vec![
            ("region".to_string(), "us-east-2".to_string()),
            (
                "endpoint_url".to_string(),
                "http://127.0.0.1:9000".to_string(),
            ),
        ];
        assert_eq!(ini_section(text, "profile ci"), expected);
        assert_eq!(ini_section(text, "default").len(), 1);
    }

    #[test]
    fn hidden_and_marker_files_are_not_data() {
        assert!(is_hidden(".claims.csv.tmp"));
        assert!(is_hidden("year=2024/_SUCCESS"));
        assert!(!is_hidden("year=2024/part-0.parquet"));
    }

    #[tokio::test]
    async fn a_glob_lists_only_matching_files_at_the_right_depth() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "a.csv",
            "b.csv",
            "c.json",
            "sub/d.csv",
            "sub/deep/e.csv",
            ".hidden.csv",
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x\n").unwrap();
        }
        let store = local_store(Arc::default());
        let names = |pattern: &str| {
            let location = Location::parse(&format!("{}/{pattern}", dir.path().display())).unwrap();
            let store = store.clone();
            async move {
                let resolved = resolve(&store, &location).await?;
                Ok::<_, Error>(
                    resolved
                        .files
                        .iter()
                        .map(|m| m.location.filename().unwrap().to_string())
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(names("*.csv").await.unwrap(), ["a.csv", "b.csv"]);
        assert_eq!(
            names("**/*.csv").await.unwrap(),
            ["a.csv", "b.csv", "d.csv", "e.csv"]
        );
        assert_eq!(names("{a,c}.*").await.unwrap(), ["a.csv", "c.json"]);
        assert_eq!(names("sub/?.csv").await.unwrap(), ["d.csv"]);
        let error = names("*.parquet").await.unwrap_err();
        assert!(error.to_string().contains("*.parquet"), "{error}");
        assert_eq!(error.exit_code(), crate::error::exit_code::INPUT);
    }
}
