//! Streaming result writers and where they write to.
//!
//! A [`Sink`] runs its format writer on its own thread and is fed `RecordBatch`es through a
//! bounded channel: the query never waits on the terminal or the disk for more than two batches,
//! and the result is never held in memory whole (the table format keeps at most the rows it
//! shows). A file destination is written under a hidden temporary name in the target folder and
//! renamed over the target only when the last byte is written and synced, so a failed, cancelled
//! or killed run leaves either the previous file or nothing. Must not buffer a whole result.
//! Excel workbooks are written by `xlsx`.

pub(crate) mod xlsx;

use crate::error::{Error, Result};
use crate::storage::{ObjectTarget, StoreKind};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression as ParquetCompression;
use datafusion::parquet::file::properties::WriterProperties;
use object_store::{ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Batches in flight between the query and the writer thread.
const CHANNEL_DEPTH: usize = 2;

/// Rows per Parquet row group: small enough that the writer's buffered row group stays a few
/// tens of MiB (memory the pool does not see), large enough for good compression and pruning.
const PARQUET_ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows the table format shows by default.
pub(crate) const DEFAULT_TABLE_ROWS: usize = 40;

/// A result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputFormat {
    Table,
    Csv,
    Tsv,
    Json,
    NdJson,
    Parquet,
    Arrow,
    /// An Excel workbook (see `xlsx`).
    Xlsx,
}

impl OutputFormat {
    /// Parse a `--format` value.
    pub(crate) fn parse(text: &str) -> std::result::Result<OutputFormat, String> {
        let name = text.trim().to_ascii_lowercase();
        match name.as_str() {
            "table" => Ok(OutputFormat::Table),
            other => Self::by_name(other).ok_or_else(|| {
                format!("unknown format `{other}` (expected table, csv, tsv, json, ndjson, parquet, arrow or xlsx)")
            }),
        }
    }

    /// The format a file name's extension asks for (`.txt` holds the human table).
    pub(crate) fn from_path(path: &Path) -> Option<OutputFormat> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "txt" => Some(OutputFormat::Table),
            other => Self::by_name(other),
        }
    }

    /// The file formats, by the names that are both format names and file extensions.
    fn by_name(name: &str) -> Option<OutputFormat> {
        Some(match name {
            "csv" => OutputFormat::Csv,
            "tsv" => OutputFormat::Tsv,
            "json" => OutputFormat::Json,
            "ndjson" | "jsonl" => OutputFormat::NdJson,
            "parquet" => OutputFormat::Parquet,
            "arrow" | "ipc" | "feather" => OutputFormat::Arrow,
            "xlsx" => OutputFormat::Xlsx,
            _ => return None,
        })
    }

    /// The format to use when none was asked for: a table for a person at a terminal, CSV for
    /// a pipe or file.
    pub(crate) fn default_for_stdout() -> OutputFormat {
        if io::stdout().is_terminal() {
            OutputFormat::Table
        } else {
            OutputFormat::Csv
        }
    }
}

/// Where results go.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Destination {
    Stdout,
    /// The terminal through a pager command (the shell's long results), run by `sh -c`.
    Pager(String),
    File(PathBuf),
    /// An object URL such as `s3://bucket/key.parquet`.
    Object(String),
}

/// What to write and where.
#[derive(Debug, Clone)]
pub(crate) struct OutputSpec {
    pub(crate) format: OutputFormat,
    pub(crate) destination: Destination,
    /// Rows the table format shows; 0 shows all.
    pub(crate) max_table_rows: usize,
    /// The output is recorded in a report manifest: its SHA-256 is computed, and a file is
    /// synced to disk before it is renamed into place, so a manifest never names bytes that a
    /// power loss could still take. Off for ad-hoc query outputs, which still appear only
    /// complete (temporary name, then rename): hashing and syncing H2O q10's 760 MB of Arrow
    /// cost 0.9 s of a 3 s query.
    pub(crate) manifest: bool,
    /// Parquet modular encryption (`--encrypt`): footer and every column under this AES key.
    pub(crate) encryption: Option<EncryptionKey>,
    /// A report's run, told on the `About` sheet of an Excel output (other formats ignore it).
    pub(crate) about: Option<xlsx::WorkbookAbout>,
}

