//! The event hub: every event goes to a backlog (for clients that subscribe later) and to each
//! subscribed connection's `Outbox`, which is bounded in bytes: a subscriber that stops reading
//! is dropped (it reconnects), never buffered without end, and no thread waits on it (the
//! daemon's threads publish; the server's tokio tasks write).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::outbox::Outbox;
use crate::clock::now_ms;
use crate::protocol::{self, Event, EventKind, Message};

/// Events kept for clients that subscribe later.
const BACKLOG: usize = 200;

/// Broadcast of events to subscribers, with a backlog.
#[derive(Default)]
pub struct Hub {
    seq: AtomicU64,
    subscribers: Mutex<Vec<Outbox>>,
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
            let line: std::sync::Arc<str> = line.into();
            if let Ok(mut subs) = self.subscribers.lock() {
                subs.retain(|s| s.push(line.clone()));
            }
        }
        event
    }

    /// Sends the backlog to `out`, then every later event (no event falls between the two).
    pub fn subscribe(&self, out: Outbox) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let backlog: Vec<Event> = self
            .backlog
            .lock()
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default();
        for e in backlog {
            if let Ok(line) = protocol::encode(&Message::Event(e)) {
                out.push(line.into());
            }
        }
        subs.push(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_keeps_a_backlog_and_broadcasts() {
        let hub = Hub::default();
        hub.publish(EventKind::Queued, "job 1 queued".into(), Some(1), None);
        let out = Outbox::new(1 << 20);
        hub.subscribe(out.clone());
        let e = hub.publish(EventKind::Done, "job 1 done".into(), Some(1), None);
        assert_eq!(e.seq, 2);
        let lines = out.take_lines();
        let mut lines = lines.iter().map(|l| l.trim_end());
        let first: Message = protocol::decode(lines.next().expect("line")).expect("decode");
        assert!(
            matches!(first, Message::Event(ref ev) if ev.seq == 1),
            "{first:?}"
        );
        let second: Message = protocol::decode(lines.next().expect("line")).expect("decode");
        assert_eq!(second, Message::Event(e));
    }
}
