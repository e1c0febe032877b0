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
//!
//! `vocab` is the one vocabulary (label, verdict, job state, error code) that the wire, the
//! queue database and the reports share; `status` and `results` hold the messages' bodies,
//! `codec` the line framing, `client` the one client (`ctmask status` and the dashboard),
//! `anatomy` the one anatomical order of a series' slices.

mod anatomy;
mod client;
mod codec;
mod results;
mod status;
mod vocab;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub(crate) use anatomy::slice_position;
pub use anatomy::{SlicePosition, anatomical_order};
pub use client::{Client, ClientError, fetch_snapshot};
pub use codec::{ProtocolError, decode, encode, read_message, read_message_limited};
pub use results::{Results, SeriesSummary, SliceSummary, Thumbnail};
pub use status::{
    DEMO_MODEL_BANNER, DiskInfo, Event, EventKind, Intake, JobInfo, ModelInfo, OutboxItem, OutboxStatus,
    QueueCounts, Snapshot, Throughput, demo_banner,
};
pub use vocab::{ErrorCode, JobState, Label, Verdict};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line either side accepts.
pub const MAX_LINE_BYTES: usize = 8 << 20;

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
        code: ErrorCode,
        message: String,
    },
    #[serde(other)]
    Unknown,
}
