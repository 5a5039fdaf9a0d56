//! The local file system as an object store whose large reads are memory maps, not copies.
//!
//! object_store's `LocalFileSystem` copies every byte it reads out of the page cache into a
//! fresh buffer, and DataFusion's decoders then copy it again. [`MappedLocalStore`] wraps it and
//! answers the two read paths a scan uses with views of read-only maps instead: `get_ranges`
//! (Parquet column chunks) with one map of the span the ranges cover, and large `get_opts` reads
//! (CSV and JSON partitions) with a stream of slices of mapped windows. Everything else, and any
//! read the OS will not map, is the wrapped store's. A file truncated while mapped raises SIGBUS,
//! which `process::signal` turns into a clean exit. Must not count anything (`counting` does) or
//! change what bytes a read returns.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
#[cfg(target_os = "linux")]
use memmap2::Advice;
use memmap2::MmapOptions;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The local file system, with large reads served from memory maps instead of copies.
#[derive(Debug)]
pub(crate) struct MappedLocalStore {
    inner: LocalFileSystem,
}

impl MappedLocalStore {
    pub(crate) fn new() -> Self {
        Self {
            inner: LocalFileSystem::new(),
        }
    }
}

impl fmt::Display for MappedLocalStore {
    // The wrapped store's name: a map is how bytes are read, not a different store.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for MappedLocalStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let mut result = self.inner.get_opts(location, options).await?;
        let mapped = !head && result.range.end - result.range.start >= MIN_MAPPED_GET;
        result.payload = match result.payload {
            GetResultPayload::File(file, _) if mapped => {
                GetResultPayload::Stream(mapped_stream(file, result.range.clone()))
            }
            payload => payload,
        };
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &StorePath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let path = self.inner.path_to_filesystem(location)?;
        let wanted = ranges.to_vec();
        let mapped = tokio::task::spawn_blocking(move || mapped_ranges(&path, &wanted))
            .await
            .ok()
            .flatten();
        match mapped {
            Some(result) => Ok(result),
            None => self.inner.get_ranges(location, ranges).await,
        }
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
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

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
        let store = MappedLocalStore::new();
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
        let store = MappedLocalStore::new();
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
}
