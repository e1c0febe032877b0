//! One client connection of the local API, bounded in every direction: requests are read with a
//! 64 KiB line limit, a greeting is due within `HELLO_TIMEOUT` and a request within
//! `IDLE_TIMEOUT` (a subscribed client may stay silent: it is reading events); every write has
//! `WRITE_TIMEOUT`; what waits to be written is bounded in bytes (`daemon::outbox`), so a client that
//! requests without reading is dropped instead of growing the daemon. One subscription per
//! connection. Two threads per connection (requests, writes); their number is capped by the
//! server (`max_clients`). Pause, resume and retry need the control role (`peers.rs`).

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::Shared;
pub(crate) use crate::daemon::outbox::THREAD_STACK;
use crate::daemon::outbox::{Outbox, WRITE_TIMEOUT};
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

/// Serves one accepted connection until it closes.
pub(crate) fn serve_client(stream: UnixStream, shared: Arc<Shared>, policy: PeerPolicy) {
    let _ = stream.set_nonblocking(false);
    let Ok(out) = stream
        .try_clone()
        .and_then(|w| Outbox::start(w, MAX_QUEUED_BYTES))
    else {
        return;
    };
    match policy.role_of(&stream) {
        Ok(Role::None) => {
            tracing::warn!("refused a client that is neither root, the daemon's user nor in its groups");
            out.send(&error(
                ErrorCode::Forbidden,
                "not allowed: ask to be added to the daemon's group",
            ));
        }
        Ok(role) => handle_requests(&stream, &shared, &out, role),
        Err(e) => {
            out.send(&error(
                ErrorCode::Forbidden,
                format!("cannot check peer credentials: {e}"),
            ));
        }
    }
    // Let the writer flush what is queued (bounded by WRITE_TIMEOUT per write), then close.
    let deadline = Instant::now() + WRITE_TIMEOUT;
    while out.queued_bytes() > 0 && !out.is_closed() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    out.close();
}

fn is_timeout(e: &ProtocolError) -> bool {
    matches!(e, ProtocolError::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

fn handle_requests(stream: &UnixStream, shared: &Arc<Shared>, out: &Outbox, role: Role) {
    let mut reader = BufReader::new(stream);
    let mut greeted = false;
    let mut subscribed = false;
    let mut queue: Option<Queue> = None;
    let mut last_request = Instant::now();
    loop {
        let timeout = if greeted { IDLE_TIMEOUT } else { HELLO_TIMEOUT };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1).min(timeout)));
        if out.is_closed() || shared.stopping() {
            return;
        }
        let request = match protocol::read_message_limited::<Request, _>(&mut reader, MAX_REQUEST_BYTES) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) if is_timeout(&e) => {
                if !subscribed && last_request.elapsed() >= timeout {
                    let what = if greeted { "idle" } else { "no hello" };
                    out.send(&error(
                        ErrorCode::Timeout,
                        format!("{what} for {} s: closing", timeout.as_secs()),
                    ));
                    return;
                }
                continue;
            }
            Err(ProtocolError::Io(_)) => return,
            Err(e @ ProtocolError::TooLong) => {
                out.send(&error(
                    ErrorCode::BadRequest,
                    format!("{e} ({MAX_REQUEST_BYTES} bytes)"),
                ));
                return;
            }
            Err(e) => {
                if !out.send(&error(ErrorCode::BadRequest, e.to_string())) {
                    return;
                }
                continue;
            }
        };
        last_request = Instant::now();
        let reply = match (&request, greeted) {
            (Request::Hello { version, .. }, _) => {
                if *version == 0 {
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
            (_, true) => {
                if queue.is_none() {
                    queue = Queue::open(&shared.state_dir, &shared.models_hash)
                        .map_err(|e| tracing::error!(error = %e, "client cannot open the queue"))
                        .ok();
                }
                match queue.as_mut() {
                    Some(q) => super::handlers::answer(&request, shared, q),
                    None => error(ErrorCode::Internal, "the queue database cannot be opened"),
                }
            }
        };
        if !out.send(&reply) {
            return;
        }
    }
}
