//! The dashboard's state and its one transition: `App::update(msg) -> effects`, in the Elm style
//! ratatui's templates use. Messages are keys, daemon messages (snapshots, events, results, acks,
//! errors), connection up/down, host samples and clock ticks; effects are requests for the daemon
//! and quitting. Nothing here does I/O, so every transition is tested without a terminal or socket.
//! Key handling is in `keys.rs`; the views read this state and never change it.
//!
//! The daemon answers requests in order on one connection, so replies are matched to a FIFO of the
//! requests in flight (a `results` can answer `recent` or `series`). Requests carry the connection
//! generation they were made for, and the client drops those meant for a connection that is gone.

use std::collections::VecDeque;

use super::gpu::{GpuReading, HostSample};
use super::text::matches;
use crate::protocol::{
    Event, EventKind, JobInfo, Message, Request, Results, SeriesSummary, SliceSummary, Snapshot,
};

/// Log lines kept.
pub const LOG_CAP: usize = 500;
/// Samples kept for sparklines (five minutes at one a second).
pub const HISTORY_CAP: usize = 300;
/// Slices asked for with `recent`.
pub const RECENT_LIMIT: usize = 50;
/// How often the queue snapshot is refreshed without events.
pub const STATUS_EVERY_MS: u64 = 2_000;
/// A request unanswered this long no longer blocks asking again.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long a notice stays in the footer.
pub const NOTICE_MS: u64 = 6_000;

/// A key, independent of the terminal library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    Backspace,
    /// Ctrl-C: quits from anywhere.
    Interrupt,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    Key(Key),
    Connected { generation: u64, server: String },
    Disconnected { reason: String, retry_in_ms: u64 },
    Daemon(Message),
    ProtocolError(String),
    Host(HostSample),
    Tick { now_ms: u64 },
    Resize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send { generation: u64, request: Request },
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Queue,
    Results,
    Gpu,
    Log,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Queue, Tab::Results, Tab::Gpu, Tab::Log];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn title(self) -> &'static str {
        match self {
            Tab::Queue => "Queue",
            Tab::Results => "Results",
            Tab::Gpu => "GPU",
            Tab::Log => "Log",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    Connecting,
    Up { generation: u64, server: String },
    Down { reason: String, retry_in_ms: u64 },
}

/// What fills the footer: keys, or an input, or a question.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Help,
    Filter { input: String },
    Confirm { job_id: i64, label: String },
    Job(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Series,
    Slices,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub time_ms: u64,
    /// `None` for the dashboard's own lines.
    pub kind: Option<EventKind>,
    pub seq: Option<u64>,
    pub text: String,
}

/// A sparkline's worth of one GPU.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuHistory {
    pub latest: GpuReading,
    pub util: VecDeque<u64>,
    pub mem: VecDeque<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostHistory {
    pub gpus: Vec<GpuHistory>,
    pub latest: Option<HostSample>,
    pub cpu: VecDeque<u64>,
    pub mem: VecDeque<u64>,
}

/// Everything the daemon and the host told us; frozen as a whole by `f`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    pub snapshot: Option<Snapshot>,
    pub results: Results,
    pub log: VecDeque<LogLine>,
    pub host: HostHistory,
    /// The daemon's slices per second, sampled with the host (once a second).
    pub throughput: VecDeque<f64>,
}

/// One series opened from Results: the daemon's `series` reply, or recent slices until it comes.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesDetail {
    pub key: String,
    pub summary: Option<SeriesSummary>,
    /// In anatomical order.
    pub slices: Vec<SliceSummary>,
    pub loading: bool,
    pub selected: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Status,
    Recent,
    Series(String),
    Other,
}

#[derive(Debug, Clone)]
pub struct App {
    pub socket: String,
    pub conn: Conn,
    pub live: Data,
    pub frozen: Option<Data>,
    pub tab: Tab,
    pub mode: Mode,
    pub pane: Pane,
    /// Selected row per tab (for Results: the series list; GPU: the first GPU shown).
    pub selected: [usize; 4],
    pub slice_selected: usize,
    pub filters: [String; 4],
    pub series: Option<SeriesDetail>,
    pub slice: Option<Box<SliceSummary>>,
    pub notice: Option<(String, u64)>,
    pub now_ms: u64,
    pending: VecDeque<(Pending, u64)>,
    last_status_ms: u64,
    status_stale: bool,
    results_stale: bool,
    series_stale: bool,
    dirty: bool,
}

