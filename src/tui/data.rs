//! What the dashboard knows, apart from how it is shown: the daemon's last snapshot and results,
//! the event log, the host's sample history and the throughput history (`Data`, which `f`
//! freezes as a whole), an opened series, and the helpers that keep these bounded and ordered.

use std::collections::VecDeque;

use super::gpu::{GpuReading, HostSample};
use crate::protocol::{EventKind, Results, SeriesSummary, SliceSummary, Snapshot};

/// Log lines kept.
pub const LOG_CAP: usize = 500;
/// Samples kept for sparklines (five minutes at one a second).
pub const HISTORY_CAP: usize = 300;

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

impl HostHistory {
    /// Adds one sample to the per-GPU, CPU and memory histories.
    pub fn record(&mut self, sample: HostSample) {
        self.gpus.resize_with(sample.gpus.len(), GpuHistory::default);
        for (h, g) in self.gpus.iter_mut().zip(&sample.gpus) {
            push_capped(&mut h.util, u64::from(g.util_percent.unwrap_or(0)));
            push_capped(&mut h.mem, g.mem_percent().unwrap_or(0.0).round() as u64);
            h.latest = g.clone();
        }
        if let Some(c) = sample.cpu_percent {
            push_capped(&mut self.cpu, c.round() as u64);
        }
        if let Some(m) = sample.mem_percent() {
            push_capped(&mut self.mem, m.round() as u64);
        }
        self.latest = Some(sample);
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

pub fn push_capped<T>(v: &mut VecDeque<T>, x: T) {
    if v.len() == HISTORY_CAP {
        v.pop_front();
    }
    v.push_back(x);
}

/// Newest first.
pub fn push_log(log: &mut VecDeque<LogLine>, line: LogLine) {
    if log.len() == LOG_CAP {
        log.pop_back();
    }
    log.push_front(line);
}

/// Slices in anatomical order, as the daemon sorts them (`protocol::anatomical_order`), for the
/// series view before the daemon's own list arrives.
pub fn anatomical_order(slices: &mut [SliceSummary]) {
    crate::protocol::anatomical_order(slices);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anatomical_order_falls_back_like_the_daemon() {
        let s = |z: Option<f64>, inst: Option<i32>, name: &str| SliceSummary {
            position_z: z,
            instance_number: inst,
            file_name: name.into(),
            ..SliceSummary::default()
        };
        let mut v = vec![s(Some(3.0), Some(1), "a"), s(Some(-1.0), Some(2), "b")];
        anatomical_order(&mut v);
        assert_eq!(v[0].file_name, "b");
        let mut v = vec![s(None, Some(9), "a"), s(Some(1.0), Some(2), "b")];
        anatomical_order(&mut v);
        assert_eq!(v[0].file_name, "b", "instance numbers when a z is missing");
        let mut v = vec![s(None, None, "b"), s(None, Some(1), "a")];
        anatomical_order(&mut v);
        assert_eq!(v[0].file_name, "a", "file names last");
    }
}