/// The AES key of an encrypted Parquet output. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub(crate) struct EncryptionKey(pub(crate) Vec<u8>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}-bit key>", self.0.len() * 8)
    }
}

/// What a finished sink wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputSummary {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    /// The reader went away (a closed pipe): writing stopped early, which is not an error.
    pub(crate) reader_gone: bool,
    /// SHA-256 of the bytes written, in hex; empty unless [`OutputSpec::manifest`] asked for it.
    pub(crate) sha256: String,
}

enum Message {
    Batch(RecordBatch),
    Finish,
}

/// A writer thread fed with batches. Dropped without [`Sink::finish`], it discards its output.
pub(crate) struct Sink {
    sender: Option<mpsc::Sender<Message>>,
    worker: Option<std::thread::JoinHandle<Result<OutputSummary>>>,
}

impl Sink {
    /// Open the destination now (so an unwritable path fails before the query runs) and start
    /// the writer thread.
    pub(crate) async fn open(
        spec: &OutputSpec,
        schema: SchemaRef,
        object: Option<ObjectTarget>,
    ) -> Result<Sink> {
        let target = match (&spec.destination, object) {
            (Destination::Object(url), Some(object)) if object.kind == StoreKind::Http => {
                Target::Spooled(SpooledUpload::start(url, object)?)
            }
            (Destination::Object(url), Some(object)) => {
                Target::Object(ObjectUpload::start(url, object).await?)
            }
            (Destination::Object(url), None) => {
                return Err(Error::Internal(format!("no store resolved for {url}")));
            }
            (destination, _) => Target::open(destination)?,
        };
        let reader_gone = ReaderGone::default();
        let writer = FormatWriter::new(spec, schema, target, reader_gone.clone())?;
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let worker = std::thread::Builder::new()
            .name("spillway-output".into())
            .spawn(move || run_writer(writer, reader_gone, receiver))
            .map_err(|e| Error::Internal(format!("cannot start the output thread: {e}")))?;
        Ok(Sink {
            sender: Some(sender),
            worker: Some(worker),
        })
    }

    /// Hand a batch to the writer. Returns `Ok(false)` when the writer has stopped taking
    /// batches (its reader went away, or it failed: [`Sink::finish`] tells which).
    pub(crate) async fn write(&mut self, batch: RecordBatch) -> Result<bool> {
        let Some(sender) = &self.sender else {
            return Ok(false);
        };
        Ok(sender.send(Message::Batch(batch)).await.is_ok())
    }

    /// Finish writing, publish the output, and report what was written.
    pub(crate) async fn finish(mut self) -> Result<OutputSummary> {
        if let Some(sender) = self.sender.take() {
            // A closed channel means the writer already stopped; its result says why.
            let _ = sender.send(Message::Finish).await;
        }
        let worker = self.worker.take();
        tokio::task::spawn_blocking(move || join_worker(worker))
            .await
            .map_err(|e| Error::Internal(format!("output thread: {e}")))?
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Closing the channel without `Finish` makes the writer discard its temporary file;
        // wait for that so nothing is left behind when the process exits.
        self.sender.take();
        let _ = join_worker(self.worker.take());
    }
}

fn join_worker(
    worker: Option<std::thread::JoinHandle<Result<OutputSummary>>>,
) -> Result<OutputSummary> {
    match worker {
        Some(handle) => handle
            .join()
            .map_err(|_| Error::Internal("the output thread panicked".into()))?,
        None => Ok(OutputSummary::default()),
    }
}

