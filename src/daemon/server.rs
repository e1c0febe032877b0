//! The local API: a Unix socket (mode from the settings, 0660 by default, owned by the configured
//! group) speaking `protocol.rs`. The socket appears with its final permissions (bound under a
//! temporary name, chmod/chown, renamed into place); a non-socket at its path is left alone and
//! refused. At most `max_clients` connections are served (`connection.rs`: timeouts, bounded
//! output, roles from `peers.rs`); `hub.rs` broadcasts events. `answer` replies to one request.
//! `Client` and `status_client` are the other end (`ctmask status`, the dashboard).

use std::io::{BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Shared;
use super::connection::{error, serve_client};
use super::peers::{PeerPolicy, group_id};
use super::queue::Queue;
use super::settings::DaemonSettings;
use crate::protocol::{
    self, EventKind, Message, PROTOCOL_VERSION, ProtocolError, Request, Results, SeriesSummary, Snapshot,
};

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
    #[error("group {0} does not exist (daemon.socket_group or daemon.control_group)")]
    NoSuchGroup(String),
    #[error("daemon at {path}: {source}")]
    Protocol { path: PathBuf, source: ProtocolError },
    #[error("daemon at {path} answered unexpectedly: {what}")]
    Unexpected { path: PathBuf, what: String },
}

pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    policy: PeerPolicy,
    max_clients: usize,
    /// Connections being served.
    clients: Arc<AtomicUsize>,
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
        let mut read_gids = vec![own_gid];
        if group != own_gid {
            read_gids.push(group);
        }
        let control_gid = match &settings.control_group {
            Some(name) => Some(group_id(name).ok_or_else(|| ServerError::NoSuchGroup(name.clone()))?),
            None => None,
        };
        Ok(Server {
            listener,
            path,
            policy: PeerPolicy {
                uid,
                read_gids,
                control_gid,
            },
            max_clients: settings.max_clients,
            clients: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves a new connection on its own threads, or refuses it at once when `max_clients`
    /// are connected (a short, non-blocking error line; no thread).
    fn admit(&self, stream: UnixStream, shared: &Arc<Shared>) {
        if self.clients.load(Ordering::SeqCst) >= self.max_clients {
            let _ = stream.set_nonblocking(true);
            if let Ok(line) = protocol::encode(&error(
                "busy",
                "too many clients (daemon.max_clients); try again later",
            )) {
                let _ = (&stream).write_all(line.as_bytes());
            }
            return;
        }
        self.clients.fetch_add(1, Ordering::SeqCst);
        let (shared, policy, clients) = (shared.clone(), self.policy.clone(), self.clients.clone());
        let spawned = std::thread::Builder::new()
            .name("ctmask-client".into())
            .stack_size(super::connection::THREAD_STACK)
            .spawn(move || {
                serve_client(stream, shared, policy);
                clients.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.clients.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start a client thread");
        }
    }

    /// Accepts connections until the daemon stops, then removes the socket.
    pub(crate) fn serve(self, shared: Arc<Shared>) {
        while !shared.stopping() {
            shared.beats.server.beat();
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, &shared),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    if let Some(held) = shared.log_limit.allow("accept") {
                        tracing::warn!(error = %e, held_back = held, "accept failed");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The reply to one request of a greeted client with the role it needs (`connection.rs`).
pub(crate) fn answer(request: &Request, shared: &Arc<Shared>, queue: &mut Queue) -> Message {
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
            shared.clear_device_alert();
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
        Request::RetryAll => match queue.retry_all() {
            Ok(n) => {
                shared.publish(
                    EventKind::Retried,
                    format!("{n} failed or quarantined jobs retried by operator"),
                    None,
                    None,
                );
                shared.clear_device_alert();
                shared.wake();
                Message::Ack {
                    request: "retry_all".into(),
                    message: format!("{n} jobs queued again"),
                }
            }
            Err(e) => error("internal", e.to_string()),
        },
        Request::Recent { limit, offset } => {
            let limit = (*limit).min(protocol::RECENT_MAX);
            let slices = queue.recent_slices(limit, *offset, true);
            let series = queue.recent_series(limit);
            match (slices, series) {
                (Ok(slices), Ok(series)) => Message::Results(Results {
                    series: series
                        .iter()
                        .filter_map(|j| serde_json::from_str::<SeriesSummary>(j).ok())
                        .collect(),
                    slices,
                    total: None,
                }),
                (Err(e), _) | (_, Err(e)) => error("internal", e.to_string()),
            }
        }
        Request::Series { key, offset, limit } => {
            let series = queue.series_summary(key);
            let slices = queue.series_slices(key).map(|mut s| {
                super::series::order_slices(&mut s);
                s
            });
            match (series, slices) {
                (Ok(None), _) => error("not_found", format!("no series {key} has been reported")),
                (Ok(Some(json)), Ok(all)) => {
                    let total = all.len() as u64;
                    let mut page: Vec<_> = all
                        .into_iter()
                        .skip(*offset)
                        .take(limit.unwrap_or(usize::MAX))
                        .collect();
                    // Thumbnails for the first slices of the page only: the rest on demand, so a
                    // 2000-slice series is a short line.
                    let with = page.len().min(protocol::SERIES_THUMBNAILS);
                    match queue.attach_thumbnails(&mut page[..with]) {
                        Ok(()) => Message::Results(Results {
                            series: serde_json::from_str::<SeriesSummary>(&json).into_iter().collect(),
                            slices: page,
                            total: Some(total),
                        }),
                        Err(e) => error("internal", e.to_string()),
                    }
                }
                (Err(e), _) | (_, Err(e)) => error("internal", e.to_string()),
            }
        }
        Request::RetryForward { id } => crate::dicom::forward::answer_retry(shared, queue, *id),
        Request::Thumbnail { job_id, frame } => match queue.thumbnail(*job_id, *frame) {
            Ok(thumbnail) => Message::Thumbnail {
                job_id: *job_id,
                frame: *frame,
                thumbnail,
            },
            Err(e) => error("internal", e.to_string()),
        },
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
}
