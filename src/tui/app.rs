//! The dashboard's state and its one transition: `App::update(msg) -> effects`, in the Elm style
//! ratatui's templates use. Messages are keys, daemon messages (snapshots, events, results, acks,
//! errors), connection up/down, host samples and clock ticks; effects are requests for the daemon
//! and quitting. Nothing here does I/O, so every transition is tested without a terminal or socket.
//! Key handling is in `keys.rs`, replies, events and ticks in `sync.rs`, and what is known in
//! `data.rs`; the views read this state and never change it.

use std::collections::VecDeque;

use super::data::{Data, LogLine, SeriesDetail, kind_name, push_log};
use super::gpu::HostSample;
use super::sync::Pending;
use super::text::matches;
use crate::protocol::{JobInfo, Label, Message, Request, SeriesSummary, SliceSummary};

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
    pub(super) pending: VecDeque<(Pending, u64)>,
    pub(super) last_status_ms: u64,
    pub(super) status_stale: bool,
    pub(super) results_stale: bool,
    pub(super) series_stale: bool,
    /// Thumbnails asked for on demand (each at most once: a slice may have none).
    pub(super) thumbnails_asked: std::collections::HashSet<(i64, Option<u32>)>,
    pub(super) dirty: bool,
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
            thumbnails_asked: Default::default(),
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

    pub fn connected(&self) -> bool {
        matches!(self.conn, Conn::Up { .. })
    }

    pub(super) fn notify(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), self.now_ms));
        self.dirty = true;
    }

    pub(super) fn log_own(&mut self, text: String) {
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
    pub(super) fn touch_live(&mut self) {
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
                matches(f, &[&s.key, uid, s.verdict.as_str()])
            })
            .collect()
    }

    pub fn visible_slices(&self) -> Vec<&SliceSummary> {
        let f = self.filter(Tab::Results);
        (self.shown().results.slices.iter())
            .filter(|s| {
                let label = s.label.map_or("", Label::as_str);
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

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
