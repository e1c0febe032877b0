//! The local API: a Unix socket (mode from the settings, 0660 by default, owned by the configured
//! group) speaking `protocol`. The socket appears with its final permissions (bound under a
//! temporary name, chmod/chown, renamed into place); a non-socket at its path is left alone and
//! refused. At most `max_clients` connections are served (`connection.rs`: timeouts, bounded
//! output, roles from `peers.rs`); `hub.rs` broadcasts events; `handlers.rs` answers each request
//! kind with its own function, dispatched from one match. `protocol::Client` is the other end
//! (`ctmask status`, the dashboard). Laid out as mini-redis's `server.rs` / `connection.rs`, and
//! like mini-redis on tokio: a current-thread runtime on the server's own thread holds every
//! client as a pair of tasks (hundreds of idle clients cost memory, not threads), with a small
//! blocking pool for the handlers; the rest of the daemon stays on its threads and std channels.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

mod connection;
mod handlers;

use super::Shared;
use super::peers::{PeerPolicy, group_id};
use super::settings::DaemonSettings;
use crate::protocol::{self, ErrorCode};
use connection::{WRITE_TIMEOUT, error, serve_client};

/// Threads of the blocking pool that runs the handlers (SQLite reads, the group database).
const BLOCKING_THREADS: usize = 4;
/// Stack of the server's threads (they hold a line buffer and a queue connection, no more).
const THREAD_STACK: usize = 512 << 10;
/// How often the accept loop beats and looks for the stop.
const TICK: Duration = Duration::from_millis(50);

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

    /// Serves a new connection as a task, or refuses it at once when `max_clients` are
    /// connected (a short, non-blocking error line; no task).
    fn admit(&self, stream: tokio::net::UnixStream, shared: &Arc<Shared>, stop: &watch::Receiver<bool>) {
        if self.clients.load(Ordering::SeqCst) >= self.max_clients {
            // Written on the plain (non-blocking) socket, without a task: tokio's `try_write`
            // answers from the readiness its reactor has seen, which may lag a fresh socket.
            if let (Ok(line), Ok(stream)) = (
                protocol::encode(&error(
                    ErrorCode::Busy,
                    "too many clients (daemon.max_clients); try again later",
                )),
                stream.into_std(),
            ) {
                let _ = (&stream).write_all(line.as_bytes());
            }
            return;
        }
        let held = Held::new(&self.clients);
        let (shared, policy, stop) = (shared.clone(), self.policy.clone(), stop.clone());
        tokio::spawn(async move {
            serve_client(stream, shared, policy, stop).await;
            drop(held);
        });
    }

    /// Accepts connections until the daemon stops, removes the socket, then lets the
    /// connections write what they hold (the "daemon stopping" event) and close.
    pub(crate) fn serve(self, shared: Arc<Shared>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("ctmask-server")
            .thread_stack_size(THREAD_STACK)
            .build();
        match runtime {
            Ok(runtime) => {
                runtime.block_on(self.run(&shared));
                runtime.shutdown_timeout(Duration::from_secs(1));
            }
            // the server thread ends; the supervisor sees it stop beating
            Err(e) => {
                tracing::error!(error = %e, "cannot start the server's runtime");
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    async fn run(&self, shared: &Arc<Shared>) {
        let (stop_tx, stop) = watch::channel(false);
        if let Err(e) = self.accept_until_stopped(shared, &stop).await {
            tracing::error!(error = %e, "cannot watch the socket");
        }
        let _ = std::fs::remove_file(&self.path);
        stop_tx.send_replace(true);
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT + Duration::from_secs(1);
        while self.clients.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn accept_until_stopped(
        &self,
        shared: &Arc<Shared>,
        stop: &watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let listener = tokio::net::UnixListener::from_std(self.listener.try_clone()?)?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => self.admit(stream, shared, stop),
                    Err(e) => {
                        if let Some(held) = shared.log_limit.allow("accept") {
                            tracing::warn!(error = %e, held_back = held, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tick.tick() => {
                    shared.beats.server.beat();
                    if shared.stopping() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// One connection counted in `Server::clients` while it lives (a panicking task too).
struct Held(Arc<AtomicUsize>);

impl Held {
    fn new(clients: &Arc<AtomicUsize>) -> Held {
        clients.fetch_add(1, Ordering::SeqCst);
        Held(clients.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
