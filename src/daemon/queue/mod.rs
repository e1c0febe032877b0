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

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod record;

pub use record::{NoThumbnail, ScreenedSlice, SliceRecord};

use crate::protocol::{JobInfo, JobState, QueueCounts, SliceSummary, Thumbnail};

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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY,
  sha256 TEXT NOT NULL,
  models TEXT NOT NULL,
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending','running','done','failed','quarantined')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  series_key TEXT,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  summary TEXT,
  crashes INTEGER NOT NULL DEFAULT 0,
  UNIQUE (sha256, models)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (models, state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs (series_key);
CREATE TABLE IF NOT EXISTS paths (
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  first_seen_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL,
  PRIMARY KEY (path, sha256)
);
CREATE TABLE IF NOT EXISTS series (
  key TEXT PRIMARY KEY,
  last_done_ms INTEGER NOT NULL,
  reported_ms INTEGER NOT NULL DEFAULT 0,
  revision INTEGER NOT NULL DEFAULT 0,
  summary TEXT
);
CREATE TABLE IF NOT EXISTS instances (
  models TEXT NOT NULL,
  series_key TEXT NOT NULL,
  stem TEXT NOT NULL,
  job_id INTEGER NOT NULL,
  PRIMARY KEY (models, series_key, stem)
);
CREATE TABLE IF NOT EXISTS thumbnail_blobs (
  job_id INTEGER NOT NULL,
  frame INTEGER NOT NULL,
  width INTEGER NOT NULL,
  height INTEGER NOT NULL,
  channels INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (job_id, frame)
);
CREATE TABLE IF NOT EXISTS thumbnails (
  job_id INTEGER NOT NULL,
  frame INTEGER NOT NULL,
  thumbnail TEXT NOT NULL,
  PRIMARY KEY (job_id, frame)
);
PRAGMA user_version = 1;
";

const JOB_COLUMNS: &str =
    "id, sha256, path, state, attempts, reason, series_key, created_ms, next_attempt_ms, crashes";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.execute_batch(crate::dicom::forward::SCHEMA).map_err(db)?;
        // Databases made before crashes were counted get the column (existing rows: 0).
        let has_crashes = conn
            .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'crashes'")
            .and_then(|mut st| st.exists([]))
            .map_err(db)?;
        if !has_crashes {
            conn.execute_batch("ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")
                .map_err(db)?;
        }
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

    /// After a clean stop: jobs still running go back to pending with their try given back.
    /// Returns how many.
    pub fn requeue_running(&mut self) -> Result<usize> {
        let now = now_ms();
        let n = self
            .conn
            .execute(
                "UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0), updated_ms = ?1
                 WHERE state = 'running'",
                params![now],
            )
            .map_err(self.db())?;
        Ok(n)
    }

    /// At start-up: jobs left running died with the process. Each counts a crash (its try was
    /// counted when claimed); those whose tries are spent (`attempts > retries`) are quarantined,
    /// the others go back to pending. Returns (requeued, quarantined (id, reason)).
    pub fn recover_running(&mut self, retries: u32) -> Result<(usize, Vec<(i64, String)>)> {
        let now = now_ms();
        self.in_tx(|tx| {
            let running: Vec<(i64, u32, u32)> = tx
                .prepare("SELECT id, attempts, crashes FROM jobs WHERE state = 'running'")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let (mut requeued, mut quarantined) = (0, Vec::new());
            for (id, attempts, crashes) in running {
                let crashes = crashes + 1;
                if attempts > retries {
                    let reason = format!(
                        "stopped the daemon {crashes} time{} (the process died while this file was being read or screened)",
                        if crashes == 1 { "" } else { "s" }
                    );
                    tx.execute(
                        "UPDATE jobs SET state = 'quarantined', crashes = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                        params![id, crashes, reason, now],
                    )?;
                    quarantined.push((id, reason));
                } else {
                    tx.execute(
                        "UPDATE jobs SET state = 'pending', crashes = ?2, next_attempt_ms = 0, updated_ms = ?3 WHERE id = ?1",
                        params![id, crashes, now],
                    )?;
                    requeued += 1;
                }
            }
            Ok((requeued, quarantined))
        })
    }

    /// Records the path and creates the job unless this content already has one for these models.
    pub fn enqueue(&mut self, file: &FileSeen) -> Result<Enqueued> {
        let now = now_ms();
        let models = self.models.clone();
        let path = file.path.to_string_lossy().into_owned();
        self.in_tx(|tx| {
            tx.execute(
                "INSERT INTO paths (path, sha256, size, mtime_ns, first_seen_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (path, sha256) DO UPDATE SET size = ?3, mtime_ns = ?4, last_seen_ms = ?5",
                params![path, file.sha256, file.size as i64, file.mtime_ns, now],
            )?;
            let known: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, state FROM jobs WHERE sha256 = ?1 AND models = ?2",
                    params![file.sha256, models],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, state)) = known {
                // A pending or failed job reads from the newest path (the old one may be gone).
                tx.execute(
                    "UPDATE jobs SET path = ?2 WHERE id = ?1 AND state IN ('pending', 'failed')",
                    params![id, path],
                )?;
                return Ok(Enqueued::Known(id, JobState::parse(&state)));
            }
            tx.execute(
                "INSERT INTO jobs (sha256, models, path, size, state, series_key, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?6)",
                params![file.sha256, models, path, file.size as i64, file.series_key, now],
            )?;
            Ok(Enqueued::New(tx.last_insert_rowid()))
        })
    }

    /// Claims up to `limit` due jobs (pending, or failed whose backoff has passed): -> running,
    /// counting a try each (committed before anything is read). A job that was in hand when the
    /// daemon died is claimed alone, so that only a slice that kills again is charged again.
    pub fn claim(&mut self, limit: usize) -> Result<Vec<Job>> {
        let now = now_ms();
        let models = self.models.clone();
        let mut jobs = self.in_tx(|tx| {
            let due = "models = ?1 AND state IN ('pending', 'failed') AND next_attempt_ms <= ?2";
            let suspect: Vec<Job> = tx
                .prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE {due} AND crashes > 0 ORDER BY next_attempt_ms, id LIMIT 1"
                ))?
                .query_map(params![models, now], job_row)?
                .collect::<rusqlite::Result<_>>()?;
            let jobs: Vec<Job> = if suspect.is_empty() {
                tx.prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE {due} ORDER BY next_attempt_ms, id LIMIT ?3"
                ))?
                .query_map(params![models, now, limit as i64], job_row)?
                .collect::<rusqlite::Result<_>>()?
            } else {
                suspect
            };
            for job in &jobs {
                tx.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_ms = ?2 WHERE id = ?1",
                    params![job.id, now],
                )?;
            }
            Ok(jobs)
        })?;
        for job in &mut jobs {
            job.state = JobState::Running;
            job.attempts += 1;
        }
        Ok(jobs)
    }

    /// The job whose result stands for this SOP instance (series key and output stem), if any.
    pub fn instance_owner(&self, series_key: &str, stem: &str) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT job_id FROM instances WHERE models = ?1 AND series_key = ?2 AND stem = ?3",
                params![self.models, series_key, stem],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db())
    }

    /// running -> done, with the slices' summaries (also marks the series active and records
    /// each slice as the result of its SOP instance).
    pub fn complete(&mut self, id: i64, slices: &[ScreenedSlice]) -> Result<()> {
        let now = now_ms();
        let models = self.models.clone();
        // Thumbnails live in their own table: the records stay small for series reports.
        let records: Vec<&SliceRecord> = slices.iter().map(|s| &s.record).collect();
        let summary = serde_json::to_string(&records).map_err(|source| QueueError::Summary { id, source })?;
        let series_key = records.first().map(|s| s.series_key.clone());
        // Raw pixels (a BLOB, half the size of the hex the protocol sends).
        let thumbs: Vec<(i64, &Thumbnail)> = slices
            .iter()
            .filter_map(|s| Some((i64::from(s.record.frame.unwrap_or(0)), s.thumbnail.as_ref()?)))
            .collect();
        self.in_tx(|tx| {
            tx.execute(
                "UPDATE jobs SET state = 'done', reason = NULL, summary = ?2, series_key = COALESCE(?3, series_key),
                 updated_ms = ?4 WHERE id = ?1",
                params![id, summary, series_key, now],
            )?;
            for (frame, t) in &thumbs {
                tx.execute(
                    "INSERT OR REPLACE INTO thumbnail_blobs (job_id, frame, width, height, channels, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, frame, t.width, t.height, t.channels, t.data],
                )?;
            }
            for s in &records {
                tx.execute(
                    "INSERT OR IGNORE INTO instances (models, series_key, stem, job_id) VALUES (?1, ?2, ?3, ?4)",
                    params![models, s.series_key, s.file_name, id],
                )?;
            }
            if let Some(key) = &series_key {
                tx.execute(
                    "INSERT INTO series (key, last_done_ms) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET last_done_ms = MAX(?2, reported_ms + 1)",
                    params![key, now],
                )?;
            }
            Ok(())
        })
    }

    /// Records a failure: failed with a retry after `backoff(attempts)`, or quarantined once
    /// `attempts > retries` (or at once when `permanent`). Returns the new state.
    pub fn fail(
        &mut self,
        id: i64,
        reason: &str,
        permanent: bool,
        retries: u32,
        backoff: impl Fn(u32) -> Duration,
    ) -> Result<JobState> {
        let now = now_ms();
        let state = self.in_tx(|tx| {
            let row: Option<(u32, String)> = tx
                .query_row("SELECT attempts, state FROM jobs WHERE id = ?1", params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            // A claimed job's try was counted by the claim; one failed before any claim (an
            // oversize file at intake) counts its try now.
            let Some(attempts) = row.map(|(a, st)| if st == "running" { a } else { a + 1 }) else {
                return Ok(None);
            };
            let (state, next) = if permanent || attempts > retries {
                (JobState::Quarantined, 0)
            } else {
                (JobState::Failed, now + backoff(attempts).as_millis() as i64)
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, attempts = ?3, reason = ?4, next_attempt_ms = ?5, updated_ms = ?6 WHERE id = ?1",
                params![id, state.as_str(), attempts, reason, next, now],
            )?;
            Ok(Some(state))
        })?;
        state.ok_or(QueueError::NoSuchJob(id))
    }

    /// running -> pending, the claim's try given back (shutdown, disk full), due after `delay`.
    pub fn requeue(&mut self, id: i64, delay: Duration) -> Result<()> {
        let now = now_ms();
        self.conn
            .execute(
                "UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0), next_attempt_ms = ?2, updated_ms = ?3
                 WHERE id = ?1 AND state = 'running'",
                params![id, now + delay.as_millis() as i64, now],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// An operator's retry: failed or quarantined -> pending, tries reset.
    pub fn retry(&mut self, id: i64) -> Result<()> {
        let now = now_ms();
        let state = self.in_tx(|tx| {
            let state: Option<String> =
                tx.query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
            let Some(state) = state.map(|s| JobState::parse(&s)) else { return Ok(None) };
            if matches!(state, JobState::Failed | JobState::Quarantined) {
                tx.execute(
                    "UPDATE jobs SET state = 'pending', attempts = 0, crashes = 0, next_attempt_ms = 0, updated_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
            }
            Ok(Some(state))
        })?;
        match state {
            None => Err(QueueError::NoSuchJob(id)),
            Some(JobState::Failed | JobState::Quarantined) => Ok(()),
            Some(state) => Err(QueueError::NotRetryable {
                id,
                state: state.as_str(),
            }),
        }
    }

    /// Retention: deletes jobs done before `cutoff_ms` with their thumbnails and SOP instance
    /// records, and the paths last seen before it whose files are gone (a file still in a watch
    /// folder keeps its path, so it is not screened again). Returns (jobs, paths) deleted.
    pub fn prune(&mut self, cutoff_ms: i64) -> Result<(usize, usize)> {
        let models = self.models.clone();
        let old_paths: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT path FROM paths WHERE last_seen_ms < ?1")
                .map_err(self.db())?;
            let rows = stmt
                .query_map(params![cutoff_ms], |r| r.get::<_, String>(0))
                .map_err(self.db())?;
            rows.collect::<rusqlite::Result<_>>().map_err(self.db())?
        };
        let gone: Vec<String> = old_paths
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .collect();
        self.in_tx(|tx| {
            let old = "SELECT id FROM jobs WHERE models = ?1 AND state = 'done' AND updated_ms < ?2";
            tx.execute(
                &format!("DELETE FROM thumbnail_blobs WHERE job_id IN ({old})"),
                params![models, cutoff_ms],
            )?;
            tx.execute(
                &format!("DELETE FROM thumbnails WHERE job_id IN ({old})"),
                params![models, cutoff_ms],
            )?;
            tx.execute(
                &format!("DELETE FROM instances WHERE job_id IN ({old})"),
                params![models, cutoff_ms],
            )?;
            let jobs = tx.execute(
                "DELETE FROM jobs WHERE models = ?1 AND state = 'done' AND updated_ms < ?2",
                params![models, cutoff_ms],
            )?;
            let mut paths = 0;
            for p in &gone {
                paths += tx.execute(
                    "DELETE FROM paths WHERE path = ?1 AND last_seen_ms < ?2",
                    params![p, cutoff_ms],
                )?;
            }
            Ok((jobs, paths))
        })
    }

    /// An operator's retry of everything failed or quarantined (after a broken device, say):
    /// -> pending, tries reset. Returns how many.
    pub fn retry_all(&mut self) -> Result<usize> {
        let now = now_ms();
        self.conn
            .execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, crashes = 0, next_attempt_ms = 0, updated_ms = ?2
                 WHERE models = ?1 AND state IN ('failed', 'quarantined')",
                params![self.models, now],
            )
            .map_err(self.db())
    }

    pub fn job(&self, id: i64) -> Result<Job> {
        self.conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                job_row,
            )
            .optional()
            .map_err(self.db())?
            .ok_or(QueueError::NoSuchJob(id))
    }

    /// Every path recorded for a content hash, newest first.
    pub fn paths_for(&self, sha256: &str) -> Result<Vec<PathBuf>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path FROM paths WHERE sha256 = ?1 ORDER BY last_seen_ms DESC")
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![sha256], |r| r.get::<_, String>(0))
            .map_err(self.db())?;
        rows.map(|r| r.map(PathBuf::from))
            .collect::<rusqlite::Result<_>>()
            .map_err(self.db())
    }

    /// Path -> (size, mtime_ns) of every file already recorded (the watcher skips unchanged ones).
    pub fn known_files(&self) -> Result<HashMap<PathBuf, (u64, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, mtime_ns FROM paths")
            .map_err(self.db())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    PathBuf::from(r.get::<_, String>(0)?),
                    (r.get::<_, i64>(1)? as u64, r.get(2)?),
                ))
            })
            .map_err(self.db())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.db())
    }

    pub fn counts(&self) -> Result<QueueCounts> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM jobs WHERE models = ?1 GROUP BY state")
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![self.models], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(self.db())?;
        let mut c = QueueCounts::default();
        for row in rows {
            let (state, n) = row.map_err(self.db())?;
            match JobState::parse(&state) {
                JobState::Pending => c.pending = n,
                JobState::Running => c.running = n,
                JobState::Done => c.done = n,
                JobState::Failed => c.failed = n,
                JobState::Quarantined => c.quarantined = n,
                JobState::Unknown => {}
            }
        }
        Ok(c)
    }

    /// Jobs not done (pending, running, failed, quarantined), newest first, for the status.
    pub fn open_jobs(&self, limit: usize) -> Result<Vec<JobInfo>> {
        let now = now_ms();
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE models = ?1 AND state != 'done' ORDER BY id DESC LIMIT ?2"
            ))
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![self.models, limit as i64], job_row)
            .map_err(self.db())?;
        let jobs: Vec<Job> = rows.collect::<rusqlite::Result<_>>().map_err(self.db())?;
        Ok(jobs
            .into_iter()
            .map(|j| JobInfo {
                id: j.id,
                state: j.state,
                path: j.path.to_string_lossy().into_owned(),
                series: j.series_key,
                age_s: (now - j.created_ms).max(0) as f64 / 1000.0,
                attempts: j.attempts,
                reason: j.reason,
                next_retry_s: (j.state == JobState::Failed)
                    .then(|| (j.next_attempt_ms - now).max(0) as f64 / 1000.0),
            })
            .collect())
    }

    /// Summaries of the most recently finished slices, newest first (with thumbnails when asked).
    pub fn recent_slices(&self, limit: usize, offset: usize, thumbnails: bool) -> Result<Vec<SliceSummary>> {
        let sql = "SELECT summary FROM jobs WHERE models = ?1 AND state = 'done' AND summary IS NOT NULL
                   ORDER BY updated_ms DESC, id DESC LIMIT ?2 OFFSET ?3";
        let mut out: Vec<SliceSummary> = self
            .records(sql, params![self.models, limit as i64, offset as i64])?
            .into_iter()
            .map(SliceSummary::from)
            .collect();
        out.truncate(limit);
        if thumbnails {
            self.attach_thumbnails(&mut out)?;
        }
        Ok(out)
    }

    /// Every screened slice of a series (any order).
    pub fn series_slices(&self, series_key: &str) -> Result<Vec<SliceRecord>> {
        let sql = "SELECT summary FROM jobs WHERE models = ?1 AND state = 'done' AND series_key = ?2 AND summary IS NOT NULL";
        self.records(sql, params![self.models, series_key])
    }

    fn records(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<SliceRecord>> {
        let mut stmt = self.conn.prepare(sql).map_err(self.db())?;
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(0))
            .map_err(self.db())?;
        let mut out = Vec::new();
        for row in rows {
            let json = row.map_err(self.db())?;
            // A summary this build cannot read (older schema) is skipped, not fatal.
            if let Ok(slices) = serde_json::from_str::<Vec<SliceRecord>>(&json) {
                out.extend(slices);
            }
        }
        Ok(out)
    }

    /// One slice's thumbnail (`frame` None: a single-frame file): the BLOB, or the hex JSON of
    /// databases written before thumbnails were BLOBs.
    pub fn thumbnail(&self, job_id: i64, frame: Option<u32>) -> Result<Option<Thumbnail>> {
        let key = params![job_id, i64::from(frame.unwrap_or(0))];
        let blob = self
            .conn
            .prepare_cached(
                "SELECT width, height, channels, data FROM thumbnail_blobs WHERE job_id = ?1 AND frame = ?2",
            )
            .and_then(|mut st| {
                st.query_row(key, |r| {
                    Ok(Thumbnail {
                        width: r.get(0)?,
                        height: r.get(1)?,
                        channels: r.get(2)?,
                        data: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(self.db())?;
        if blob.is_some() {
            return Ok(blob);
        }
        let json: Option<String> = self
            .conn
            .prepare_cached("SELECT thumbnail FROM thumbnails WHERE job_id = ?1 AND frame = ?2")
            .and_then(|mut st| st.query_row(key, |r| r.get(0)).optional())
            .map_err(self.db())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    pub fn attach_thumbnails(&self, slices: &mut [SliceSummary]) -> Result<()> {
        for s in slices {
            s.thumbnail = self.thumbnail(s.job_id, s.frame)?;
        }
        Ok(())
    }

    /// Series whose newest slice is older than `quiet` and newer than their last report:
    /// (key, last_done_ms).
    pub fn series_due(&self, quiet: Duration) -> Result<Vec<(String, i64)>> {
        let cutoff = now_ms() - quiet.as_millis() as i64;
        let mut stmt = self
            .conn
            .prepare("SELECT key, last_done_ms FROM series WHERE last_done_ms > reported_ms AND last_done_ms <= ?1")
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![cutoff], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.db())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.db())
    }

    /// Records a series report covering slices done up to `last_done_ms`; returns its revision.
    pub fn series_reported(&mut self, key: &str, last_done_ms: i64, summary_json: &str) -> Result<u32> {
        self.in_tx(|tx| {
            tx.execute(
                "UPDATE series SET reported_ms = MAX(reported_ms, ?2), revision = revision + 1, summary = ?3 WHERE key = ?1",
                params![key, last_done_ms, summary_json],
            )?;
            tx.query_row("SELECT revision FROM series WHERE key = ?1", params![key], |r| r.get(0))
        })
    }

    /// The next revision number a report of this series will have.
    pub fn series_revision(&self, key: &str) -> Result<u32> {
        let rev: Option<u32> = self
            .conn
            .query_row("SELECT revision FROM series WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.db())?;
        Ok(rev.unwrap_or(0) + 1)
    }

    /// The stored summary (JSON of `protocol::SeriesSummary`) of one reported series.
    pub fn series_summary(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT summary FROM series WHERE key = ?1 AND summary IS NOT NULL",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db())
    }

    /// Stored series summaries (JSON of `protocol::SeriesSummary`), newest first.
    pub fn recent_series(&self, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT summary FROM series WHERE summary IS NOT NULL ORDER BY reported_ms DESC LIMIT ?1",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![limit as i64], |r| r.get(0))
            .map_err(self.db())?;
        rows.collect::<rusqlite::Result<_>>().map_err(self.db())
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

/// An exclusive lock on the state folder, held for the daemon's life.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub const FILE_NAME: &'static str = "ctmask.lock";

    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
        let io = |source| QueueError::Io {
            path: state_dir.into(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let path = state_dir.join(Self::FILE_NAME);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown pid".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(QueueError::Locked {
                    path: state_dir.into(),
                    holder,
                });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(path: &str, sha: &str) -> FileSeen {
        FileSeen {
            path: path.into(),
            sha256: sha.into(),
            size: 10,
            mtime_ns: 1,
            series_key: None,
        }
    }

    fn summary(job_id: i64, key: &str) -> ScreenedSlice {
        ScreenedSlice {
            record: SliceRecord {
                job_id,
                series_key: key.into(),
                label: Some(crate::protocol::Label::Covid),
                ..SliceRecord::default()
            },
            thumbnail: None,
        }
    }

    #[test]
    fn same_content_is_one_job_across_copies_and_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = Queue::open(dir.path(), "m1").expect("open");
        let Enqueued::New(id) = q.enqueue(&seen("/in/a.dcm", "aa")).expect("enqueue") else {
            panic!("not new")
        };
        assert_eq!(
            q.enqueue(&seen("/in/copy.dcm", "aa")).expect("copy"),
            Enqueued::Known(id, JobState::Pending)
        );
        assert_eq!(
            q.job(id).expect("job").path,
            PathBuf::from("/in/copy.dcm"),
            "pending job follows the newest path"
        );
        let claimed = q.claim(10).expect("claim");
        q.complete(claimed[0].id, &[summary(id, "s1")]).expect("complete");
        assert_eq!(
            q.enqueue(&seen("/in/renamed.dcm", "aa")).expect("rename"),
            Enqueued::Known(id, JobState::Done)
        );
        assert_eq!(q.paths_for("aa").expect("paths").len(), 3);
        assert!(matches!(
            q.enqueue(&seen("/in/b.dcm", "bb")).expect("other"),
            Enqueued::New(_)
        ));
        // Other models: the same content is a new job.
        let mut q2 = Queue::open(dir.path(), "m2").expect("open m2");
        assert!(matches!(
            q2.enqueue(&seen("/in/a.dcm", "aa")).expect("m2"),
            Enqueued::New(_)
        ));
        assert_eq!(
            q.counts().expect("counts"),
            QueueCounts {
                pending: 1,
                done: 1,
                ..QueueCounts::default()
            }
        );
        assert_eq!(
            q.known_files().expect("known").get(Path::new("/in/a.dcm")),
            Some(&(10, 1))
        );
    }

    #[test]
    fn running_jobs_go_back_to_pending_on_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut q = Queue::open(dir.path(), "m").expect("open");
            q.enqueue(&seen("/a", "1")).expect("enqueue");
            q.enqueue(&seen("/b", "2")).expect("enqueue");
            assert_eq!(q.claim(5).expect("claim").len(), 2);
            assert!(q.claim(5).expect("claim again").is_empty());
        } // "crash": dropped while running
        let mut q = Queue::open(dir.path(), "m").expect("reopen");
        assert_eq!(q.counts().expect("counts").running, 2);
        assert_eq!(q.recover_running(1).expect("recover"), (2, vec![]));
        // Each crashed job is claimed alone, its try counted at the claim.
        let one = q.claim(5).expect("claim");
        assert_eq!((one.len(), one[0].attempts, one[0].crashes), (1, 2, 1));
        q.complete(one[0].id, &[]).expect("done");
        let other = q.claim(5).expect("claim");
        assert_eq!(other.len(), 1);
        // It dies again: two tries spent with retries 1, so it is quarantined.
        let (requeued, quarantined) = q.recover_running(1).expect("recover");
        assert_eq!(requeued, 0);
        assert_eq!(quarantined.len(), 1);
        assert!(
            quarantined[0].1.starts_with("stopped the daemon 2 times"),
            "{quarantined:?}"
        );
        assert_eq!(q.job(other[0].id).expect("job").state, JobState::Quarantined);
        // A clean stop gives the claim's try back.
        q.enqueue(&seen("/c", "3")).expect("enqueue");
        let c = q.claim(5).expect("claim");
        assert_eq!(q.requeue_running().expect("requeue"), 1);
        assert_eq!(q.job(c[0].id).expect("job").attempts, 0);
    }

    #[test]
    fn failures_back_off_then_quarantine_and_can_be_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = Queue::open(dir.path(), "m").expect("open");
        q.enqueue(&seen("/bad", "x")).expect("enqueue");
        let backoff = |a: u32| Duration::from_millis(40 * u64::from(a));
        let id = q.claim(1).expect("claim")[0].id;
        assert_eq!(
            q.fail(id, "truncated", false, 2, backoff).expect("fail 1"),
            JobState::Failed
        );
        assert!(q.claim(1).expect("too early").is_empty(), "backoff not over");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(q.claim(1).expect("due")[0].id, id);
        assert_eq!(
            q.fail(id, "truncated", false, 2, backoff).expect("fail 2"),
            JobState::Failed
        );
        std::thread::sleep(Duration::from_millis(100));
        q.claim(1).expect("due again");
        assert_eq!(
            q.fail(id, "truncated again", false, 2, backoff).expect("fail 3"),
            JobState::Quarantined
        );
        let job = q.job(id).expect("job");
        assert_eq!(
            (job.attempts, job.reason.as_deref()),
            (3, Some("truncated again"))
        );
        std::thread::sleep(Duration::from_millis(10));
        assert!(q.claim(1).expect("quarantined").is_empty());
        let open = q.open_jobs(10).expect("open jobs");
        assert_eq!((open[0].state, open[0].attempts), (JobState::Quarantined, 3));
        q.retry(id).expect("retry");
        assert_eq!(
            q.claim(1).expect("retried")[0].attempts,
            1,
            "tries reset, this claim counted"
        );
        assert!(matches!(q.retry(id), Err(QueueError::NotRetryable { .. })));
        assert!(matches!(q.retry(999), Err(QueueError::NoSuchJob(999))));
        assert_eq!(
            q.fail(id, "not dicom", true, 5, backoff).expect("permanent"),
            JobState::Quarantined
        );
    }

    #[test]
    fn series_become_due_after_quiet_and_again_after_late_slices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = Queue::open(dir.path(), "m").expect("open");
        q.enqueue(&seen("/a", "1")).expect("enqueue");
        let id = q.claim(1).expect("claim")[0].id;
        q.complete(id, &[summary(id, "S")]).expect("complete");
        assert!(
            q.series_due(Duration::from_secs(60)).expect("due").is_empty(),
            "still quiet period"
        );
        let due = q.series_due(Duration::ZERO).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(q.series_reported("S", due[0].1, "{}").expect("reported"), 1);
        assert!(q.series_due(Duration::ZERO).expect("due").is_empty());
        q.enqueue(&seen("/b", "2")).expect("late slice");
        let id2 = q.claim(1).expect("claim")[0].id;
        q.complete(id2, &[summary(id2, "S")]).expect("complete");
        assert_eq!(q.series_due(Duration::ZERO).expect("due again").len(), 1);
        assert_eq!(q.series_revision("S").expect("rev"), 2);
        assert_eq!(q.series_slices("S").expect("slices").len(), 2);
        assert_eq!(q.recent_slices(1, 0, true).expect("recent")[0].job_id, id2);
    }

    #[test]
    fn retention_deletes_old_done_jobs_and_paths_of_files_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let present = dir.path().join("present.dcm");
        std::fs::write(&present, b"x").expect("file");
        let mut q = Queue::open(dir.path(), "m").expect("open");
        q.enqueue(&seen(&present.to_string_lossy(), "1"))
            .expect("enqueue");
        q.enqueue(&seen("/gone/a.dcm", "2")).expect("enqueue");
        q.enqueue(&seen("/gone/b.dcm", "3")).expect("enqueue");
        let jobs = q.claim(2).expect("claim");
        for j in &jobs {
            q.complete(j.id, &[summary(j.id, "S")]).expect("complete");
        }
        assert_eq!(q.prune(0).expect("nothing old"), (0, 0));
        let later = now_ms() + 1000;
        // Two done jobs go; the pending one stays; only the path of a file that exists stays.
        assert_eq!(q.prune(later).expect("prune"), (2, 2));
        assert_eq!(q.counts().expect("counts").pending, 1);
        assert_eq!(q.counts().expect("counts").done, 0);
        assert!(q.known_files().expect("known").contains_key(&present));
        assert_eq!(q.known_files().expect("known").len(), 1);
    }

    #[test]
    fn thumbnails_are_blobs_and_older_hex_ones_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut q = Queue::open(dir.path(), "m").expect("open");
        q.enqueue(&seen("/a", "1")).expect("enqueue");
        let id = q.claim(1).expect("claim")[0].id;
        let thumb = Thumbnail {
            width: 2,
            height: 1,
            channels: 3,
            data: vec![1, 2, 3, 250, 251, 252],
        };
        let slice = ScreenedSlice {
            thumbnail: Some(thumb.clone()),
            ..summary(id, "S")
        };
        q.complete(id, &[slice]).expect("complete");
        assert_eq!(q.thumbnail(id, None).expect("read"), Some(thumb.clone()));
        let stored: Vec<u8> = q
            .conn
            .query_row(
                "SELECT data FROM thumbnail_blobs WHERE job_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .expect("blob");
        assert_eq!(stored, thumb.data, "raw bytes, not hex");
        q.conn
            .execute(
                "INSERT INTO thumbnails (job_id, frame, thumbnail) VALUES (99, 0, ?1)",
                params![serde_json::to_string(&thumb).expect("json")],
            )
            .expect("old row");
        assert_eq!(q.thumbnail(99, None).expect("old"), Some(thumb));
        assert_eq!(q.thumbnail(98, None).expect("none"), None);
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first");
        let err = StateLock::acquire(dir.path()).expect_err("second");
        let msg = err.to_string();
        assert!(
            msg.contains("another ctmask daemon") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again");
    }
}