fn run_writer(
    mut writer: FormatWriter,
    reader_gone: ReaderGone,
    mut receiver: mpsc::Receiver<Message>,
) -> Result<OutputSummary> {
    let mut rows = 0u64;
    // A closed pipe ends the output early, as `head` expects of a Unix filter: not an error.
    let stopped = |rows: u64| OutputSummary {
        rows,
        reader_gone: true,
        ..OutputSummary::default()
    };
    while let Some(message) = receiver.blocking_recv() {
        match message {
            Message::Batch(batch) => {
                rows += batch.num_rows() as u64;
                match writer.write(&batch).map_err(|e| reader_gone.classify(e)) {
                    Ok(()) => {}
                    Err(WriteError::ReaderGone) => return Ok(stopped(rows)),
                    Err(WriteError::Failed(error)) => return Err(error),
                }
            }
            Message::Finish => {
                return match writer.close().map_err(|e| reader_gone.classify(e)) {
                    Ok((bytes, sha256)) => Ok(OutputSummary {
                        rows,
                        bytes,
                        reader_gone: false,
                        sha256,
                    }),
                    Err(WriteError::ReaderGone) => Ok(stopped(rows)),
                    Err(WriteError::Failed(error)) => Err(error),
                };
            }
        }
    }
    // The channel closed without `Finish`: cancelled. Dropping the writer drops the temporary
    // file, which deletes it.
    Err(Error::Interrupted)
}

/// Publish a small, complete piece of bytes (a report's manifest) so that a reader sees the
/// previous version or nothing until all of it is there: a file is written under a hidden
/// temporary name beside the target, synced and renamed over it; an object is put in one
/// request, which S3 makes visible only once the upload is complete. `object` is the store an
/// `Object` destination resolves to, as for [`Sink::open`].
pub(crate) async fn publish_bytes(
    destination: &Destination,
    object: Option<ObjectTarget>,
    bytes: Vec<u8>,
) -> Result<()> {
    match (destination, object) {
        (Destination::Object(url), Some(object)) => {
            object
                .store
                .put(&object.path, bytes.into())
                .await
                .map_err(|e| crate::storage::store_error(url, e))?;
            Ok(())
        }
        (Destination::Object(url), None) => {
            Err(Error::Internal(format!("no store resolved for {url}")))
        }
        (Destination::Stdout | Destination::Pager(_), _) => Err(Error::Internal(
            "bytes are published to a file or an object, not the terminal".into(),
        )),
        (Destination::File(path), _) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || publish_file(&path, &bytes))
                .await
                .map_err(|e| Error::Internal(format!("publishing thread: {e}")))?
        }
    }
}

/// Where a temporary file beside `path` goes, and the name it is derived from: a rename is
/// only atomic within one folder.
fn folder_and_name(path: &Path) -> (&Path, &str) {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    (folder, name)
}

/// The local half of [`publish_bytes`].
fn publish_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed =
        |e: &dyn std::fmt::Display| Error::Output(format!("cannot write {}: {e}", path.display()));
    let (folder, name) = folder_and_name(path);
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".spillway-tmp")
        .tempfile_in(folder)
        .map_err(|e| failed(&e))?;
    temp.write_all(bytes).map_err(|e| failed(&e))?;
    temp.as_file().sync_all().map_err(|e| failed(&e))?;
    temp.persist(path).map_err(|e| failed(&e.error))?;
    Ok(())
}

/// Print one small batch (a description, a profile) to stdout in `format`.
pub(crate) async fn print_batch(batch: RecordBatch, format: OutputFormat) -> Result<()> {
    let spec = OutputSpec {
        format,
        destination: Destination::Stdout,
        max_table_rows: 0,
        manifest: false,
        encryption: None,
        about: None,
    };
    let mut sink = Sink::open(&spec, batch.schema(), None).await?;
    sink.write(batch).await?;
    sink.finish().await.map(|_| ())
}

#[cfg(test)]
mod publish_bytes_tests {
    use super::*;