impl App {
    pub fn new(socket: impl Into<String>) -> App {
        App {
            socket: socket.into(),
            conn: Conn::Connecting,
            live: Data::default(),
            frozen: None,
            tab: Tab::Queue,
            mode: Mode::Normal,
            pane: Pane::Series,
            selected: [0; 4],
            slice_selected: 0,
            filters: Default::default(),
            series: None,
            slice: None,
            notice: None,
            now_ms: 0,
            pending: VecDeque::new(),
            last_status_ms: 0,
            status_stale: true,
            results_stale: true,
            series_stale: false,
            dirty: true,
        }
    }

    /// The data on screen: the frozen copy while frozen.
    pub fn shown(&self) -> &Data {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    /// Whether something visible changed since the last redraw.
    pub fn needs_redraw(&self) -> bool {
        self.dirty
    }

    /// Like `needs_redraw`, and forgets it (the caller redraws).
    pub fn take_redraw(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Key(key) => self.on_key(key),
            Msg::Connected { generation, server } => self.on_connected(generation, server),
            Msg::Disconnected { reason, retry_in_ms } => {
                self.on_disconnected(reason, retry_in_ms);
                Vec::new()
            }
            Msg::Daemon(message) => self.on_message(message),
            Msg::ProtocolError(e) => {
                self.log_own(format!("protocol error: {e}"));
                self.notify(format!("protocol error: {e}"));
                Vec::new()
            }
            Msg::Host(sample) => {
                self.on_host(sample);
                Vec::new()
            }
            Msg::Tick { now_ms } => self.on_tick(now_ms),
            Msg::Resize => {
                self.dirty = true;
                Vec::new()
            }
        }
    }

    fn on_connected(&mut self, generation: u64, server: String) -> Vec<Effect> {
        self.log_own(format!("connected to {server} at {}", self.socket));
        self.conn = Conn::Up { generation, server };
        self.pending.clear();
        self.dirty = true;
        let mut fx = vec![self.request(Request::Status)];
        fx.push(self.request(Request::Recent { limit: RECENT_LIMIT }));
        if let Some(key) = self.series.as_ref().map(|s| s.key.clone()) {
            fx.push(self.request(Request::Series { key }));
        }
        fx
    }

    fn on_disconnected(&mut self, reason: String, retry_in_ms: u64) {
        let was_up = matches!(self.conn, Conn::Up { .. } | Conn::Connecting);
        if was_up || !matches!(&self.conn, Conn::Down { reason: r, .. } if *r == reason) {
            self.log_own(format!("daemon not reachable: {reason}"));
        }
        self.conn = Conn::Down { reason, retry_in_ms };
        self.pending.clear();
        self.dirty = true;
    }

    fn on_message(&mut self, message: Message) -> Vec<Effect> {
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

    fn on_series(&mut self, key: String, results: Results) {
        if let Some(detail) = self.series.as_mut().filter(|d| d.key == key) {
            detail.summary = results.series.into_iter().next().or(detail.summary.take());
            detail.slices = results.slices;
            detail.loading = false;
            detail.selected = detail.selected.min(detail.slices.len().saturating_sub(1));
            self.dirty = true;
        }
    }

    fn on_event(&mut self, event: Event) {
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

    fn on_host(&mut self, sample: HostSample) {
        let host = &mut self.live.host;
        host.gpus.resize_with(sample.gpus.len(), GpuHistory::default);
        for (h, g) in host.gpus.iter_mut().zip(&sample.gpus) {
            push_capped(&mut h.util, u64::from(g.util_percent.unwrap_or(0)));
            push_capped(&mut h.mem, g.mem_percent().unwrap_or(0.0).round() as u64);
            h.latest = g.clone();
        }
        if let Some(c) = sample.cpu_percent {
            push_capped(&mut host.cpu, c.round() as u64);
        }
        if let Some(m) = sample.mem_percent() {
            push_capped(&mut host.mem, m.round() as u64);
        }
        host.latest = Some(sample);
        if let Some(s) = &self.live.snapshot {
            push_capped(&mut self.live.throughput, s.throughput.slices_per_s);
        }
        self.touch_live();
    }

    fn on_tick(&mut self, now_ms: u64) -> Vec<Effect> {
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
            fx.push(self.request(Request::Recent { limit: RECENT_LIMIT }));
        }
        if self.series_stale
            && let Some(key) = self.series.as_ref().map(|d| d.key.clone())
        {
            fx.push(self.request(Request::Series { key }));
        }
        fx
    }

    /// Whether a reply of this kind is still expected (and not overdue).
    fn awaiting(&self, what: &Pending) -> bool {
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
            Request::Series { key } => {
                self.series_stale = false;
                Pending::Series(key.clone())
            }
            _ => Pending::Other,
        };
        // `hello` and `subscribe` get no reply in order (the client sends them itself).
        if !matches!(request, Request::Hello { .. } | Request::Subscribe) {
            self.pending.push_back((pending, self.now_ms));
        }
        Effect::Send { generation, request }
    }

