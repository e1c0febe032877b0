//! One client connection of the local API, bounded in every direction: requests are read with a
//! 64 KiB line limit, a greeting is due within `HELLO_TIMEOUT` and a request within
//! `IDLE_TIMEOUT` (a subscribed client may stay silent: it is reading events); every write has
//! `WRITE_TIMEOUT`; what waits to be written is bounded in bytes (`daemon::outbox`), so a client that
//! requests without reading is dropped instead of growing the daemon. One subscription per
//! connection. Two tokio tasks per connection (requests, writes) on the server's one thread, so an
//! idle client costs a few kilobytes, not two threads; their number is capped by the server
//! (`max_clients`). The handlers, which read SQLite, run on the runtime's small blocking pool so
//! that a slow query never holds up the other clients. Pause, resume and retry need the control
//! role (`peers.rs`).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::daemon::Shared;
use crate::daemon::outbox::Outbox;
pub(crate) use crate::daemon::outbox::WRITE_TIMEOUT;
use crate::daemon::peers::{PeerPolicy, Role};
use crate::daemon::queue::Queue;
use crate::protocol::{self, ErrorCode, Message, PROTOCOL_VERSION, ProtocolError, Request};

/// Longest request line.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Bytes queued for one client before it is dropped as not reading.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// A client must greet within this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that is not subscribed and sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

/// Serves one accepted connection until it closes, or until `stop` turns true (then what is
/// queued, the "daemon stopping" event among it, is still written within `WRITE_TIMEOUT`).
pub(crate) async fn serve_client(
    stream: UnixStream,
    shared: Arc<Shared>,
    policy: PeerPolicy,
    stop: watch::Receiver<bool>,
) {
    let role = peer_role(&stream, policy).await;
    let (read, write) = stream.into_split();
    let out = Outbox::new(MAX_QUEUED_BYTES);
    let writer = tokio::spawn({
        let out = out.clone();
        async move { out.write_to(write).await }
    });
    match role {
        Ok(Role::None) => {
            tracing::warn!("refused a client that is neither root, the daemon's user nor in its groups");
            out.send(&error(
                ErrorCode::Forbidden,
                "not allowed: ask to be added to the daemon's group",
            ));
        }
        Ok(role) => handle_requests(read, &shared, &out, role, stop).await,
        Err(e) => {
            out.send(&error(
                ErrorCode::Forbidden,
                format!("cannot check peer credentials: {e}"),
            ));
        }
    }
    // Let the writer flush what is queued (within WRITE_TIMEOUT), then close.
    out.finish();
    if tokio::time::timeout(WRITE_TIMEOUT, writer).await.is_err() {
        out.close();
    }
}

/// The peer's role; the group database (which NSS may serve from the network) is read on the
/// blocking pool.
async fn peer_role(stream: &UnixStream, policy: PeerPolicy) -> std::io::Result<Role> {
    let fd = stream.as_fd().try_clone_to_owned()?;
    tokio::task::spawn_blocking(move || policy.role_of(&fd))
        .await
        .map_err(std::io::Error::other)?
}

/// Returns once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Reads up to the end of a line into `buf`, at most `MAX_REQUEST_BYTES + 1` bytes in all.
/// Cancel-safe: a partial line stays in `buf` for the next call.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let room = (MAX_REQUEST_BYTES + 1).saturating_sub(buf.len()) as u64;
    reader.take(room).read_until(b'\n', buf).await.map(|_| ())
}

async fn handle_requests(
    read: OwnedReadHalf,
    shared: &Arc<Shared>,
    out: &Outbox,
    role: Role,
    stop: watch::Receiver<bool>,
) {
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    let mut greeted = false;
    let mut subscribed = false;
    let mut queue: Option<Queue> = None;
    let mut last_request = Instant::now();
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        let timeout = if greeted { IDLE_TIMEOUT } else { HELLO_TIMEOUT };
        if out.is_closed() || shared.stopping() {
            return;
        }
        tokio::select! {
            read = read_line(&mut reader, &mut buf) => {
                if read.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(last_request + timeout), if !subscribed => {
                let what = if greeted { "idle" } else { "no hello" };
                out.send(&error(
                    ErrorCode::Timeout,
                    format!("{what} for {} s: closing", timeout.as_secs()),
                ));
                return;
            }
            () = &mut stop => return,
            () = out.closed() => return,
        }
        let line = std::mem::take(&mut buf);
        if line.is_empty() {
            return; // the client closed its end
        }
        if line.len() > MAX_REQUEST_BYTES {
            out.send(&error(
                ErrorCode::BadRequest,
                format!("{} ({MAX_REQUEST_BYTES} bytes)", ProtocolError::TooLong),
            ));
            return;
        }
        let line = String::from_utf8_lossy(&line);
        if line.trim().is_empty() {
            continue;
        }
        let request = match protocol::decode::<Request>(&line) {
            Ok(r) => r,
            Err(e) => {
                if !out.send(&error(ErrorCode::BadRequest, e.to_string())) {
                    return;
                }
                continue;
            }
        };
        last_request = Instant::now();
        let reply = match (request, greeted) {
            (Request::Hello { version, .. }, _) => {
                if version == 0 {
                    error(ErrorCode::UnsupportedVersion, "protocol version 0 does not exist")
                } else {
                    greeted = true;
                    Message::Hello {
                        version: PROTOCOL_VERSION,
                        server: format!("ctmask {}", env!("CARGO_PKG_VERSION")),
                    }
                }
            }
            (_, false) => error(ErrorCode::HelloRequired, "send hello first"),
            (Request::Subscribe, true) if subscribed => {
                error(ErrorCode::AlreadySubscribed, "one subscription per connection")
            }
            (Request::Subscribe, true) => {
                subscribed = true;
                shared.hub.subscribe(out.clone());
                continue;
            }
            (
                Request::Pause
                | Request::Resume
                | Request::Retry { .. }
                | Request::RetryAll
                | Request::RetryForward { .. },
                true,
            ) if role < Role::Control => error(
                ErrorCode::Forbidden,
                "pause, resume and retries need the control role: root, the daemon's user or daemon.control_group",
            ),
            (request, true) => answer(request, shared, &mut queue).await,
        };
        if !out.send(&reply) {
            return;
        }
    }
}

/// A handler's reply, computed on the blocking pool with the connection's queue (opened on the
/// first request that needs it).
async fn answer(request: Request, shared: &Arc<Shared>, queue: &mut Option<Queue>) -> Message {
    let (shared, mut held) = (shared.clone(), queue.take());
    let done = tokio::task::spawn_blocking(move || {
        if held.is_none() {
            held = Queue::open(&shared.state_dir, &shared.models_hash)
                .map_err(|e| tracing::error!(error = %e, "client cannot open the queue"))
                .ok();
        }
        let reply = match held.as_mut() {
            Some(q) => super::handlers::answer(&request, &shared, q),
            None => error(ErrorCode::Internal, "the queue database cannot be opened"),
        };
        (held, reply)
    })
    .await;
    match done {
        Ok((held, reply)) => {
            *queue = held;
            reply
        }
        Err(e) => error(ErrorCode::Internal, format!("the request failed: {e}")),
    }
}
