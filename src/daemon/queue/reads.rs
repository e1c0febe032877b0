//! What the queue tells the status, the socket and the watcher: one job, the paths of a content,
//! the files already recorded, counts per state, open jobs, and screened slices with their
//! thumbnails.

#[cfg(test)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{JOB_COLUMNS, Job, Queue, QueueError, Result, SliceRecord, job_row, now_ms};
use crate::protocol::JobState::Done;
use crate::protocol::{JobInfo, JobState, QueueCounts, SliceSummary, Thumbnail};

impl Queue {
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

    /// (size, mtime_ns) last recorded for `path` (the watcher skips an unchanged file).
    pub fn known_file(&self, path: &Path) -> Result<Option<(u64, i64)>> {
        self.conn
            .query_row(
                "SELECT size, mtime_ns FROM paths WHERE path = ?1 ORDER BY last_seen_ms DESC LIMIT 1",
                params![path.to_string_lossy()],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()
            .map_err(self.db())
    }

    /// Path -> (size, mtime_ns) of every file recorded (for the tests: the daemon looks paths
    /// up one at a time, [`Queue::known_file`]).
    #[cfg(test)]
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
                "SELECT {JOB_COLUMNS} FROM jobs WHERE models = ?1 AND state != '{Done}' ORDER BY id DESC LIMIT ?2"
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
        let sql = format!(
            "SELECT summary FROM jobs WHERE models = ?1 AND state = '{Done}' AND summary IS NOT NULL
                   ORDER BY updated_ms DESC, id DESC LIMIT ?2 OFFSET ?3"
        );
        let mut out: Vec<SliceSummary> = self
            .records(&sql, params![self.models, limit as i64, offset as i64])?
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
        let sql = format!(
            "SELECT summary FROM jobs WHERE models = ?1 AND state = '{Done}' AND series_key = ?2 AND summary IS NOT NULL"
        );
        self.records(&sql, params![self.models, series_key])
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
}
