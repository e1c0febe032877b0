//! What `status` answers (the daemon's state at one moment) and what `subscribe` streams (events).

use serde::{Deserialize, Serialize};

use super::JobState;

/// The daemon's state at one moment (`status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub protocol: u32,
    pub daemon_version: String,
    pub pid: u32,
    pub time_ms: u64,
    pub uptime_s: f64,
    pub device: String,
    pub models: Vec<ModelInfo>,
    pub watch: Vec<String>,
    pub intake: Intake,
    pub counts: QueueCounts,
    /// Pending, running, failed and quarantined jobs (newest first, capped).
    pub jobs: Vec<JobInfo>,
    pub throughput: Throughput,
    #[serde(default)]
    pub disk: Option<DiskInfo>,
    /// DICOM forwarding (None when no destination is configured).
    #[serde(default)]
    pub outbox: Option<OutboxStatus>,
}

/// The DICOM forwarding outbox: counts, and the rows not yet sent (newest first, capped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub pending: u64,
    pub sent: u64,
    /// Gave up after the configured retries; `retry_forward` sends them again.
    pub failed: u64,
    pub items: Vec<OutboxItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub id: i64,
    /// `AE@host:port`.
    pub destination: String,
    pub series: String,
    /// `seg`, `sr` or `sc`.
    pub kind: String,
    /// `pending` or `failed`.
    pub state: String,
    pub attempts: u32,
    pub reason: Option<String>,
    /// Seconds until the next try of a pending row that already failed once.
    #[serde(default)]
    pub next_retry_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub sha256: String,
    /// What the model was trained on (the model file's `training_data` metadata), e.g.
    /// `synthetic phantoms`; None when the file does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<String>,
}

impl ModelInfo {
    /// Trained on synthetic phantoms (a demo model).
    pub fn is_phantom_trained(&self) -> bool {
        self.training_data
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().contains("synthetic"))
    }
}

/// The banner shown while a phantom-trained model is loaded.
pub const DEMO_MODEL_BANNER: &str = "demo model: not for real scans (trained on synthetic phantoms)";

/// [`DEMO_MODEL_BANNER`] when any of `models` was trained on phantoms.
pub fn demo_banner(models: &[ModelInfo]) -> Option<&'static str> {
    models
        .iter()
        .any(ModelInfo::is_phantom_trained)
        .then_some(DEMO_MODEL_BANNER)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Intake {
    pub paused: bool,
    /// Why intake is paused, e.g. `paused by operator`, `low disk space: ...`.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub quarantined: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: i64,
    pub state: JobState,
    /// Empty unless the daemon's `show_input_paths` is on; then the input's path relative to
    /// its watch folder.
    pub path: String,
    pub series: Option<String>,
    pub age_s: f64,
    pub attempts: u32,
    pub reason: Option<String>,
    /// Seconds until the next try of a failed job.
    #[serde(default)]
    pub next_retry_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Slices screened per second over the last minute.
    pub slices_per_s: f64,
    /// Slices screened since the daemon started.
    pub slices_total: u64,
    /// Mean model time per slice (ms), last minute.
    pub mean_model_ms: f64,
    /// Mean daemon overhead per slice (read, outputs, queue; ms), last minute.
    pub mean_overhead_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_percent: f64,
}

/// One thing that happened in the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: EventKind,
    pub message: String,
    #[serde(default)]
    pub job_id: Option<i64>,
    #[serde(default)]
    pub series: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DaemonStarted,
    DaemonStopping,
    Queued,
    Done,
    Failed,
    Quarantined,
    Retried,
    SeriesReported,
    IntakePaused,
    IntakeResumed,
    Reloaded,
    Warning,
    #[serde(other)]
    Other,
}