    #[tokio::test]
    async fn a_file_is_replaced_whole_and_no_temporary_file_is_left() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("_SUCCESS-out.csv.json");
        std::fs::write(&path, "old\n").unwrap();
        publish_bytes(
            &Destination::File(path.clone()),
            None,
            b"{\"rows\": 3}\n".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"rows\": 3}\n");
        let names: Vec<String> = std::fs::read_dir(folder.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["_SUCCESS-out.csv.json"]);
    }

    #[tokio::test]
    async fn an_unwritable_folder_is_an_output_error_naming_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("missing/m.json");
        match publish_bytes(&Destination::File(path.clone()), None, b"x".to_vec()).await {
            Err(Error::Output(message)) => assert!(
                message.starts_with(&format!("cannot write {}: ", path.display())),
                "{message}"
            ),
            other => panic!("expected an output error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_object_is_put_whole() {
        let store = std::sync::Arc::new(object_store::memory::InMemory::new());
        let target = ObjectTarget {
            store: store.clone(),
            path: object_store::path::Path::from("r/_SUCCESS-o.csv.json"),
            kind: crate::storage::StoreKind::S3,
        };
        let url = "s3://b/r/_SUCCESS-o.csv.json".to_string();
        publish_bytes(&Destination::Object(url), Some(target), b"done\n".to_vec())
            .await
            .unwrap();
        let got = store
            .get(&object_store::path::Path::from("r/_SUCCESS-o.csv.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], b"done\n");
    }
}

/// A write failure, with a closed pipe told apart from real errors.
enum WriteError {
    ReaderGone,
    Failed(Error),
}

/// Whether a write found the reader gone. The format writers keep only the text of an I/O
/// error (arrow's CSV writer reports `Csv error: Broken pipe`, Parquet's its own error), so the
/// closed pipe is noticed where the bytes leave, in [`Counted`], and remembered here.
#[derive(Clone, Default)]
struct ReaderGone(Arc<AtomicBool>);

impl ReaderGone {
    fn notice(&self, error: &io::Error) {
        if error.kind() == io::ErrorKind::BrokenPipe {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// A failure caused by the closed pipe, whatever the format writer made of it.
    fn classify(&self, error: WriteError) -> WriteError {
        match error {
            WriteError::Failed(_) if self.0.load(Ordering::Relaxed) => WriteError::ReaderGone,
            other => other,
        }
    }
}

/// Where bytes go: stdout, or a temporary file published on close.
enum Target {
    Stdout(BufWriter<io::Stdout>),
    Pager(Pager),
    File {
        temp: BufWriter<tempfile::NamedTempFile>,
        /// Deletes the temporary file if the process must exit on refused memory.
        _registered: crate::process::allocator::TemporaryGuard,
        path: PathBuf,
    },
    Object(ObjectUpload),
    Spooled(SpooledUpload),
}

/// An upload to a web server, which takes an object only whole (object_store has no multipart
/// upload over WebDAV): the bytes are spooled to an unnamed local temporary file (gone with the
/// process, whatever happens), PUT from a memory map (never held on the heap) under a hidden
/// temporary name beside the target, copied over the target on the server (WebDAV COPY), and
/// the temporary deleted. A reader of the target sees the old object or the complete new one,
/// as atomically as the server's COPY replaces a file.
struct SpooledUpload {
    spool: BufWriter<std::fs::File>,
    target: ObjectTarget,
    runtime: tokio::runtime::Handle,
    url: String,
}

impl SpooledUpload {
    fn start(url: &str, target: ObjectTarget) -> Result<SpooledUpload> {
        let spool = tempfile::tempfile().map_err(|e| {
            Error::Output(format!("{url}: cannot make a local temporary file: {e}"))
        })?;
        Ok(SpooledUpload {
            spool: BufWriter::with_capacity(1 << 20, spool),
            target,
            runtime: tokio::runtime::Handle::current(),
            url: url.to_string(),
        })
    }

    /// The hidden name the bytes are uploaded under before they are copied over the target.
    fn temporary_path(&self) -> object_store::path::Path {
        let name = self.target.path.filename().unwrap_or("output");
        let hidden = format!(".{name}.{}.spillway-tmp", std::process::id());
        let mut parts: Vec<object_store::path::PathPart<'_>> = self.target.path.parts().collect();
        parts.pop();
        parts.push(object_store::path::PathPart::from(hidden.as_str()));
        object_store::path::Path::from_iter(parts)
    }

    fn complete(self) -> Result<()> {
        let temporary = self.temporary_path();
        let url = self.url.clone();
        let local = |e: &dyn std::fmt::Display| Error::Output(format!("{url}: spooling: {e}"));
        let file = self.spool.into_inner().map_err(|e| local(e.error()))?;
        let length = file.metadata().map_err(|e| local(&e))?.len();
        let bytes = if length == 0 {
            bytes::Bytes::new()
        } else {
            // SAFETY: the file is unnamed and private to this process, which no longer writes
            // it: nothing can change it under the map.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| local(&e))?;
            bytes::Bytes::from_owner(map)
        };
        let store = self.target.store.clone();
        let target = self.target.path.clone();
        let _inside = self.runtime.enter();
        self.runtime.block_on(async move {
            store.put(&temporary, bytes.into()).await.map_err(|e| {
                crate::storage::store_error(&url, e).context(
                    "cannot upload (an https:// output needs a server that takes WebDAV PUT)",
                )
            })?;
            let copied = store.copy(&temporary, &target).await;
            if let Err(error) = store.delete(&temporary).await {
                tracing::warn!("could not delete the temporary upload beside {url}: {error}");
            }
            copied.map_err(|e| {
                crate::storage::store_error(&url, e)
                    .context("cannot publish the upload (WebDAV COPY)")
            })
        })
    }
}

/// Concurrent part uploads in flight per object.
const UPLOAD_CONCURRENCY: usize = 4;

/// Bytes gathered before they are handed to the upload as parts.
const UPLOAD_CHUNK_BYTES: usize = 8 << 20;

/// A multipart upload: the object appears only when [`ObjectUpload::complete`] succeeds; dropped
/// before that, the upload is aborted so no parts are left behind. Bytes are gathered into
/// chunks and pushed from the writer thread, which blocks on the runtime for upload capacity
/// (small writes made while the sink is being opened, on a runtime thread, only gather).
struct ObjectUpload {
    upload: Option<WriteMultipart>,
    pending: Vec<u8>,
    runtime: tokio::runtime::Handle,
    url: String,
}

impl ObjectUpload {
    async fn start(url: &str, target: ObjectTarget) -> Result<ObjectUpload> {
        let upload = target
            .store
            .put_multipart(&target.path)
            .await
            .map_err(|e| crate::storage::store_error(url, e).context("cannot start the upload"))?;
        Ok(ObjectUpload {
            upload: Some(WriteMultipart::new(upload)),
            pending: Vec::new(),
            runtime: tokio::runtime::Handle::current(),
            url: url.to_string(),
        })
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= UPLOAD_CHUNK_BYTES {
            self.push()?;
        }
        Ok(buf.len())
    }

    /// Hand the gathered bytes to the upload, waiting while too many parts are in flight.
    fn push(&mut self) -> io::Result<()> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already finished"))?;
        // Part uploads are spawned on the runtime; the guard lets this thread spawn them.
        let _inside = self.runtime.enter();
        self.runtime
            .block_on(upload.wait_for_capacity(UPLOAD_CONCURRENCY))
            .map_err(io::Error::other)?;
        upload.put(bytes::Bytes::from(std::mem::take(&mut self.pending)));
        Ok(())
    }

    fn complete(mut self) -> Result<()> {
        self.push()
            .map_err(|e| Error::Storage(format!("`{}`: {e}", self.url)))?;
        if let Some(upload) = self.upload.take() {
            let _inside = self.runtime.enter();
            self.runtime
                .block_on(upload.finish())
                .map_err(|e| crate::storage::store_error(&self.url, e))?;
        }
        Ok(())
    }
}

impl Drop for ObjectUpload {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let url = self.url.clone();
        let abort = async move {
            if let Err(error) = upload.abort().await {
                tracing::warn!("could not abort the upload to {url}: {error}");
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // On a runtime thread (the sink failed while opening): cannot block here.
            self.runtime.spawn(abort);
        } else {
            let _inside = self.runtime.enter();
            self.runtime.block_on(abort);
        }
    }
}

impl Target {
    fn open(destination: &Destination) -> Result<Target> {
        match destination {
            Destination::Stdout => Ok(Target::Stdout(BufWriter::with_capacity(
                1 << 16,
                io::stdout(),
            ))),
            Destination::Object(url) => Err(Error::Internal(format!("{url} needs a store"))),
            Destination::Pager(command) => Pager::start(command).map(Target::Pager),
            Destination::File(path) => {
                let cannot = |e: &dyn std::fmt::Display| {
                    Error::Output(format!("cannot write {}: {e}", path.display()))
                };
                if path.is_dir() {
                    return Err(cannot(&"it is a folder"));
                }
                let (folder, name) = folder_and_name(path);
                let temp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".spillway-tmp")
                    .tempfile_in(folder)
                    .map_err(|e| cannot(&e))?;
                Ok(Target::File {
                    _registered: crate::process::allocator::remove_on_exhaustion(temp.path()),
                    temp: BufWriter::with_capacity(1 << 20, temp),
                    path: path.clone(),
                })
            }
        }
    }

    /// Flush, and for a file sync it (when `sync`) and rename it over the target.
    fn publish(self, sync: bool) -> std::result::Result<(), WriteError> {
        match self {
            Target::Stdout(mut out) => out.flush().map_err(|e| match classify_io(e) {
                WriteError::Failed(error) => WriteError::Failed(error.context("stdout")),
                gone => gone,
            }),
            Target::File { temp, path, .. } => {
                let failed = |e: &dyn std::fmt::Display| {
                    Error::Output(format!("cannot write {}: {e}", path.display()))
                };
                let published = || -> Result<()> {
                    let temp = temp
                        .into_inner()
                        .map_err(|e| failed(&e.error().to_string()))?;
                    if sync {
                        temp.as_file().sync_all().map_err(|e| failed(&e))?;
                    }
                    temp.persist(&path).map_err(|e| failed(&e.error))?;
                    Ok(())
                };
                published().map_err(WriteError::Failed)
            }
            Target::Object(upload) => upload.complete().map_err(WriteError::Failed),
            // Waits until the person quits the pager (it may still be showing the result).
            Target::Pager(pager) => pager.close().map_err(classify_io),
            Target::Spooled(upload) => upload.complete().map_err(WriteError::Failed),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Stdout(_) => "stdout".into(),
            Target::Pager(pager) => format!("the pager `{}`", pager.command),
            Target::File { path, .. } => path.display().to_string(),
            Target::Object(upload) => upload.url.clone(),
            Target::Spooled(upload) => upload.url.clone(),
        }
    }
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Target::Stdout(out) => out.write(buf),
            Target::Pager(pager) => pager.input()?.write(buf),
            Target::File { temp, .. } => temp.write(buf),
            Target::Object(upload) => upload.write(buf),
            Target::Spooled(upload) => upload.spool.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Target::Stdout(out) => out.flush(),
            Target::Pager(pager) => pager.input()?.flush(),
            Target::File { temp, .. } => temp.flush(),
            Target::Object(_) => Ok(()),
            Target::Spooled(upload) => upload.spool.flush(),
        }
    }
}

