//! The daemon <-> client protocol (dashboard, `ctmask status`): one JSON object per line over the
//! daemon's Unix socket, each tagged by `"type"`. The client opens with `hello` (its protocol
//! version); the daemon answers `hello` with its own and then serves requests: `status` ->
//! `snapshot`, `subscribe` (once per connection) -> a backlog of recent `event`s then every new
//! one, `pause`/`resume` intake, `retry` a failed job and `retry_all` -> `ack` (control role),
//! `recent` -> `results` (newest first, pages of at most `RECENT_MAX`), `series` -> `results` of
//! one series (slices in anatomical order, paged, thumbnails for the first `SERIES_THUMBNAILS`),
//! `thumbnail` -> one slice's `thumbnail`; any failure -> `error`. No message carries an input's
//! path or file name (`JobInfo::path` only with the daemon's `show_input_paths`).
//!
//! Compatibility: fields may be added in a version (`#[serde(default)]` on new ones), never renamed
//! or removed; unknown fields are ignored and unknown message types decode to `Unknown`, so an older
//! peer can skip what a newer one sends. Thumbnails travel as hex strings to keep lines short.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line either side accepts.
pub const MAX_LINE_BYTES: usize = 8 << 20;
/// Longest side of a result thumbnail, in pixels.
pub const THUMBNAIL_MAX_SIDE: u32 = 48;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("malformed message: {source}")]
    Decode { source: serde_json::Error },
    #[error("message longer than the line limit")]
    TooLong,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
        #[serde(default)]
        client: String,
    },
    Status,
    Subscribe,
    Pause,
    Resume,
    Retry {
        job_id: i64,
    },
    /// Every failed and quarantined job back to pending, and intake resumed after a run of
    /// screening failures (a broken device) paused it.
    RetryAll,
    /// The newest results, a page of at most `RECENT_MAX` slices after skipping `offset`.
    Recent {
        #[serde(default = "default_recent_limit")]
        limit: usize,
        #[serde(default)]
        offset: usize,
    },
    /// One series in detail: `results` with its summary and its slices in anatomical order, from
    /// `offset`, at most `limit` (all when absent) and `total` set; thumbnails ride along for at
    /// most `SERIES_THUMBNAILS` slices of the page, the others are fetched with `thumbnail`.
    Series {
        key: String,
        #[serde(default)]
        offset: usize,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// One slice's thumbnail (on demand, for the slice shown).
    Thumbnail {
        job_id: i64,
        #[serde(default)]
        frame: Option<u32>,
    },
    /// Sends failed DICOM forwards again: one outbox row, or every failed one (`id` absent).
    RetryForward {
        #[serde(default)]
        id: Option<i64>,
    },
    /// A request type this build does not know (from a newer client).
    #[serde(other)]
    Unknown,
}

fn default_recent_limit() -> usize {
    50
}

/// Most slices one `recent` reply carries (page with `offset` for more).
pub const RECENT_MAX: usize = 200;
/// Most slices of one `series` page that carry their thumbnail.
pub const SERIES_THUMBNAILS: usize = 64;

/// What the daemon sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        version: u32,
        server: String,
    },
    Snapshot(Box<Snapshot>),
    Event(Event),
    Results(Results),
    /// The reply to `thumbnail` (`None`: that slice has none).
    Thumbnail {
        job_id: i64,
        frame: Option<u32>,
        thumbnail: Option<Thumbnail>,
    },
    /// A request was carried out (`pause`, `resume`, `retry`).
    Ack {
        request: String,
        message: String,
    },
    Error {
        code: String,
        message: String,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Done,
    /// Failed, waiting for a retry.
    Failed,
    /// Failed too often or unreadable: kept aside with its reason.
    Quarantined,
    #[serde(other)]
    Unknown,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Quarantined => "quarantined",
            JobState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> JobState {
        match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "quarantined" => JobState::Quarantined,
            _ => JobState::Unknown,
        }
    }
}

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

