//! The reloader: re-reads the tenants and every `file:` secret when one of their files changes
//! and on SIGHUP.
//!
//! Files are watched through their directories (inotify on Linux), because Kubernetes updates a
//! `Secret` or `ConfigMap` mount by swapping a `..data` symlink in the directory, never by writing
//! the file the path names. Bursts of events are coalesced; a reload whose set does not validate
//! keeps the previous one (see `Tenants::reload`).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Tenants;

/// Events closer together than this are one change (a symlink swap is several events).
const SETTLE: Duration = Duration::from_millis(100);

/// How far above a watched file's directory the root of a Kubernetes mount is looked for.
const MOUNT_DEPTH: usize = 3;

/// Runs until `shutdown`: reloads on file changes and on SIGHUP.
pub(crate) async fn run(tenants: Tenants, shutdown: CancellationToken) -> Result<(), String> {
    let changed = Arc::new(Notify::new());
    let mut hangups = hangup_signals();
    let mut watcher = DirWatcher::new(Arc::clone(&changed));
    watcher.update(&tenants.watched_files());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = changed.notified() => {
                // Let the rest of the burst arrive, then read once.
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(SETTLE) => {}
                }
                reload(&tenants, &mut watcher, "file change");
            }
            Some(()) = recv_hangup(&mut hangups) => reload(&tenants, &mut watcher, "SIGHUP"),
        }
    }
}

fn reload(tenants: &Tenants, watcher: &mut DirWatcher, cause: &'static str) {
    tracing::debug!(cause, "reloading tenants and secrets");
    // A blocking read of a few small files: cheap enough for the runtime thread.
    tenants.reload();
    // Watched anew after every reload, whatever its outcome: a swapped mount replaced the
    // directories the old watches were on.
    watcher.update(&tenants.watched_files());
}

type Hangups = Option<tokio::signal::unix::Signal>;

fn hangup_signals() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; tenants reload on file changes only");
            None
        }
    }
}

async fn recv_hangup(hangups: &mut Hangups) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Watches the directories of a set of files; any event that may concern one of them (its own
/// name, or a `..`-prefixed name of the Kubernetes atomic writer) wakes `changed`.
struct DirWatcher {
    watcher: Option<RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    names: Arc<std::sync::RwLock<BTreeSet<std::ffi::OsString>>>,
}

impl DirWatcher {
    fn new(changed: Arc<Notify>) -> Self {
        let names: Arc<std::sync::RwLock<BTreeSet<std::ffi::OsString>>> = Arc::default();
        let seen = Arc::clone(&names);
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let names = seen
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let relevant = event.paths.iter().any(|path| {
                    path.file_name().is_some_and(|name| {
                        names.contains(name) || name.as_encoded_bytes().starts_with(b"..")
                    })
                });
                if relevant {
                    changed.notify_one();
                }
            }
            Err(error) => tracing::warn!(%error, "file watch error"),
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(%error, "cannot watch files; tenants and secrets reload on SIGHUP only");
                None
            }
        };
        Self {
            watcher,
            dirs: BTreeSet::new(),
            names,
        }
    }

    /// Watches the directories of `files` afresh (a swapped mount leaves the old watches on
    /// deleted directories), and the root of each Kubernetes mount above them (where `..data`
    /// is swapped when a file sits in a subdirectory of the mount).
    fn update(&mut self, files: &[PathBuf]) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let mut dirs = BTreeSet::new();
        for dir in files
            .iter()
            .filter_map(|file| file.parent().map(normalise_dir))
        {
            if let Some(root) = dir
                .ancestors()
                .skip(1)
                .take(MOUNT_DEPTH)
                .find(|a| a.join("..data").exists())
            {
                dirs.insert(root.to_path_buf());
            }
            dirs.insert(dir);
        }
        *self
            .names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files
            .iter()
            .filter_map(|file| file.file_name().map(ToOwned::to_owned))
            .collect();
        for old in &self.dirs {
            // A watch whose directory was deleted is gone already: nothing to report.
            if let Err(error) = watcher.unwatch(old) {
                tracing::trace!(%error, dir = %old.display(), "unwatch failed");
            }
        }
        for dir in &dirs {
            if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(%error, dir = %dir.display(), "cannot watch directory; changes there need SIGHUP");
            }
        }
        self.dirs = dirs;
    }
}

/// `""` (a bare file name) is the current directory.
fn normalise_dir(dir: &Path) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    }
}
