//! The local API: a Unix socket (mode from the settings, 0660 by default, owned by the configured
//! group) speaking `protocol.rs`. Each connection's peer credentials (SO_PEERCRED) are checked:
//! root, the daemon's own user, and members of the daemon's or the socket's group are let in.
//! The socket appears with its final permissions (bound under a temporary name, chmod/chown,
//! renamed into place). `Hub` broadcasts events to subscribers and keeps a backlog for newcomers.
//! `Client` and `status_client` are the other end (`ctmask status`, the dashboard).

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Shared;
use super::queue::{Queue, now_ms};
use super::settings::DaemonSettings;
use crate::protocol::{
    self, Event, EventKind, Message, PROTOCOL_VERSION, ProtocolError, Request, Results, SeriesSummary,
    Snapshot,
};

/// Events kept for clients that subscribe later.
const BACKLOG: usize = 200;
/// Events queued per subscriber before a slow one is dropped (it reconnects).
const SUBSCRIBER_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("socket {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error(
        "socket {path}: something that is not a socket is in the way (daemon.socket); it is left alone, move it or choose another path"
    )]
    NotASocket { path: PathBuf },
    #[error("group {0} does not exist (daemon.socket_group)")]
    NoSuchGroup(String),
    #[error("daemon at {path}: {source}")]
    Protocol { path: PathBuf, source: ProtocolError },
    #[error("daemon at {path} answered unexpectedly: {what}")]
    Unexpected { path: PathBuf, what: String },
}

/// Broadcast of events to subscribers, with a backlog.
#[derive(Default)]
pub struct Hub {
    seq: AtomicU64,
    subscribers: Mutex<Vec<SyncSender<Arc<str>>>>,
    backlog: Mutex<VecDeque<Event>>,
}

impl Hub {
    pub fn publish(
        &self,
        kind: EventKind,
        message: String,
        job_id: Option<i64>,
        series: Option<String>,
    ) -> Event {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            time_ms: now_ms().max(0) as u64,
            kind,
            message,
            job_id,
            series,
        };
        if let Ok(mut b) = self.backlog.lock() {
            if b.len() == BACKLOG {
                b.pop_front();
            }
            b.push_back(event.clone());
        }
        if let Ok(line) = protocol::encode(&Message::Event(event.clone())) {
            let line: Arc<str> = line.into();
            if let Ok(mut subs) = self.subscribers.lock() {
                subs.retain(|s| match s.try_send(line.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
                });
            }
        }
        event
    }

    /// The backlog, and a receiver of every later event line.
    pub fn subscribe(&self) -> (Vec<Event>, Receiver<Arc<str>>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(SUBSCRIBER_QUEUE);
        // Both locks together, so no event falls between the backlog and the stream.
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let backlog = self
            .backlog
            .lock()
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default();
        subs.push(tx);
        (backlog, rx)
    }
}

/// Looks up a group id by name.
fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into grp/buf, which we own and size correctly.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// (pid, uid, gid) of the process at the other end.
fn peer_credentials(stream: &UnixStream) -> std::io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred we own; len holds its size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// Supplementary groups of a process, from /proc (empty when hidden).
fn process_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Groups:"))
                .map(|l| l[7..].to_string())
        })
        .map(|l| l.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

/// Who may connect: root, the daemon's user, members of its group or the socket's group.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl PeerPolicy {
    pub fn allows(&self, pid: i32, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == self.uid
            || self.gids.contains(&gid)
            || process_groups(pid).iter().any(|g| self.gids.contains(g))
    }
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    policy: PeerPolicy,
}