/// A pager (`less -FRX`, `$PAGER`) reading the output on its standard input and showing it on
/// the terminal. Dropped without [`Pager::close`] (a failed statement) it still waits for the
/// pager, so the shell's next prompt never lands under a pager that is still drawing.
struct Pager {
    command: String,
    child: std::process::Child,
    stdin: Option<BufWriter<std::process::ChildStdin>>,
}

impl Pager {
    fn start(command: &str) -> Result<Pager> {
        let mut child = std::process::Command::new("sh")
            .args(["-c", command])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::Output(format!("cannot start the pager `{command}`: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .map(|stdin| BufWriter::with_capacity(1 << 16, stdin));
        Ok(Pager {
            command: command.to_string(),
            child,
            stdin,
        })
    }

    fn input(&mut self) -> io::Result<&mut BufWriter<std::process::ChildStdin>> {
        self.stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the pager was closed"))
    }

    fn close(mut self) -> io::Result<()> {
        let flushed = match self.stdin.take() {
            Some(mut stdin) => stdin.flush(),
            None => Ok(()),
        };
        // Closing its input tells the pager the output is complete.
        self.child.wait()?;
        flushed
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A `Write` that counts, and when asked hashes, the bytes through it (the hash goes into
/// report manifests).
struct Counted {
    inner: Target,
    bytes: u64,
    sha256: Option<Sha256>,
    /// Sync a file to disk before publishing it.
    sync: bool,
    reader_gone: ReaderGone,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self
            .inner
            .write(buf)
            .inspect_err(|e| self.reader_gone.notice(e))?;
        self.bytes += written as u64;
        if let Some(sha256) = &mut self.sha256 {
            sha256.update(&buf[..written]);
        }
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner
            .flush()
            .inspect_err(|e| self.reader_gone.notice(e))
    }
}

/// One writer per format, all over a counted target.
enum FormatWriter {
    Csv(datafusion::arrow::csv::Writer<Counted>),
    Json(datafusion::arrow::json::ArrayWriter<Counted>),
    NdJson(datafusion::arrow::json::LineDelimitedWriter<Counted>),
    Parquet(Box<ArrowWriter<Counted>>),
    Arrow(datafusion::arrow::ipc::writer::FileWriter<Counted>),
    Xlsx(Box<xlsx::XlsxWriter<Counted>>),
    Table(TableWriter),
}

impl FormatWriter {
    fn new(
        spec: &OutputSpec,
        schema: SchemaRef,
        target: Target,
        reader_gone: ReaderGone,
    ) -> Result<FormatWriter> {
        let described = target.describe();
        let out = Counted {
            inner: target,
            bytes: 0,
            sha256: spec.manifest.then(Sha256::new),
            sync: spec.manifest,
            reader_gone,
        };
        let failed = |e: &dyn std::fmt::Display| Error::Output(format!("{described}: {e}"));
        Ok(match spec.format {
            OutputFormat::Csv | OutputFormat::Tsv => {
                let delimiter = if spec.format == OutputFormat::Tsv {
                    b'\t'
                } else {
                    b','
                };
                let writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .with_delimiter(delimiter)
                    .build(out);
                let mut writer = writer;
                // An empty batch makes the writer emit the header now, so an empty result is
                // still a valid CSV file with its columns named.
                writer
                    .write(&RecordBatch::new_empty(schema))
                    .map_err(|e| failed(&e))?;
                FormatWriter::Csv(writer)
            }
            OutputFormat::Json => {
                FormatWriter::Json(datafusion::arrow::json::ArrayWriter::new(out))
            }
            OutputFormat::NdJson => {
                FormatWriter::NdJson(datafusion::arrow::json::LineDelimitedWriter::new(out))
            }
            OutputFormat::Parquet => {
                let mut properties = WriterProperties::builder()
                    .set_compression(ParquetCompression::SNAPPY)
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS));
                if let Some(key) = &spec.encryption {
                    // Uniform encryption: the footer and every column under one key, which
                    // DuckDB and pyarrow read back given the key.
                    let encryption =
                        datafusion::parquet::encryption::encrypt::FileEncryptionProperties::builder(
                            key.0.clone(),
                        )
                        .build()
                        .map_err(|e| failed(&e))?;
                    properties = properties.with_file_encryption_properties(encryption);
                }
                let properties = properties.build();
                let writer =
                    ArrowWriter::try_new(out, schema, Some(properties)).map_err(|e| failed(&e))?;
                FormatWriter::Parquet(Box::new(writer))
            }
            OutputFormat::Arrow => {
                let writer = datafusion::arrow::ipc::writer::FileWriter::try_new(out, &schema)
                    .map_err(|e| failed(&e))?;
                FormatWriter::Arrow(writer)
            }
            OutputFormat::Xlsx => FormatWriter::Xlsx(Box::new(xlsx::XlsxWriter::new(
                &schema,
                spec.about.clone(),
                out,
                &described,
            )?)),
            OutputFormat::Table => FormatWriter::Table(TableWriter::new(out, spec.max_table_rows)),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> std::result::Result<(), WriteError> {
        let result = match self {
            FormatWriter::Csv(writer) => writer.write(batch).map_err(arrow_io),
            FormatWriter::Json(writer) => writer.write(batch).map_err(arrow_io),
            FormatWriter::NdJson(writer) => writer.write(batch).map_err(arrow_io),
            FormatWriter::Parquet(writer) => writer.write(batch).map_err(parquet_io),
            FormatWriter::Arrow(writer) => writer.write(batch).map_err(arrow_io),
            FormatWriter::Table(writer) => writer.write(batch),
            // Its own errors: the row limit is not an I/O failure.
            FormatWriter::Xlsx(writer) => return writer.write(batch),
        };
        result.map_err(classify_io)
    }

    /// Finish the format (footers, closing brackets), publish, and return the bytes written.
    fn close(self) -> std::result::Result<(u64, String), WriteError> {
        let out = match self {
            FormatWriter::Csv(writer) => Ok(writer.into_inner()),
            FormatWriter::Json(mut writer) => writer
                .finish()
                .map(|()| writer.into_inner())
                .map_err(arrow_io),
            FormatWriter::NdJson(mut writer) => writer
                .finish()
                .map(|()| writer.into_inner())
                .map_err(arrow_io),
            FormatWriter::Parquet(writer) => writer.into_inner().map_err(parquet_io),
            FormatWriter::Arrow(writer) => writer.into_inner().map_err(arrow_io),
            FormatWriter::Table(writer) => writer.close(),
            FormatWriter::Xlsx(writer) => return Self::publish(writer.close()?),
        }
        .map_err(classify_io)?;
        Self::publish(out)
    }

    /// Publish the finished target; return the bytes written and their SHA-256 (or "").
    fn publish(out: Counted) -> std::result::Result<(u64, String), WriteError> {
        let bytes = out.bytes;
        let sha256 = out
            .sha256
            .map(|sha256| hex(&sha256.finalize()))
            .unwrap_or_default();
        out.inner.publish(out.sync)?;
        Ok((bytes, sha256))
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn arrow_io(error: datafusion::arrow::error::ArrowError) -> io::Error {
    match error {
        datafusion::arrow::error::ArrowError::IoError(_, inner) => inner,
        other => io::Error::other(other.to_string()),
    }
}

fn parquet_io(error: datafusion::parquet::errors::ParquetError) -> io::Error {
    io::Error::other(error.to_string())
}

fn classify_io(error: io::Error) -> WriteError {
    if error.kind() == io::ErrorKind::BrokenPipe {
        WriteError::ReaderGone
    } else {
        WriteError::Failed(Error::Output(error.to_string()))
    }
}

/// The human table: shows the first `max_rows` rows, then says how many it left out.
/// With `max_rows == 0` it prints every row, one table per chunk, never holding more than a chunk.
struct TableWriter {
    out: Counted,
    max_rows: usize,
    kept: Vec<RecordBatch>,
    kept_rows: usize,
    left_out: u64,
}

/// Rows per printed table when all rows are shown.
const TABLE_CHUNK_ROWS: usize = 1000;

impl TableWriter {
    fn new(out: Counted, max_rows: usize) -> Self {
        Self {
            out,
            max_rows,
            kept: Vec::new(),
            kept_rows: 0,
            left_out: 0,
        }
    }

    fn capacity(&self) -> usize {
        if self.max_rows == 0 {
            TABLE_CHUNK_ROWS
        } else {
            self.max_rows
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> io::Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let room = self.capacity() - self.kept_rows;
            if room == 0 {
                if self.max_rows == 0 {
                    self.print_kept()?;
                    continue;
                }
                self.left_out += (batch.num_rows() - offset) as u64;
                return Ok(());
            }
            let take = room.min(batch.num_rows() - offset);
            self.kept.push(batch.slice(offset, take));
            self.kept_rows += take;
            offset += take;
        }
        Ok(())
    }

    fn print_kept(&mut self) -> io::Result<()> {
        if !self.kept.is_empty() {
            let table = pretty_format_batches(&self.kept).map_err(arrow_io)?;
            writeln!(self.out, "{table}")?;
        }
        self.kept.clear();
        self.kept_rows = 0;
        Ok(())
    }

    fn close(mut self) -> io::Result<Counted> {
        let shown = self.kept_rows as u64;
        self.print_kept()?;
        if self.left_out > 0 {
            writeln!(
                self.out,
                "{} rows; showing the first {shown} ({} left out; --max-rows 0 shows all, or -o FILE)",
                shown + self.left_out,
                self.left_out
            )?;
        }
        Ok(self.out)
    }
}
