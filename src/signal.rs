//! Ctrl-C and SIGTERM as one future: what every long-running command stops on. Must not exit
//! the process itself: callers drop their work so temporary files and spill files are removed.

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown() {
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