impl Server {
    /// Binds the socket with its final mode and group.
    pub fn bind(settings: &DaemonSettings) -> Result<Server, ServerError> {
        let path = settings.socket.clone();
        let io = |source| ServerError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                // Never delete what is not ours: a file, a folder or a link at the socket path.
                return Err(ServerError::NotASocket { path });
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(ServerError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(io)?; // stale, from a crash
        }
        // SAFETY: plain getters without side effects.
        let (uid, own_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let group = match &settings.socket_group {
            Some(name) => group_id(name).ok_or_else(|| ServerError::NoSuchGroup(name.clone()))?,
            None => own_gid,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(io)?;
        let mode = settings.socket_mode().unwrap_or(0o660);
        let c_tmp = std::ffi::CString::new(tmp.as_os_str().as_bytes())
            .map_err(|_| io(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: chown on a path we just created; -1 (u32::MAX) leaves the owner as is. Skipped
        // for the daemon's own group (the socket has it already, and seccomp may deny chown).
        let rc = if group == own_gid {
            0
        } else {
            unsafe { libc::chown(c_tmp.as_ptr(), u32::MAX, group) }
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        use std::os::unix::fs::PermissionsExt;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        listener.set_nonblocking(true).map_err(io)?;
        let mut gids = vec![own_gid];
        if group != own_gid {
            gids.push(group);
        }
        Ok(Server {
            listener,
            path,
            policy: PeerPolicy { uid, gids },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until the daemon stops, then removes the socket.
    pub(crate) fn serve(self, shared: Arc<Shared>) {
        while !shared.stopping() {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let (shared, policy) = (shared.clone(), self.policy.clone());
                    let spawned = std::thread::Builder::new()
                        .name("ctmask-client".into())
                        .spawn(move || serve_client(stream, shared, policy));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start a client thread");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send(out: &SyncSender<Arc<str>>, message: &Message) -> bool {
    match protocol::encode(message) {
        Ok(line) => out.send(line.into()).is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a message");
            true
        }
    }
}

fn error(code: &str, message: impl Into<String>) -> Message {
    Message::Error {
        code: code.into(),
        message: message.into(),
    }
}

fn serve_client(stream: UnixStream, shared: Arc<Shared>, policy: PeerPolicy) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Arc<str>>(SUBSCRIBER_QUEUE);
    let writer_thread = std::thread::spawn(move || {
        for line in out_rx {
            if writer.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(std::net::Shutdown::Both);
    });
    match peer_credentials(&stream) {
        Ok((pid, uid, gid)) if policy.allows(pid, uid, gid) => {
            handle_requests(&stream, &shared, &out_tx);
        }
        Ok((_, uid, _)) => {
            tracing::warn!(
                uid,
                "refused a client that is neither root, the daemon's user nor in its group"
            );
            send(
                &out_tx,
                &error("forbidden", "not allowed: ask to be added to the daemon's group"),
            );
        }
        Err(e) => {
            send(
                &out_tx,
                &error("forbidden", format!("cannot check peer credentials: {e}")),
            );
        }
    }
    drop(out_tx);
    let _ = writer_thread.join();
}

fn handle_requests(stream: &UnixStream, shared: &Arc<Shared>, out: &SyncSender<Arc<str>>) {
    let mut reader = BufReader::new(stream);
    let mut greeted = false;
    let mut queue: Option<Queue> = None;
    loop {
        let request = match protocol::read_message::<Request, _>(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(ProtocolError::Io(_)) => return,
            Err(e) => {
                if !send(out, &error("bad_request", e.to_string())) {
                    return;
                }
                continue;
            }
        };
        let reply = match (&request, greeted) {
            (Request::Hello { version, .. }, _) => {
                if *version == 0 {
                    error("unsupported_version", "protocol version 0 does not exist")
                } else {
                    greeted = true;
                    Message::Hello {
                        version: PROTOCOL_VERSION,
                        server: format!("ctmask {}", env!("CARGO_PKG_VERSION")),
                    }
                }
            }
            (_, false) => error("hello_required", "send hello first"),
            (Request::Subscribe, true) => {
                let (backlog, rx) = shared.hub.subscribe();
                for e in backlog {
                    send(out, &Message::Event(e));
                }
                let out = out.clone();
                std::thread::spawn(move || {
                    for line in rx {
                        if out.send(line).is_err() {
                            break;
                        }
                    }
                });
                continue;
            }
            (_, true) => {
                if queue.is_none() {
                    queue = Queue::open(&shared.state_dir, &shared.models_hash)
                        .map_err(|e| tracing::error!(error = %e, "client cannot open the queue"))
                        .ok();
                }
                match queue.as_mut() {
                    Some(q) => answer(&request, shared, q),
                    None => error("internal", "the queue database cannot be opened"),
                }
            }
        };
        if !send(out, &reply) {
            return;
        }
    }
}

fn answer(request: &Request, shared: &Arc<Shared>, queue: &mut Queue) -> Message {
    match request {
        Request::Status => match shared.snapshot(queue) {
            Ok(s) => Message::Snapshot(Box::new(s)),
            Err(e) => error("internal", e.to_string()),
        },
        Request::Pause => {
            shared.set_operator_pause(true);
            Message::Ack {
                request: "pause".into(),
                message: "intake paused by operator".into(),
            }
        }
        Request::Resume => {
            shared.set_operator_pause(false);
            Message::Ack {
                request: "resume".into(),
                message: "intake resumed by operator".into(),
            }
        }
        Request::Retry { job_id } => match queue.retry(*job_id) {
            Ok(()) => {
                shared.publish(
                    EventKind::Retried,
                    format!("job {job_id} retried by operator"),
                    Some(*job_id),
                    None,
                );
                shared.wake();
                Message::Ack {
                    request: "retry".into(),
                    message: format!("job {job_id} queued again"),
                }
            }
            Err(e) => error("retry_refused", e.to_string()),
        },
        Request::Recent { limit } => {
            let limit = (*limit).min(1000);
            let slices = queue.recent_slices(limit, true);
            let series = queue.recent_series(limit);
            match (slices, series) {
                (Ok(slices), Ok(series)) => Message::Results(Results {
                    series: series
                        .iter()
                        .filter_map(|j| serde_json::from_str::<SeriesSummary>(j).ok())
                        .collect(),
                    slices,
                }),
                (Err(e), _) | (_, Err(e)) => error("internal", e.to_string()),
            }
        }
        Request::Series { key } => {
            let series = queue.series_summary(key);
            let slices = queue.series_slices(key).and_then(|mut s| {
                super::series::order_slices(&mut s);
                queue.attach_thumbnails(&mut s).map(|()| s)
            });
            match (series, slices) {
                (Ok(None), _) => error("not_found", format!("no series {key} has been reported")),
                (Ok(Some(json)), Ok(slices)) => Message::Results(Results {
                    series: serde_json::from_str::<SeriesSummary>(&json).into_iter().collect(),
                    slices,
                }),
                (Err(e), _) | (_, Err(e)) => error("internal", e.to_string()),
            }
        }
        Request::Unknown => error("unknown_request", "request type not supported by this daemon"),
        Request::Hello { .. } | Request::Subscribe => error("internal", "handled elsewhere"),
    }
}

/// A connection to the daemon's socket, greeted.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Client {
    /// Connects and exchanges `hello`; `timeout` bounds every read and write.
    pub fn connect(socket: &Path, timeout: Option<Duration>) -> Result<Client, ServerError> {
        let io = |source| ServerError::Io {
            path: socket.into(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(io)?;
        stream.set_read_timeout(timeout).map_err(io)?;
        stream.set_write_timeout(timeout).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            path: socket.into(),
        };
        client.send(&Request::Hello {
            version: PROTOCOL_VERSION,
            client: "ctmask".into(),
        })?;
        match client.next_message()? {
            Message::Hello { .. } => Ok(client),
            other => Err(client.unexpected(&other)),
        }
    }

    pub fn send(&mut self, request: &Request) -> Result<(), ServerError> {
        let line = protocol::encode(request).map_err(|source| ServerError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ServerError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The next message (events included); an error at the end of the stream.
    pub fn next_message(&mut self) -> Result<Message, ServerError> {
        match protocol::read_message::<Message, _>(&mut self.reader) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(ServerError::Unexpected {
                path: self.path.clone(),
                what: "connection closed".into(),
            }),
            Err(source) => Err(ServerError::Protocol {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Sends a request and returns the first reply that is not an event.
    pub fn request(&mut self, request: &Request) -> Result<Message, ServerError> {
        self.send(request)?;
        loop {
            match self.next_message()? {
                Message::Event(_) | Message::Unknown => continue,
                Message::Error { code, message } => {
                    return Err(ServerError::Unexpected {
                        path: self.path.clone(),
                        what: format!("{code}: {message}"),
                    });
                }
                m => return Ok(m),
            }
        }
    }

    fn unexpected(&self, m: &Message) -> ServerError {
        let what = match m {
            Message::Error { code, message } => format!("{code}: {message}"),
            other => format!("{other:?}").chars().take(80).collect(),
        };
        ServerError::Unexpected {
            path: self.path.clone(),
            what,
        }
    }
}

/// The daemon's status snapshot (`ctmask status`).
pub fn status_client(socket: &Path) -> Result<Snapshot, ServerError> {
    let mut client = Client::connect(socket, Some(Duration::from_secs(10)))?;
    match client.request(&Request::Status)? {
        Message::Snapshot(s) => Ok(*s),
        other => Err(client.unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_keeps_a_backlog_and_broadcasts() {
        let hub = Hub::default();
        hub.publish(EventKind::Queued, "job 1 queued".into(), Some(1), None);
        let (backlog, rx) = hub.subscribe();
        assert_eq!(backlog.len(), 1);
        let e = hub.publish(EventKind::Done, "job 1 done".into(), Some(1), None);
        assert_eq!(e.seq, 2);
        let line = rx.recv_timeout(Duration::from_secs(1)).expect("event");
        let m: Message = protocol::decode(&line).expect("decode");
        assert_eq!(m, Message::Event(e));
    }

    #[test]
    fn a_non_socket_at_the_socket_path_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctmask.sock");
        std::fs::write(&path, b"precious").expect("file");
        let s = DaemonSettings {
            socket: path.clone(),
            ..DaemonSettings::default()
        };
        let Err(err) = Server::bind(&s) else {
            panic!("bound over a regular file")
        };
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    }

    #[test]
    fn policy_admits_root_owner_and_group() {
        let p = PeerPolicy {
            uid: 1000,
            gids: vec![50],
        };
        assert!(p.allows(0, 0, 99) && p.allows(0, 1000, 99) && p.allows(0, 7, 50));
        assert!(!p.allows(-1, 7, 99));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-ctmask"), None);
    }
}
