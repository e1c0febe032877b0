//! Keeping in step with the daemon (part of `App::update`): connection up and down, replies,
//! events, host samples and the clock tick that asks for fresh status and results.
//!
//! The daemon answers requests in order on one connection, so replies are matched to a FIFO of the
//! requests in flight (a `results` can answer `recent` or `series`). Requests carry the connection
//! generation they were made for, and the client drops those meant for a connection that is gone.

use super::app::{App, Conn, Effect, NOTICE_MS, Tab};
use super::data::{LogLine, push_capped, push_log};
use super::gpu::HostSample;
use crate::protocol::{Event, EventKind, Message, Request, Results, SliceSummary, Thumbnail};

/// Slices asked for with `recent`.
pub const RECENT_LIMIT: usize = 50;
/// How often the queue snapshot is refreshed without events.
pub const STATUS_EVERY_MS: u64 = 2_000;
/// A request unanswered this long no longer blocks asking again.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// A request waiting for its reply.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Pending {
    Status,
    Recent,
    Series(String),
    Thumbnail(i64, Option<u32>),
    Other,
}

impl App {
    pub(super) fn on_connected(&mut self, generation: u64, server: String) -> Vec<Effect> {
        self.log_own(format!("connected to {server} at {}", self.socket));
        self.conn = Conn::Up { generation, server };
        self.pending.clear();
        self.dirty = true;
        let mut fx = vec![self.request(Request::Status)];
        fx.push(self.request(Request::Recent {
            limit: RECENT_LIMIT,
            offset: 0,
        }));
        if let Some(key) = self.series.as_ref().map(|s| s.key.clone()) {
            fx.push(self.request(Request::Series {
                key,
                offset: 0,
                limit: None,
            }));
        }
        fx
    }

    pub(super) fn on_disconnected(&mut self, reason: String, retry_in_ms: u64) {
        let news = matches!(self.conn, Conn::Up { .. } | Conn::Connecting);
        if news || !matches!(&self.conn, Conn::Down { reason: r, .. } if *r == reason) {
            self.log_own(format!("daemon not reachable: {reason}"));
        }
        self.conn = Conn::Down { reason, retry_in_ms };
        self.pending.clear();
        self.dirty = true;
    }

    pub(super) fn on_message(&mut self, message: Message) -> Vec<Effect> {
        match message {
            Message::Snapshot(snapshot) => {
                self.pending.pop_front();
                self.live.snapshot = Some(*snapshot);
                self.touch_live();
            }
            Message::Results(results) => match self.pending.pop_front() {
                Some((Pending::Series(key), _)) => self.on_series(key, results),
                _ => {
                    self.live.results = results;
                    self.touch_live();
                }
            },
            Message::Event(event) => self.on_event(event),
            Message::Thumbnail {
                job_id,
                frame,
                thumbnail,
            } => {
                self.pending.pop_front();
                self.on_thumbnail(job_id, frame, thumbnail);
            }
            Message::Ack { request, message } => {
                self.pending.pop_front();
                self.log_own(format!("{request}: {message}"));
                self.notify(message);
                return vec![self.request(Request::Status)];
            }
            Message::Error { code, message } => {
                let failed = self.pending.pop_front().map(|p| p.0);
                if let (Some(Pending::Series(key)), Some(detail)) = (failed, self.series.as_mut())
                    && detail.key == key
                {
                    detail.loading = false;
                }
                self.log_own(format!("daemon refused: {code}: {message}"));
                self.notify(format!("daemon refused: {message}"));
            }
            Message::Hello { .. } | Message::Unknown => {}
        }
        Vec::new()
    }

    /// A thumbnail fetched on demand: it joins the open slice and the series' copy of it.
    pub(super) fn on_thumbnail(&mut self, job_id: i64, frame: Option<u32>, thumbnail: Option<Thumbnail>) {
        let Some(thumbnail) = thumbnail else { return };
        let same = |s: &SliceSummary| s.job_id == job_id && s.frame == frame;
        if let Some(s) = self.slice.as_mut().filter(|s| same(s)) {
            s.thumbnail = Some(thumbnail.clone());
        }
        if let Some(detail) = self.series.as_mut() {
            for s in detail.slices.iter_mut().filter(|s| same(s)) {
                s.thumbnail = Some(thumbnail.clone());
            }
        }
        self.dirty = true;
    }