/// Recent series and slices (`recent`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Newest first.
    pub series: Vec<SeriesSummary>,
    /// Newest first.
    pub slices: Vec<SliceSummary>,
    /// For `series`: how many slices the series has (pages with `offset` and `limit`).
    #[serde(default)]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// The series' output folder name (series UID, or `dir-<hash>` for loose images).
    pub key: String,
    pub series_uid: Option<String>,
    pub slice_count: u32,
    /// Slices per classifier label.
    pub counts: BTreeMap<String, u32>,
    /// `covid`, `pneumonia`, `control`, or `unclassified`.
    pub verdict: String,
    /// The verdict rule, spelled out with its thresholds.
    pub rule: String,
    pub ggo_ml: Option<f64>,
    pub consolidation_ml: Option<f64>,
    /// Lesion pixels over lung pixels, all slices, in percent.
    pub involvement_percent: Option<f64>,
    pub lesion_counts: BTreeMap<String, u32>,
    /// How many times the series was reported (late slices report it again).
    pub revision: u32,
    pub updated_ms: u64,
}

/// One screened slice, as the daemon records it (also the per-slice row of a series report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceSummary {
    pub job_id: i64,
    pub frame: Option<u32>,
    pub series_key: String,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    pub instance_number: Option<i32>,
    pub slice_location: Option<f64>,
    pub position_z: Option<f64>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    /// The slice's name: its outputs' stem (SOP instance UID, or the content hash's first 16 hex
    /// digits; `_f<frame>` for a frame). Never the input's file name (it may hold a patient name).
    pub file_name: String,
    /// The per-slice report's file name inside the series folder.
    pub report: String,
    pub label: Option<String>,
    pub probabilities: Option<[f32; 3]>,
    /// Counted lesions per class (lesions flagged outside the lung are not counted).
    pub lesion_counts: BTreeMap<String, u32>,
    /// Lesions flagged outside the lung field by the lung gate (listed in the slice report only).
    #[serde(default)]
    pub lesions_outside_lung: u32,
    /// The lung gate's setting when the slice was screened (None: not gated).
    #[serde(default)]
    pub lung_gate_min_fraction: Option<f64>,
    /// GGO and consolidation pixels counted (inside the lung field when the gate is on).
    pub ggo_px: u64,
    pub consolidation_px: u64,
    pub lung_px: Option<u64>,
    pub involvement: BTreeMap<String, f64>,
    pub device: String,
    /// Model time for this slice (ms).
    pub time_ms: f64,
    pub done_ms: u64,
    #[serde(default)]
    pub thumbnail: Option<Thumbnail>,
}

/// A small image for half-block rendering: `data` is `height * width * channels` bytes, row-major,
/// channels 1 (grey) or 3 (RGB); sent as a hex string.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

impl Thumbnail {
    /// Box-filters an RGB image down so that its longest side is at most `max_side`.
    pub fn from_rgb(width: u32, height: u32, rgb: &[u8], max_side: u32) -> Option<Thumbnail> {
        let (w, h) = (width as usize, height as usize);
        if w == 0 || h == 0 || rgb.len() != w * h * 3 || max_side == 0 {
            return None;
        }
        let scale = (width.max(height) as f64 / max_side as f64).max(1.0);
        let tw = ((width as f64 / scale).round() as usize).max(1);
        let th = ((height as f64 / scale).round() as usize).max(1);
        let mut data = Vec::with_capacity(tw * th * 3);
        for ty in 0..th {
            let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
            for tx in 0..tw {
                let (x0, x1) = (tx * w / tw, ((tx + 1) * w / tw).max(tx * w / tw + 1));
                let mut sum = [0u64; 3];
                for y in y0..y1 {
                    for x in x0..x1 {
                        let p = (y * w + x) * 3;
                        for c in 0..3 {
                            sum[c] += u64::from(rgb[p + c]);
                        }
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)) as u64;
                data.extend(sum.iter().map(|s| (s / n) as u8));
            }
        }
        Some(Thumbnail {
            width: tw as u32,
            height: th as u32,
            channels: 3,
            data,
        })
    }

