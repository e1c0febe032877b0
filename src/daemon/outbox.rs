//! A connection's outgoing lines, bounded in bytes and drained by a writer thread of its own: the
//! server's connections answer through it and the event hub broadcasts into it, so neither waits
//! on a client, and a client that does not read is dropped instead of growing the daemon. Its
//! own file so that the hub (in `Shared`) and the server both use it without importing each other.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::protocol::{self, Message};

/// One write may take this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stack of a connection's threads (they hold a line buffer and a queue connection, no more).
pub const THREAD_STACK: usize = 256 << 10;

/// A connection's outgoing lines, bounded in bytes; a writer thread drains it. Once a push
/// would exceed the bound, or a write fails, the connection is shut down and pushes fail.
#[derive(Clone)]
pub struct Outbox {
    tx: Sender<Arc<str>>,
    queued: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    stream: Arc<UnixStream>,
    max: usize,
}

impl Outbox {
    /// Starts the writer thread of `stream`.
    pub fn start(stream: UnixStream, max: usize) -> std::io::Result<Outbox> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let (tx, rx) = std::sync::mpsc::channel::<Arc<str>>();
        let out = Outbox {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            stream: Arc::new(stream),
            max,
        };
        let (stream, queued, closed) = (out.stream.clone(), out.queued.clone(), out.closed.clone());
        let rx_thread = std::thread::Builder::new()
            .name("ctmask-client-w".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // Ends when the connection closes, even while the hub still holds a sender.
                while !closed.load(Ordering::SeqCst) {
                    let line = match rx.recv_timeout(Duration::from_secs(1)) {
                        Ok(l) => l,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    if (&*stream).write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    queued.fetch_sub(line.len(), Ordering::SeqCst);
                }
                if !closed.swap(true, Ordering::SeqCst) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            });
        rx_thread?;
        Ok(out)
    }

    /// Queues a line; false when the connection is closed (or just closed for not reading).
    pub fn push(&self, line: Arc<str>) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let before = self.queued.fetch_add(line.len(), Ordering::SeqCst);
        if before + line.len() > self.max {
            self.close();
            return false;
        }
        self.tx.send(line).is_ok()
    }

    /// Queues one message as a line (an encoding failure is logged, not fatal).
    pub fn send(&self, message: &Message) -> bool {
        match protocol::encode(message) {
            Ok(line) => self.push(line.into()),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a message");
                true
            }
        }
    }

    /// Shuts the connection down both ways (the request thread's read ends too).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Bytes queued and not written yet.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn an_outbox_that_is_not_read_closes_at_its_byte_bound() {
        let (a, mut b) = UnixStream::pair().expect("pair");
        let out = Outbox::start(a, 1 << 20).expect("outbox");
        let line: Arc<str> = format!("{}\n", "x".repeat(64 << 10)).into();
        let mut pushed = 0usize;
        while out.push(line.clone()) {
            pushed += 1;
            assert!(pushed < 1000, "never bounded");
        }
        assert!(out.is_closed());
        let mut got = Vec::new();
        let _ = b.read_to_end(&mut got); // ends: the outbox shut the connection down
        assert!(got.len() <= pushed * line.len());
        assert!(!out.push("late\n".into()), "closed stays closed");
    }
}
