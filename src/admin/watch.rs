//! Watches the config file and every file it names, and reloads the broker when their
//! content changes.
//!
//! Editors often write by renaming a temporary file over the original, and Kubernetes swaps a
//! `..data` symlink in the ConfigMap directory, so the watch is on the parent directories
//! (not the files), and what decides a reload is the content: a hash of every watched file,
//! compared with the last one seen. Bursts of events are debounced: the files are read once
//! they have been quiet for [`DEBOUNCE`] and (on Linux, where inotify reports it) every
//! watched file written in place has been closed by its writer, so that a file truncated and
//! not yet rewritten is never taken for the new configuration (an empty file is a valid
//! config: all defaults, no ACL).
//!
//! Only events that can mean new content count. Opening and reading a file (which the watcher
//! itself does to hash it, and the reload does to parse it) also produces inotify events;
//! counting those made every check schedule the next one, so the watcher re-read every file
//! every 250 ms forever, and could read a file in the middle of someone's in-place write.

use crate::core::control::Control;
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long the watched directories must be quiet before the files are read.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest wait for quiet: a directory written to without pause (say, a log file next to the
/// config), or a writer that keeps a watched file open, must not postpone a reload forever.
const MAX_SETTLE: Duration = Duration::from_secs(2);
/// Whether the backend reports a writer closing a file (inotify's `IN_CLOSE_WRITE`); without
/// it a write in progress cannot be told from a finished one.
const CLOSE_EVENTS: bool = cfg!(any(target_os = "linux", target_os = "android"));

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
fn watched_files(config_path: &Path, handle: &dyn Control) -> BTreeSet<PathBuf> {
    let mut files: BTreeSet<PathBuf> = handle
        .runtime()
        .config
        .referenced_files()
        .into_iter()
        .collect();
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

/// The fingerprint the watcher will compute once `config` (read from `config_path`) is in
/// force: what a writer that reloads by itself (the dashboard) hands to [`spawn`]'s
/// `applied`, so that the watcher does not reload the same content again.
pub(crate) fn files_fingerprint(config_path: &Path, config: &crate::config::Config) -> u64 {
    let mut files: BTreeSet<PathBuf> = config.referenced_files().into_iter().collect();
    files.insert(config_path.to_path_buf());
    fingerprint(&files)
}

/// Whether an event can mean changed content: everything but opening, reading and closing a
/// file without writing it.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// File names of the watched files (events carry the path under the watched directory).
fn names(files: &BTreeSet<PathBuf>) -> HashSet<OsString> {
    files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect()
}

/// Tracks in-place writes to watched files: data written and the file not yet closed.
fn note_writes(event: &notify::Event, names: &HashSet<OsString>, writing: &mut HashSet<PathBuf>) {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    if !CLOSE_EVENTS {
        return;
    }
    for path in &event.paths {
        if !path.file_name().is_some_and(|n| names.contains(n)) {
            continue;
        }
        match event.kind {
            // Truncation and writes.
            EventKind::Modify(ModifyKind::Data(_)) => {
                writing.insert(path.clone());
            }
            // Closed by the writer, replaced by a rename, or removed.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_) => {
                writing.remove(path);
            }
            _ => {}
        }
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Starts watching; the task ends when the broker shuts down.
///
/// `applied` holds the fingerprint of files already applied by someone else (the dashboard
/// writes the file and reloads itself): a change to exactly that content is not reloaded
/// twice.
pub(crate) fn spawn(
    handle: Arc<dyn Control>,
    config_path: PathBuf,
    applied: Arc<std::sync::atomic::AtomicU64>,
) -> Result<(), WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Event>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if is_change(&event.kind) {
                let _ = tx.send(event);
            }
        }
    })
    .map_err(|source| WatchError::Notify {
        path: config_path.clone(),
        source,
    })?;
    let mut files = watched_files(&config_path, handle.as_ref());
    let mut watched_names = names(&files);
    let mut dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent(f)).collect();
    for d in &dirs {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Notify {
                path: d.clone(),
                source,
            })?;
    }
    let shutdown = handle.shutting_down();
    // Taken now, not when the task first runs: an edit made in between must count as one.
    let mut last = fingerprint(&files);
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = rx.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            // Let the burst settle (an editor's write, rename and chmod arrive together): wait
            // until no event came for DEBOUNCE and no in-place write is still open, or until
            // MAX_SETTLE passed.
            let mut writing = HashSet::new();
            note_writes(&first, &watched_names, &mut writing);
            let settle_by = Instant::now() + MAX_SETTLE;
            loop {
                let quiet_until = (Instant::now() + DEBOUNCE).min(settle_by);
                match tokio::time::timeout_at(quiet_until, rx.recv()).await {
                    Ok(Some(event)) => note_writes(&event, &watched_names, &mut writing),
                    Ok(None) => return,
                    Err(_) if writing.is_empty() => break,
                    Err(_) => {}
                }
                if Instant::now() >= settle_by {
                    break;
                }
            }
            let now = fingerprint(&files);
            if now == last {
                continue;
            }
            last = now;
            if now == applied.load(std::sync::atomic::Ordering::Acquire) {
                debug!("watched files changed to what was already applied; not reloading");
                files = watched_files(&config_path, handle.as_ref());
                watched_names = names(&files);
                continue;
            }
            debug!("watched files changed; reloading");
            if handle.reload_from_file(&config_path).await.is_ok() {
                // The new config may name other files: follow them.
                files = watched_files(&config_path, handle.as_ref());
                watched_names = names(&files);
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