    /// The RGB colour at (x, y), or None outside the image or for malformed data.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let c = usize::from(self.channels);
        let i = (y as usize * self.width as usize + x as usize) * c;
        match c {
            1 => self.data.get(i).map(|&g| [g, g, g]),
            3 => self.data.get(i..i + 3).map(|p| [p[0], p[1], p[2]]),
            _ => None,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(D::Error::custom("hex string of odd length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16).map_err(D::Error::custom))
            .collect()
    }
}

/// One message as a line (JSON + `\n`).
pub fn encode<T: Serialize>(message: &T) -> Result<String, ProtocolError> {
    let mut line = serde_json::to_string(message).map_err(|source| ProtocolError::Encode {
        what: std::any::type_name::<T>(),
        source,
    })?;
    line.push('\n');
    Ok(line)
}

/// Decodes one line (with or without its `\n`).
pub fn decode<T: DeserializeOwned>(line: &str) -> Result<T, ProtocolError> {
    serde_json::from_str(line.trim_end()).map_err(|source| ProtocolError::Decode { source })
}

/// Reads the next non-empty line and decodes it; `Ok(None)` at the end of the stream.
pub fn read_message<T: DeserializeOwned, R: BufRead>(reader: &mut R) -> Result<Option<T>, ProtocolError> {
    read_message_limited(reader, MAX_LINE_BYTES)
}

/// [`read_message`] with a smaller line limit (the daemon reads requests, which are short).
pub fn read_message_limited<T: DeserializeOwned, R: BufRead>(
    reader: &mut R,
    max: usize,
) -> Result<Option<T>, ProtocolError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.by_ref().take(max as u64 + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() > max {
            return Err(ProtocolError::TooLong);
        }
        let line = String::from_utf8_lossy(&buf);
        if !line.trim().is_empty() {
            return decode(&line).map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let line = encode(&value).expect("encode");
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let back: T = decode(&line).expect("decode");
        assert_eq!(back, value);
    }

    fn slice_summary() -> SliceSummary {
        SliceSummary {
            job_id: 7,
            frame: None,
            series_key: "1.2.3".into(),
            series_uid: Some("1.2.3".into()),
            sop_uid: Some("1.2.3.4".into()),
            instance_number: Some(4),
            position_z: Some(-120.5),
            pixel_spacing: Some([0.7, 0.7]),
            slice_thickness: Some(1.25),
            file_name: "IM0004.dcm".into(),
            report: "1.2.3.4.json".into(),
            label: Some("covid".into()),
            probabilities: Some([0.1, 0.2, 0.7]),
            lesion_counts: BTreeMap::from([("ggo".into(), 2)]),
            ggo_px: 120,
            lung_px: Some(9000),
            involvement: BTreeMap::from([("ggo".into(), 0.013)]),
            device: "cuda:0".into(),
            time_ms: 41.5,
            done_ms: 1_700_000_000_000,
            thumbnail: Thumbnail::from_rgb(4, 2, &[10; 24], 2),
            ..SliceSummary::default()
        }
    }

    #[test]
    fn every_request_round_trips() {
        for r in [
            Request::Hello {
                version: PROTOCOL_VERSION,
                client: "tui".into(),
            },
            Request::Status,
            Request::Subscribe,
            Request::Pause,
            Request::Resume,
            Request::Retry { job_id: 42 },
            Request::RetryForward { id: Some(3) },
            Request::RetryForward { id: None },
            Request::RetryAll,
            Request::Recent { limit: 5, offset: 0 },
            Request::Series {
                key: "1.2.3".into(),
                offset: 10,
                limit: Some(5),
            },
            Request::Thumbnail {
                job_id: 3,
                frame: None,
            },
        ] {
            round_trip(r);
        }
        assert_eq!(
            encode(&Request::Status).expect("encode"),
            "{\"type\":\"status\"}\n"
        );
    }

    #[test]
    fn every_message_round_trips() {
        let snapshot = Snapshot {
            protocol: PROTOCOL_VERSION,
            daemon_version: "0.1.0".into(),
            pid: 12,
            device: "cpu".into(),
            models: vec![ModelInfo {
                name: "segmenter".into(),
                sha256: "ab".into(),
                training_data: None,
            }],
            intake: Intake {
                paused: true,
                reasons: vec!["low disk space".into()],
            },
            counts: QueueCounts {
                pending: 1,
                running: 2,
                done: 3,
                failed: 4,
                quarantined: 5,
            },
            jobs: vec![JobInfo {
                id: 1,
                state: JobState::Failed,
                path: "/in/a.png".into(),
                series: None,
                age_s: 3.5,
                attempts: 2,
                reason: Some("truncated".into()),
                next_retry_s: Some(4.0),
            }],
            disk: Some(DiskInfo {
                path: "/out".into(),
                free_bytes: 1,
                total_bytes: 2,
                free_percent: 50.0,
            }),
            outbox: Some(OutboxStatus {
                pending: 1,
                sent: 2,
                failed: 1,
                items: vec![OutboxItem {
                    id: 5,
                    destination: "PACS@pacs:104".into(),
                    series: "1.2.3".into(),
                    kind: "seg".into(),
                    state: "failed".into(),
                    attempts: 11,
                    reason: Some("cannot associate".into()),
                    next_retry_s: None,
                }],
            }),
            ..Snapshot::default()
        };
        let event = Event {
            seq: 9,
            time_ms: 5,
            kind: EventKind::SeriesReported,
            message: "series reported".into(),
            job_id: None,
            series: Some("1.2.3".into()),
        };
        let results = Results {
            series: vec![SeriesSummary {
                key: "1.2.3".into(),
                verdict: "covid".into(),
                ..SeriesSummary::default()
            }],
            slices: vec![slice_summary()],
            total: Some(1),
        };
        for m in [
            Message::Thumbnail {
                job_id: 7,
                frame: Some(2),
                thumbnail: slice_summary().thumbnail,
            },
            Message::Hello {
                version: 1,
                server: "ctmask 0.1.0".into(),
            },
            Message::Snapshot(Box::new(snapshot)),
            Message::Event(event),
            Message::Results(results),
            Message::Ack {
                request: "pause".into(),
                message: "intake paused".into(),
            },
            Message::Error {
                code: "bad_request".into(),
                message: "x".into(),
            },
        ] {
            round_trip(m);
        }
    }

    #[test]
    fn tolerates_newer_peers_and_rejects_garbage() {
        let m: Message =
            decode(r#"{"type":"ack","request":"pause","message":"ok","extra":[1,2]}"#).expect("extra field");
        assert_eq!(
            m,
            Message::Ack {
                request: "pause".into(),
                message: "ok".into()
            }
        );
        assert_eq!(
            decode::<Message>(r#"{"type":"gpu_stats","x":1}"#).expect("unknown type"),
            Message::Unknown
        );
        assert_eq!(
            decode::<Request>(r#"{"type":"shutdown"}"#).expect("unknown type"),
            Request::Unknown
        );
        let e: Event =
            decode(r#"{"seq":1,"time_ms":2,"kind":"new_kind","message":"m"}"#).expect("unknown kind");
        assert_eq!(e.kind, EventKind::Other);
        assert_eq!(
            decode::<Request>(r#"{"type":"recent"}"#).expect("default limit"),
            Request::Recent { limit: 50, offset: 0 }
        );
        assert!(
            decode::<Request>(r#"{"type":"retry"}"#).is_err(),
            "missing job_id"
        );
        assert!(decode::<Request>("not json").is_err());
        assert!(decode::<Request>(r#"{"limit":3}"#).is_err(), "missing type");
    }

    #[test]
    fn reads_lines_and_limits_them() {
        let mut input = std::io::Cursor::new(b"\n{\"type\":\"status\"}\n{\"type\":\"pause\"}".to_vec());
        assert_eq!(
            read_message::<Request, _>(&mut input).expect("first"),
            Some(Request::Status)
        );
        assert_eq!(
            read_message::<Request, _>(&mut input).expect("second"),
            Some(Request::Pause)
        );
        assert_eq!(read_message::<Request, _>(&mut input).expect("end"), None);
        let mut long = std::io::Cursor::new(vec![b'x'; MAX_LINE_BYTES + 10]);
        assert!(matches!(
            read_message::<Request, _>(&mut long),
            Err(ProtocolError::TooLong)
        ));
    }

    #[test]
    fn thumbnails_downsample_and_carry_hex() {
        let mut rgb = vec![0u8; 4 * 4 * 3];
        rgb[..3].copy_from_slice(&[255, 0, 0]);
        let t = Thumbnail::from_rgb(4, 4, &rgb, 2).expect("thumbnail");
        assert_eq!((t.width, t.height, t.data.len()), (2, 2, 12));
        assert_eq!(t.pixel(0, 0), Some([63, 0, 0]));
        assert_eq!(t.pixel(2, 0), None);
        let json = serde_json::to_string(&t).expect("json");
        assert!(json.contains("\"3f0000"), "{json}");
        assert!(Thumbnail::from_rgb(4, 4, &rgb[..5], 2).is_none());
        let grey = Thumbnail {
            width: 1,
            height: 1,
            channels: 1,
            data: vec![9],
        };
        assert_eq!(grey.pixel(0, 0), Some([9, 9, 9]));
    }
}
