//! Finds complete new files in the watch folders and hands them on (`TakenFile`). inotify (through
//! `notify`) reports close-after-write and rename-into-place; a full rescan at start-up, every
//! `rescan_interval_s` and on request catches what events missed; network filesystems (NFS,
//! SMB/CIFS, 9p, Ceph, FUSE, where inotify stays silent) and `poll: poll` are scanned every
//! `poll_interval_s` instead. When a file is complete:
//! - renamed into place: at once;
//! - closed after writing: once its size and mtime held for `settle_ms`;
//! - found by a scan: once size and mtime held across `stability_polls` polls, and (with inotify)
//!   no write is in progress on it.
//!
//! Names starting with `.` or ending with an ignored suffix (`.part`, `.tmp`) are never taken;
//! neither are symlinks, FIFOs or devices (`lstat`: links are never followed into or out of a
//! watch folder, and `input.rs` checks again when the file is opened).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use super::settings::{DaemonSettings, PollMode};
use super::shutdown::Shutdown;

/// How a file was seen to be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakenVia {
    Renamed,
    Closed,
    Scan,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TakenFile {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    pub via: TakenVia,
    /// When the watcher decided (for latency figures).
    pub at: Instant,
}

/// A write with no close seen for this long is treated as abandoned (scans may take the file).
const STALE_WRITER: Duration = Duration::from_secs(600);

/// statfs magic numbers of filesystems where inotify misses remote writes.
const NETWORK_FS_MAGIC: [u64; 10] = [
    0x6969,      // NFS
    0x517B,      // SMB
    0xFF53_4D42, // CIFS
    0xFE53_4D42, // SMB2
    0x0102_1997, // 9p
    0x00C3_6400, // Ceph
    0x6573_5546, // FUSE (sshfs, ...)
    0x5346_414F, // AFS
    0x7375_7245, // Coda
    0x564C,      // NCP
];

/// Whether `path` lies on a network filesystem (statfs magic), so events cannot be trusted.
pub fn is_network_fs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = (st.f_type as u64) & 0xFFFF_FFFF;
    NETWORK_FS_MAGIC.contains(&magic)
}

#[derive(Debug)]
struct Track {
    size: u64,
    mtime_ns: i64,
    seen: u32,
    next: Instant,
    fast: bool,
}

/// Looks up the (size, mtime_ns) recorded for a path in the queue's `paths` table.
pub type Lookup = Box<dyn FnMut(&Path) -> Option<(u64, i64)> + Send>;

/// Files already taken: path -> (size, mtime_ns). What this run took or met is held here; any
/// other path is looked up in the queue when a scan meets it, so start-up loads nothing and the
/// memory grows with the files in the watch folders, not with every path ever seen.
#[derive(Default)]
pub struct KnownFiles {
    held: HashMap<PathBuf, (u64, i64)>,
    /// Removed during this run: what the queue recorded for them no longer applies.
    removed: HashSet<PathBuf>,
    lookup: Option<Lookup>,
}

impl KnownFiles {
    pub fn new(lookup: Lookup) -> KnownFiles {
        KnownFiles {
            lookup: Some(lookup),
            ..KnownFiles::default()
        }
    }

    fn get(&mut self, path: &Path) -> Option<(u64, i64)> {
        if let Some(sig) = self.held.get(path) {
            return Some(*sig);
        }
        if self.removed.contains(path) {
            return None;
        }
        let sig = self.lookup.as_mut().and_then(|f| f(path))?;
        self.held.insert(path.to_path_buf(), sig);
        Some(sig)
    }

    fn insert(&mut self, path: PathBuf, sig: (u64, i64)) {
        self.removed.remove(&path);
        self.held.insert(path, sig);
    }

    fn remove(&mut self, path: &Path) {
        self.held.remove(path);
        self.removed.insert(path.to_path_buf());
    }
}

/// The watch loop's state; `run` drives it on its own thread.
pub struct Watcher {
    settings: DaemonSettings,
    out: Sender<TakenFile>,
    known: KnownFiles,
    tracking: HashMap<PathBuf, Track>,
    writing: HashMap<PathBuf, Instant>,
    inotify_dirs: Vec<PathBuf>,
    poll_dirs: Vec<PathBuf>,
    beat: Option<super::liveness::Beat>,
}

