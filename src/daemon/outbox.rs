//! A connection's outgoing lines, bounded in bytes and drained by a writer task of its own (tokio,
//! on the server's runtime): the server's connections answer through it and the event hub
//! broadcasts into it from the daemon's threads, so neither waits on a client, and a client that
//! does not read is dropped instead of growing the daemon. Pushing is synchronous (a lock and a
//! tokio `Notify`), so the hub needs no runtime. Its own file so that the hub (in `Shared`) and
//! the server both use it without importing each other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use crate::protocol::{self, Message};

/// One write may take this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's outgoing lines, bounded in bytes; a writer task drains it (`write_to`). Once a
/// push would exceed the bound, or a write fails, the outbox closes (the connection with it) and
/// pushes fail.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    lines: Mutex<VecDeque<Arc<str>>>,
    queued: AtomicUsize,
    /// Whether the outbox is closed; the writer and the connection's reader wait on it.
    closed: watch::Sender<bool>,
    /// No more lines come: the writer ends once the queue is empty.
    finishing: AtomicBool,
    /// Wakes the writer for a line or the finish (one waiter, so a permit is never lost).
    more: Notify,
    max: usize,
}

impl Outbox {
    /// An empty outbox that holds at most `max` bytes.
    pub fn new(max: usize) -> Outbox {
        Outbox {
            inner: Arc::new(Inner {
                lines: Mutex::new(VecDeque::new()),
                queued: AtomicUsize::new(0),
                closed: watch::Sender::new(false),
                finishing: AtomicBool::new(false),
                more: Notify::new(),
                max,
            }),
        }
    }

    /// Queues a line; false when the connection is closed (or just closed for not reading).
    pub fn push(&self, line: Arc<str>) -> bool {
        let inner = &self.inner;
        if self.is_closed() {
            return false;
        }
        let before = inner.queued.fetch_add(line.len(), Ordering::SeqCst);
        if before + line.len() > inner.max {
            self.close();
            return false;
        }
        inner
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(line);
        inner.more.notify_one();
        true
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

    /// Closes the outbox: the writer stops at once (mid-line too) and the connection ends.
    pub fn close(&self) {
        self.inner
            .closed
            .send_if_modified(|closed| !std::mem::replace(closed, true));
    }

    /// Returns once the outbox is closed.
    pub async fn closed(&self) {
        let _ = self.inner.closed.subscribe().wait_for(|closed| *closed).await;
    }

    /// No more requests are answered: the writer writes what is queued, then ends.
    pub fn finish(&self) {
        self.inner.finishing.store(true, Ordering::SeqCst);
        self.inner.more.notify_one();
    }

    /// Bytes queued and not written yet.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    fn pop(&self) -> Option<Arc<str>> {
        self.inner
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// The writer: writes the queued lines to `w` (each within `WRITE_TIMEOUT`) until the outbox
    /// closes, a write fails, or it was told to finish and is empty. Closes the outbox on the way
    /// out, so pushes fail from then on.
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, mut w: W) {
        let inner = &self.inner;
        while !self.is_closed() {
            let Some(line) = self.pop() else {
                if inner.finishing.load(Ordering::SeqCst) {
                    break;
                }
                tokio::select! {
                    () = inner.more.notified() => {}
                    () = self.closed() => {}
                }
                continue;
            };
            let written = tokio::select! {
                r = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(line.as_bytes())) => matches!(r, Ok(Ok(()))),
                () = self.closed() => false,
            };
            if !written {
                break;
            }
            inner.queued.fetch_sub(line.len(), Ordering::SeqCst);
        }
        self.close();
        let _ = w.shutdown().await;
    }

    /// Takes the queued lines without a writer (tests of what others push).
    #[cfg(test)]
    pub(crate) fn take_lines(&self) -> Vec<Arc<str>> {
        let lines: Vec<Arc<str>> = std::iter::from_fn(|| self.pop()).collect();
        let bytes: usize = lines.iter().map(|l| l.len()).sum();
        self.inner.queued.fetch_sub(bytes, Ordering::SeqCst);
        lines
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// What the writer of `out` writes to a socket before it ends (then it shuts the socket down).
    fn written(out: &Outbox) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
            out.write_to(a).await;
            let mut got = Vec::new();
            let _ = b.read_to_end(&mut got).await;
            got
        })
    }

    #[test]
    fn an_outbox_that_is_not_read_closes_at_its_byte_bound() {
        let out = Outbox::new(1 << 20);
        let line: Arc<str> = format!("{}\n", "x".repeat(64 << 10)).into();
        let mut pushed = 0usize;
        while out.push(line.clone()) {
            pushed += 1;
            assert!(pushed < 1000, "never bounded");
        }
        assert!(out.is_closed());
        let got = written(&out); // at once: the outbox is closed
        assert!(got.len() <= pushed * line.len());
        assert!(!out.push("late\n".into()), "closed stays closed");
    }

    #[test]
    fn the_writer_writes_what_is_queued_then_finishes() {
        let out = Outbox::new(1 << 20);
        assert!(out.push("one\n".into()) && out.push("two\n".into()));
        out.finish();
        assert_eq!(written(&out), b"one\ntwo\n");
        assert_eq!(out.queued_bytes(), 0);
        assert!(out.is_closed());
    }
}
