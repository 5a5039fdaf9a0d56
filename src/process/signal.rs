//! Ctrl-C and SIGTERM as one future: what every long-running command stops on. Must not exit
//! the process on those: callers drop their work so temporary files and spill files are
//! removed.
//!
//! The one signal that does end the process here is SIGBUS from a memory-mapped input file
//! (`storage` maps the byte ranges it reads from local files) that shrank while it was read:
//! the reading thread cannot continue, so the handler removes temporary outputs and exits with
//! the input data code and one error line instead of dying by the signal.

use std::sync::Once;

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Install the SIGBUS handler (once; called before the first file is mapped).
pub(crate) fn catch_truncated_maps() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction with an empty mask and a handler that only calls
        // async-signal-safe functions (unlink, write, _exit) is a valid argument.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_truncated_map as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

extern "C" fn on_truncated_map(_signal: libc::c_int) {
    crate::process::allocator::remove_temporaries();
    let message: &[u8] = b"spillway: error: an input file shrank or became unreadable while it \
        was being read (SIGBUS on its memory map); rerun once nothing is writing the files\n";
    // SAFETY: write and _exit are async-signal-safe; the buffer is static.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(i32::from(crate::error::exit_code::INPUT));
    }
}