    pub(super) fn on_series(&mut self, key: String, results: Results) {
        if let Some(detail) = self.series.as_mut().filter(|d| d.key == key) {
            detail.summary = results.series.into_iter().next().or(detail.summary.take());
            detail.slices = results.slices;
            detail.loading = false;
            detail.selected = detail.selected.min(detail.slices.len().saturating_sub(1));
            self.dirty = true;
        }
    }

    pub(super) fn on_event(&mut self, event: Event) {
        let known = self
            .live
            .log
            .iter()
            .any(|l| l.seq == Some(event.seq) && l.time_ms == event.time_ms);
        if known {
            return; // the backlog again, after a reconnect
        }
        use EventKind as K;
        if !matches!(event.kind, K::SeriesReported | K::Other) {
            self.status_stale = true;
        }
        if matches!(event.kind, K::Done | K::SeriesReported) {
            self.results_stale = true;
        }
        if event.kind == K::SeriesReported && self.series.as_ref().map(|d| &d.key) == event.series.as_ref() {
            self.series_stale = true;
        }
        let line = LogLine {
            time_ms: event.time_ms,
            kind: Some(event.kind),
            seq: Some(event.seq),
            text: event.message,
        };
        push_log(&mut self.live.log, line);
        self.touch_live();
    }

    pub(super) fn on_host(&mut self, sample: HostSample) {
        self.live.host.record(sample);
        if let Some(s) = &self.live.snapshot {
            push_capped(&mut self.live.throughput, s.throughput.slices_per_s);
        }
        self.touch_live();
    }

    pub(super) fn on_tick(&mut self, now_ms: u64) -> Vec<Effect> {
        self.now_ms = now_ms;
        if self.notice.as_ref().is_some_and(|(_, t)| now_ms >= t + NOTICE_MS) {
            self.notice = None;
            self.dirty = true;
        }
        if !matches!(self.conn, Conn::Up { .. }) {
            return Vec::new();
        }
        let mut fx = Vec::new();
        let due = now_ms >= self.last_status_ms + STATUS_EVERY_MS;
        if (self.status_stale || due) && !self.awaiting(&Pending::Status) {
            fx.push(self.request(Request::Status));
        }
        if self.results_stale && self.tab == Tab::Results && !self.awaiting(&Pending::Recent) {
            fx.push(self.request(Request::Recent {
                limit: RECENT_LIMIT,
                offset: 0,
            }));
        }
        // An open series is refreshed when the daemon reports it again (not while frozen).
        if self.series_stale
            && self.frozen.is_none()
            && let Some(key) = self.series.as_ref().map(|d| d.key.clone())
            && !self.awaiting(&Pending::Series(key.clone()))
        {
            fx.push(self.request(Request::Series {
                key,
                offset: 0,
                limit: None,
            }));
        }
        // The open slice's thumbnail, when its series page came without it.
        if let Some((job_id, frame)) = self
            .slice
            .as_ref()
            .filter(|s| s.thumbnail.is_none())
            .map(|s| (s.job_id, s.frame))
            && self.thumbnails_asked.insert((job_id, frame))
        {
            fx.push(self.request(Request::Thumbnail { job_id, frame }));
        }
        fx
    }

    /// Whether a reply of this kind is still expected (and not overdue).
    pub(super) fn awaiting(&self, what: &Pending) -> bool {
        self.pending
            .iter()
            .any(|(p, t)| p == what && self.now_ms < t + REQUEST_TIMEOUT_MS)
    }

    /// Records a request in flight and returns the effect that sends it.
    pub(super) fn request(&mut self, request: Request) -> Effect {
        let generation = match &self.conn {
            Conn::Up { generation, .. } => *generation,
            _ => 0,
        };
        let pending = match &request {
            Request::Status => {
                self.status_stale = false;
                self.last_status_ms = self.now_ms;
                Pending::Status
            }
            Request::Recent { .. } => {
                self.results_stale = false;
                Pending::Recent
            }
            Request::Series { key, .. } => {
                self.series_stale = false;
                Pending::Series(key.clone())
            }
            Request::Thumbnail { job_id, frame } => Pending::Thumbnail(*job_id, *frame),
            _ => Pending::Other,
        };
        // `hello` and `subscribe` get no reply in order (the client sends them itself).
        if !matches!(request, Request::Hello { .. } | Request::Subscribe) {
            self.pending.push_back((pending, self.now_ms));
        }
        Effect::Send { generation, request }
    }
}
