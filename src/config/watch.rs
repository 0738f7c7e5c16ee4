//! Watches the config file and every file it names, and reloads the broker when their
//! content changes.
//!
//! Editors often write by renaming a temporary file over the original, and Kubernetes swaps a
//! `..data` symlink in the ConfigMap directory, so the watch is on the parent directories
//! (not the files), and what decides a reload is the content: a hash of every watched file,
//! compared with the last one seen. Bursts of events are debounced.

use crate::broker::BrokerHandle;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long to wait for a burst of file events to settle.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// The watcher could not be started.
#[derive(Debug, Error)]
pub enum WatchError {
    /// The operating system refused the watch.
    #[error("cannot watch {path}: {source}")]
    Notify {
        /// Directory that failed.
        path: PathBuf,
        /// Underlying error.
        source: notify::Error,
    },
}

/// The config file plus every file it names.
fn watched_files(config_path: &Path, handle: &BrokerHandle) -> BTreeSet<PathBuf> {
    let mut files: BTreeSet<PathBuf> = handle.config().referenced_files().into_iter().collect();
    files.insert(config_path.to_path_buf());
    files
}

/// A hash of the content of every watched file (a missing file hashes as missing).
fn fingerprint(files: &BTreeSet<PathBuf>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        match std::fs::read(f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().to_string().hash(&mut h),
        }
    }
    h.finish()
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Starts watching; the task ends when the broker shuts down.
pub(crate) fn spawn(handle: BrokerHandle, config_path: PathBuf) -> Result<(), WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        path: config_path.clone(),
        source,
    })?;
    let mut files = watched_files(&config_path, &handle);
    let mut dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent(f)).collect();
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                path: d.clone(),
                source,
            })?;
    }
    let shutdown = handle.shared().shutdown.clone();
    tokio::spawn(async move {
        let mut last = fingerprint(&files);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = rx.recv() => if event.is_none() { break },
            }
            // Let the burst settle (an editor's write, rename and chmod arrive together).
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let now = fingerprint(&files);
            if now == last {
                continue;
            }
            last = now;
            debug!("watched files changed; reloading");
            if handle.reload_from_file(&config_path).await.is_ok() {
                // The new config may name other files: follow them.
                files = watched_files(&config_path, &handle);
                let new_dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent(f)).collect();
                for d in new_dirs.difference(&dirs) {
                    if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                        warn!(dir = %d.display(), error = %e, "cannot watch directory");
                    }
                }
                for d in dirs.difference(&new_dirs) {
                    let _ = watcher.unwatch(d);
                }
                dirs = new_dirs;
                last = fingerprint(&files);
            }
        }
        drop(watcher);
    });
    Ok(())
}