    pub fn connected(&self) -> bool {
        matches!(self.conn, Conn::Up { .. })
    }

    pub(super) fn notify(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), self.now_ms));
        self.dirty = true;
    }

    fn log_own(&mut self, text: String) {
        let line = LogLine {
            time_ms: self.now_ms,
            kind: None,
            seq: None,
            text,
        };
        push_log(&mut self.live.log, line);
        self.touch_live();
    }

    /// Marks a change to live data: visible unless frozen.
    fn touch_live(&mut self) {
        if self.frozen.is_none() {
            self.dirty = true;
        }
    }

    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub(super) fn results_stale(&self) -> bool {
        self.results_stale
    }

    /// The filter of a view: the text being typed (the filter applies as it is typed), or the
    /// applied one.
    pub fn filter(&self, tab: Tab) -> &str {
        match &self.mode {
            Mode::Filter { input } if tab == self.tab => input,
            _ => &self.filters[tab.index()],
        }
    }

    pub fn visible_jobs(&self) -> Vec<&JobInfo> {
        let f = self.filter(Tab::Queue);
        let Some(s) = &self.shown().snapshot else {
            return Vec::new();
        };
        s.jobs
            .iter()
            .filter(|j| {
                let id = j.id.to_string();
                let fields = [
                    id.as_str(),
                    j.state.as_str(),
                    &j.path,
                    j.series.as_deref().unwrap_or(""),
                    j.reason.as_deref().unwrap_or(""),
                ];
                matches(f, &fields)
            })
            .collect()
    }

    pub fn visible_series(&self) -> Vec<&SeriesSummary> {
        let f = self.filter(Tab::Results);
        (self.shown().results.series.iter())
            .filter(|s| {
                let uid = s.series_uid.as_deref().unwrap_or("");
                matches(f, &[&s.key, uid, &s.verdict])
            })
            .collect()
    }

    pub fn visible_slices(&self) -> Vec<&SliceSummary> {
        let f = self.filter(Tab::Results);
        (self.shown().results.slices.iter())
            .filter(|s| {
                let label = s.label.as_deref().unwrap_or("");
                matches(f, &[&s.file_name, &s.series_key, label])
            })
            .collect()
    }

    pub fn visible_log(&self) -> Vec<&LogLine> {
        let f = self.filter(Tab::Log);
        (self.shown().log.iter())
            .filter(|l| matches(f, &[kind_name(l.kind), &l.text]))
            .collect()
    }
}

/// How a log line's source is written.
pub fn kind_name(kind: Option<EventKind>) -> &'static str {
    use EventKind as K;
    match kind {
        None => "dashboard",
        Some(K::DaemonStarted) => "started",
        Some(K::DaemonStopping) => "stopping",
        Some(K::Queued) => "queued",
        Some(K::Done) => "done",
        Some(K::Failed) => "failed",
        Some(K::Quarantined) => "quarantine",
        Some(K::Retried) => "retried",
        Some(K::SeriesReported) => "series",
        Some(K::IntakePaused) => "paused",
        Some(K::IntakeResumed) => "resumed",
        Some(K::Reloaded) => "reloaded",
        Some(K::Warning) => "warning",
        Some(K::Other) => "other",
    }
}

fn push_capped<T>(v: &mut VecDeque<T>, x: T) {
    if v.len() == HISTORY_CAP {
        v.pop_front();
    }
    v.push_back(x);
}

/// Newest first.
fn push_log(log: &mut VecDeque<LogLine>, line: LogLine) {
    if log.len() == LOG_CAP {
        log.pop_back();
    }
    log.push_front(line);
}

/// Slices in anatomical order, as the daemon sorts them (z, then slice location, then instance
/// number, then file name), for the series view before the daemon's own list arrives.
pub fn anatomical_order(slices: &mut [SliceSummary]) {
    let tie = |a: &SliceSummary, b: &SliceSummary| (a.frame, a.job_id).cmp(&(b.frame, b.job_id));
    let by = |a: Option<f64>, b: Option<f64>| a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
    if slices.iter().all(|s| s.position_z.is_some()) {
        slices.sort_by(|a, b| by(a.position_z, b.position_z).then(tie(a, b)));
    } else if slices.iter().all(|s| s.slice_location.is_some()) {
        slices.sort_by(|a, b| by(a.slice_location, b.slice_location).then(tie(a, b)));
    } else if slices.iter().all(|s| s.instance_number.is_some()) {
        slices.sort_by(|a, b| a.instance_number.cmp(&b.instance_number).then(tie(a, b)));
    } else {
        slices.sort_by(|a, b| a.file_name.cmp(&b.file_name).then(tie(a, b)));
    }
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
