//! The durable job queue: SQLite (WAL) in the state folder. A job is one input file keyed by
//! (content sha256, models hash), so a copy or a rename of a screened file is never screened again
//! by the same models; every path seen for a hash is recorded. States: pending -> running -> done,
//! or -> failed (retried after an exponential backoff) -> quarantined after too many tries. Every
//! transition is one transaction. A try is counted when a job is claimed, before anything is read,
//! so a slice that kills the process still spends its tries: at start-up, jobs left running by a
//! crash count one more crash and go back to pending (claimed alone, so an innocent neighbour of
//! a poison slice is not charged again), or are quarantined ("stopped the daemon N times") once
//! their tries are spent. A clean stop (drain, disk full) gives the try back.
//! `StateLock` (flock on `<state>/ctmask.lock`) keeps a second daemon off the same state folder.
//!
//! Files: `schema.rs` (tables, version, migrations), `transitions.rs` (enqueue, claim, complete,
//! fail, retry, crash recovery), `reads.rs` (jobs, counts, slices, thumbnails for the status and
//! the socket), `series.rs` (series due and reported), `retention.rs` (prune), `lock.rs`
//! (`StateLock`), `record.rs` (`SliceRecord`, the `jobs.summary` JSON).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

mod lock;
mod reads;
mod record;
mod retention;
mod schema;
mod series;
mod transitions;

#[cfg(test)]
mod tests;

pub use lock::StateLock;
pub(crate) use record::from_record;
pub use record::{NoThumbnail, ScreenedSlice, SeriesRecord, SliceRecord};
pub use schema::SCHEMA_VERSION;

use crate::protocol::JobState;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database {path}: {source}")]
    Db { path: PathBuf, source: rusqlite::Error },
    #[error("cannot use state folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "another ctmask daemon ({holder}) is using the state folder {path}; stop it first or use another state folder"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("job {0} does not exist")]
    NoSuchJob(i64),
    #[error("job {id} is {state}, only failed or quarantined jobs can be retried")]
    NotRetryable { id: i64, state: &'static str },
    #[error("cannot encode the summary of job {id}: {source}")]
    Summary { id: i64, source: serde_json::Error },
    #[error("cannot encode the summary of series {key}: {source}")]
    SeriesSummary { key: String, source: serde_json::Error },
}

type Result<T> = std::result::Result<T, QueueError>;

/// A file the watcher found complete.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSeen {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// Known before reading for loose images (folder hash); DICOM series are known after reading.
    pub series_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub sha256: String,
    pub path: PathBuf,
    pub state: JobState,
    pub attempts: u32,
    pub reason: Option<String>,
    pub series_key: Option<String>,
    pub created_ms: i64,
    pub next_attempt_ms: i64,
    /// Times the daemon died while this job was claimed; such a job is claimed alone.
    pub crashes: u32,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New(i64),
    /// Same content already has a job for these models (a copy, a rename, a rescan).
    Known(i64, JobState),
}

const JOB_COLUMNS: &str =
    "id, sha256, path, state, attempts, reason, series_key, created_ms, next_attempt_ms, crashes";

pub use crate::clock::now_ms;

/// One connection to the queue; each thread opens its own.
pub struct Queue {
    conn: Connection,
    path: PathBuf,
    models: String,
}

impl Queue {
    pub const FILE_NAME: &'static str = "queue.sqlite3";

    /// Opens (creating if needed) the queue in `state_dir` for jobs of the models with hash `models`.
    pub fn open(state_dir: &Path, models: &str) -> Result<Queue> {
        std::fs::create_dir_all(state_dir).map_err(|source| QueueError::Io {
            path: state_dir.into(),
            source,
        })?;
        let path = state_dir.join(Self::FILE_NAME);
        let db = |source| QueueError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        schema::create_or_migrate(&conn).map_err(db)?;
        Ok(Queue {
            conn,
            path,
            models: models.to_string(),
        })
    }

    /// The connection itself (the DICOM outbox lives in the same database).
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn into_connection(self) -> Connection {
        self.conn
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
        |source| QueueError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one IMMEDIATE transaction (committed when `f` succeeds).
    fn in_tx<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>) -> Result<T> {
        let path = self.path.clone();
        let err = |source| QueueError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let out = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        sha256: r.get(1)?,
        path: PathBuf::from(r.get::<_, String>(2)?),
        state: JobState::parse(&r.get::<_, String>(3)?),
        attempts: r.get(4)?,
        reason: r.get(5)?,
        series_key: r.get(6)?,
        created_ms: r.get(7)?,
        next_attempt_ms: r.get(8)?,
        crashes: r.get(9)?,
    })
}
