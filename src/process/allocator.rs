//! The process's global allocator: the system allocator, except that an allocation the
//! operating system refuses (an address-space cap such as `ulimit -v`/`prlimit --as`, or an
//! overcommit limit) ends the process with exit code 7 and one error line, the same as the
//! memory pool running out, instead of Rust's default abort (SIGABRT, a core dump, and to a
//! scheduler or shell a crash). Must not allocate on the failure path.
//!
//! Untracked memory is what reaches this point; the pool limit keeps the tracked part well
//! below any such cap.
//!
//! It also sets glibc malloc's arena count and thresholds ([`tune_glibc_malloc`]) before the
//! runtime starts its threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Temporary output files to delete if the process has to exit this way (destructors do not
/// run on `exit`). Registered while they exist; see [`remove_on_exhaustion`].
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Keeps a temporary file on the list of files deleted on an exhaustion exit; dropping it
/// takes the file off the list (it was published or discarded).
pub(crate) struct TemporaryGuard(PathBuf);

/// Put `path` on the list of files deleted if memory is refused before it is published.
pub(crate) fn remove_on_exhaustion(path: &Path) -> TemporaryGuard {
    if let Ok(mut list) = TEMPORARIES.lock() {
        list.push(path.to_path_buf());
    }
    TemporaryGuard(path.to_path_buf())
}

impl Drop for TemporaryGuard {
    fn drop(&mut self) {
        if let Ok(mut list) = TEMPORARIES.lock() {
            list.retain(|registered| registered != &self.0);
        }
    }
}

/// Delete the registered temporary outputs, for an exit that skips destructors. Does not
/// allocate: `try_lock`, since the failure may have come from a thread holding the list's
/// lock, and removing a short path builds its C string on the stack.
pub(crate) fn remove_temporaries() {
    if let Ok(list) = TEMPORARIES.try_lock() {
        for path in list.iter() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Exit code for resources exhausted (see `error::exit_code::RESOURCES`).
const RESOURCES: i32 = 7;

/// The system allocator with a clean exit when memory is refused.
pub(crate) struct ExitOnExhaustion;

// SAFETY: every call forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for ExitOnExhaustion {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        checked(unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        checked(unsafe { System.realloc(ptr, layout, new_size) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn checked(ptr: *mut u8) -> *mut u8 {
    if ptr.is_null() {
        refused();
    }
    ptr
}

/// Set by `main` once it printed its error line: a refusal after that exits without a second.
static REPORTED: AtomicBool = AtomicBool::new(false);
/// Set by the first thread that takes the exit path here; a second thread waits for the exit.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Called by `main` after it printed the error line.
pub(crate) fn error_reported() {
    REPORTED.store(true, Ordering::SeqCst);
}

#[cold]
fn refused() -> ! {
    if EXITING.swap(true, Ordering::SeqCst) {
        // Another thread is already reporting and exiting; `exit` must run only once.
        loop {
            std::thread::park();
        }
    }
    if REPORTED.load(Ordering::SeqCst) {
        std::process::exit(RESOURCES)
    }
    remove_temporaries();
    // Static text only: formatting would allocate.
    let _ = std::io::stderr().write_all(
        b"spillway: error: resources exhausted: the operating system refused memory \
          (address-space or overcommit limit) beyond what the memory pool tracks; \
          lower --memory-limit, --workers or --batch-size, or raise the process's limit\n",
    );
    std::process::exit(RESOURCES)
}

/// Environment variables through which a person sets glibc malloc's behaviour themselves; when
/// one is present, [`tune_glibc_malloc`] leaves the allocator alone.
const MALLOC_ENVIRONMENT: [&str; 4] = [
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// Largest allocation served from the heap rather than its own `mmap`, and how much free memory
/// at the top of a heap glibc keeps instead of returning it.
const MMAP_THRESHOLD: i32 = 32 << 20;
const TRIM_THRESHOLD: i32 = 128 << 20;

/// Tune glibc malloc for a query engine with `workers` worker threads. Call before any other
/// thread starts (arenas are fixed once threads allocate).
///
/// Why: a Parquet scan reads each column chunk into a new buffer of 0.2–4 MiB. With glibc's
/// defaults every such buffer is a fresh `mmap` (zeroed, page-faulted in, unmapped when
/// dropped), and the reads run on tokio's blocking threads, each of which gets its own arena
/// (up to 8 per core) whose memory starts cold. Serving those buffers from the heap, and
/// sharing one arena per worker, reuses warm pages: on H2O 1e7 Parquet, 2 workers, page faults
/// fell from 16,800 to 6,300 on q4 and wall time by 8–20 % on q2, q3, q4, q6, q8 and q9
/// (interleaved medians); peak RSS was unchanged for q10 in memory and under 256 MiB and 1 GiB
/// limits (see the README's defaults table). 32 MiB is glibc's own ceiling for its dynamic
/// mmap threshold; larger thresholds raised q10's peak RSS by a fifth.
pub(crate) fn tune_glibc_malloc(workers: usize) {
    if MALLOC_ENVIRONMENT
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = i32::try_from(workers.max(2)).unwrap_or(i32::MAX);
        // SAFETY: `mallopt` only changes allocator parameters; a rejected value returns 0 and
        // leaves the default in place, which is harmless.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = workers;
}