impl Watcher {
    pub fn new(settings: DaemonSettings, known: KnownFiles, out: Sender<TakenFile>) -> Watcher {
        let (mut inotify_dirs, mut poll_dirs) = (Vec::new(), Vec::new());
        for dir in &settings.watch {
            let poll = match settings.poll {
                PollMode::Poll => true,
                PollMode::Inotify => false,
                PollMode::Auto => is_network_fs(dir),
            };
            if poll {
                poll_dirs.push(dir.clone())
            } else {
                inotify_dirs.push(dir.clone())
            }
        }
        Watcher {
            settings,
            out,
            known,
            tracking: HashMap::new(),
            writing: HashMap::new(),
            inotify_dirs,
            poll_dirs,
            beat: None,
        }
    }

    /// Reports progress on `beat` once per loop turn (the daemon's liveness check).
    pub(crate) fn with_beat(mut self, beat: super::liveness::Beat) -> Watcher {
        self.beat = Some(beat);
        self
    }

    /// Folders watched by polling (network filesystems, or `poll: poll`).
    pub fn polled_dirs(&self) -> &[PathBuf] {
        &self.poll_dirs
    }

    /// Runs until `stop`; `rescan` set by anyone forces a full scan. Returns when the receiver of
    /// taken files is gone too.
    pub fn run(mut self, stop: Shutdown, rescan: Arc<AtomicBool>) {
        let (ev_tx, ev_rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
        let mut _inotify = None;
        if !self.inotify_dirs.is_empty() {
            match notify::recommended_watcher(ev_tx) {
                Ok(mut w) => {
                    let dirs = std::mem::take(&mut self.inotify_dirs);
                    for dir in dirs {
                        match w.watch(&dir, RecursiveMode::Recursive) {
                            Ok(()) => self.inotify_dirs.push(dir),
                            Err(e) => {
                                tracing::warn!(folder = %dir.display(), error = %e, "inotify watch failed; polling this folder");
                                self.poll_dirs.push(dir);
                            }
                        }
                    }
                    _inotify = Some(w);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inotify unavailable; polling every watch folder");
                    self.poll_dirs.append(&mut self.inotify_dirs);
                }
            }
        }
        let poll_every = Duration::from_secs_f64(self.settings.poll_interval_s);
        let rescan_every = Duration::from_secs_f64(self.settings.rescan_interval_s);
        let mut next_full = Instant::now();
        let mut next_poll = Instant::now();
        while !stop.is_stopping() {
            if let Some(b) = &self.beat {
                b.beat();
            }
            let now = Instant::now();
            if rescan.swap(false, Ordering::SeqCst) || now >= next_full {
                let dirs = self.inotify_dirs.clone();
                self.scan(&dirs);
                next_full = now + rescan_every;
            }
            if now >= next_poll {
                let dirs = self.poll_dirs.clone();
                self.scan(&dirs);
                next_poll = now + poll_every;
            }
            if self.check_tracked().is_err() {
                return; // nobody listens any more
            }
            let next_track = self.tracking.values().map(|t| t.next).min();
            let wake = [Some(next_full), Some(next_poll), next_track]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            match ev_rx.recv_timeout(wait) {
                Ok(ev) => {
                    self.on_event(ev);
                    while let Ok(ev) = ev_rx.try_recv() {
                        self.on_event(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    if _inotify.is_none() {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
    }

    fn ignored(&self, path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| self.settings.ignores_name(n))
    }

    fn on_event(&mut self, ev: notify::Result<notify::Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The kind only: notify's message names the paths involved (patient names).
                tracing::warn!(error = ?e.kind, "watch error; rescanning");
                self.rescan_all();
                return;
            }
        };
        if ev.need_rescan() {
            self.rescan_all();
            return;
        }
        let now = Instant::now();
        for path in &ev.paths {
            match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    self.writing.remove(path);
                    if !self.ignored(path) {
                        self.track(path, true, now);
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    self.writing.remove(path);
                    if path.is_dir() {
                        self.scan(std::slice::from_ref(path));
                    } else if !self.ignored(path) {
                        self.take_now(path);
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                    self.tracking.remove(path);
                    self.writing.remove(path);
                    self.known.remove(path);
                }
                EventKind::Create(CreateKind::Folder) => self.scan(std::slice::from_ref(path)),
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.insert(path.clone(), now);
                    if let Some(t) = self.tracking.get_mut(path) {
                        t.seen = 0; // changed under us: start over
                    }
                }
                _ => {}
            }
        }
    }

    fn rescan_all(&mut self) {
        let dirs: Vec<PathBuf> = self.inotify_dirs.iter().chain(&self.poll_dirs).cloned().collect();
        self.scan(&dirs);
    }

    /// Starts tracking every unknown or changed regular file under `dirs`.
    fn scan(&mut self, dirs: &[PathBuf]) {
        let now = Instant::now();
        let mut stack: Vec<PathBuf> = dirs.to_vec();
        let mut seen = HashSet::new();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if self.ignored(&path) {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    if seen.insert(path.clone()) {
                        stack.push(path);
                    }
                } else if ft.is_file() {
                    let Ok(meta) = entry.metadata() else { continue };
                    let sig = (meta.len(), mtime_ns(&meta));
                    if self.tracking.contains_key(&path) || self.known.get(&path) == Some(sig) {
                        continue;
                    }
                    if self
                        .writing
                        .get(&path)
                        .is_some_and(|t| now.duration_since(*t) < STALE_WRITER)
                    {
                        continue; // a writer has it open; its close event will bring it
                    }
                    self.track(&path, false, now);
                }
            }
        }
    }

    fn track(&mut self, path: &Path, fast: bool, now: Instant) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if !meta.is_file() {
            return;
        }
        let (size, mtime_ns) = (meta.len(), mtime_ns(&meta));
        if self.known.get(path) == Some((size, mtime_ns)) {
            return;
        }
        // An empty file closed after writing is more likely a placeholder: let it settle by polls.
        let fast = fast && size > 0;
        let delay = if fast {
            Duration::from_millis(self.settings.settle_ms)
        } else {
            self.poll_interval()
        };
        self.tracking.insert(
            path.to_path_buf(),
            Track {
                size,
                mtime_ns,
                seen: 1,
                next: now + delay,
                fast,
            },
        );
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.settings.poll_interval_s)
    }

    /// Re-checks tracked files that are due; takes the stable ones. Err when the receiver is gone.
    fn check_tracked(&mut self) -> Result<(), ()> {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .tracking
            .iter()
            .filter(|(_, t)| t.next <= now)
            .map(|(p, _)| p.clone())
            .collect();
        let needed = self.settings.stability_polls.max(1);
        for path in due {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                self.tracking.remove(&path);
                continue;
            };
            let sig = (meta.len(), mtime_ns(&meta));
            let interval = self.poll_interval();
            let settle = Duration::from_millis(self.settings.settle_ms);
            let Some(t) = self.tracking.get_mut(&path) else {
                continue;
            };
            if (t.size, t.mtime_ns) == sig && t.seen > 0 {
                t.seen += 1;
            } else {
                (t.size, t.mtime_ns, t.seen) = (sig.0, sig.1, 1);
            }
            if t.seen >= needed {
                let via = if t.fast { TakenVia::Closed } else { TakenVia::Scan };
                self.tracking.remove(&path);
                self.emit(path, sig, via)?;
            } else {
                t.next = now + if t.fast { settle } else { interval };
            }
        }
        Ok(())
    }

    fn take_now(&mut self, path: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if !meta.is_file() {
            return;
        }
        self.tracking.remove(path);
        let sig = (meta.len(), mtime_ns(&meta));
        if self.known.get(path) != Some(sig) {
            let _ = self.emit(path.to_path_buf(), sig, TakenVia::Renamed);
        }
    }

    fn emit(&mut self, path: PathBuf, (size, mtime_ns): (u64, i64), via: TakenVia) -> Result<(), ()> {
        self.known.insert(path.clone(), (size, mtime_ns));
        self.out
            .send(TakenFile {
                path,
                size,
                mtime_ns,
                via,
                at: Instant::now(),
            })
            .map_err(|_| ())
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Spawns the watcher thread.
pub fn spawn(
    watcher: Watcher,
    stop: Shutdown,
    rescan: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ctmask-watch".into())
        .spawn(move || watcher.run(stop, rescan))
}

/// Receives taken files with a timeout (test and intake helper).
pub fn recv_taken(rx: &Receiver<TakenFile>, timeout: Duration) -> Option<TakenFile> {
    rx.recv_timeout(timeout).ok()
}

#[cfg(test)]
#[path = "watcher_tests.rs"]
mod tests;
