//! The queue's state transitions, each one transaction: enqueue (a job per content and models),
//! claim (a try counted before anything is read), complete, fail (backoff, then quarantine),
//! requeue, operator retries, and the recovery of jobs a crash left running.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::{
    Enqueued, FileSeen, JOB_COLUMNS, Job, Queue, QueueError, Result, ScreenedSlice, SliceRecord, job_row,
    now_ms,
};
use crate::protocol::JobState::{Done, Failed, Pending, Quarantined, Running};
use crate::protocol::{JobState, Thumbnail};

impl Queue {
    /// After a clean stop: jobs still running go back to pending with their try given back.
    /// Returns how many.
    pub fn requeue_running(&mut self) -> Result<usize> {
        let now = now_ms();
        let n = self
            .conn
            .execute(
                &format!(
                    "UPDATE jobs SET state = '{Pending}', attempts = MAX(attempts - 1, 0), updated_ms = ?1
                 WHERE state = '{Running}'"
                ),
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
                .prepare(&format!("SELECT id, attempts, crashes FROM jobs WHERE state = '{Running}'"))?
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
                        &format!("UPDATE jobs SET state = '{Quarantined}', crashes = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1"),
                        params![id, crashes, reason, now],
                    )?;
                    quarantined.push((id, reason));
                } else {
                    tx.execute(
                        &format!("UPDATE jobs SET state = '{Pending}', crashes = ?2, next_attempt_ms = 0, updated_ms = ?3 WHERE id = ?1"),
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
                    &format!(
                        "UPDATE jobs SET path = ?2 WHERE id = ?1 AND state IN ('{Pending}', '{Failed}')"
                    ),
                    params![id, path],
                )?;
                return Ok(Enqueued::Known(id, JobState::parse(&state)));
            }
            tx.execute(
                &format!(
                    "INSERT INTO jobs (sha256, models, path, size, state, series_key, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, '{Pending}', ?5, ?6, ?6)"
                ),
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
            let due = format!("models = ?1 AND state IN ('{Pending}', '{Failed}') AND next_attempt_ms <= ?2");
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
                    &format!("UPDATE jobs SET state = '{Running}', attempts = attempts + 1, updated_ms = ?2 WHERE id = ?1"),
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
                &format!("UPDATE jobs SET state = '{Done}', reason = NULL, summary = ?2, series_key = COALESCE(?3, series_key),
                 updated_ms = ?4 WHERE id = ?1"),
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
            let Some(attempts) = row.map(|(a, st)| if JobState::parse(&st) == JobState::Running { a } else { a + 1 }) else {
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
                &format!("UPDATE jobs SET state = '{Pending}', attempts = MAX(attempts - 1, 0), next_attempt_ms = ?2, updated_ms = ?3
                 WHERE id = ?1 AND state = '{Running}'"),
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
                    &format!("UPDATE jobs SET state = '{Pending}', attempts = 0, crashes = 0, next_attempt_ms = 0, updated_ms = ?2 WHERE id = ?1"),
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

    /// An operator's retry of everything failed or quarantined (after a broken device, say):
    /// -> pending, tries reset. Returns how many.
    pub fn retry_all(&mut self) -> Result<usize> {
        let now = now_ms();
        self.conn
            .execute(
                &format!("UPDATE jobs SET state = '{Pending}', attempts = 0, crashes = 0, next_attempt_ms = 0, updated_ms = ?2
                 WHERE models = ?1 AND state IN ('{Failed}', '{Quarantined}')"),
                params![self.models, now],
            )
            .map_err(self.db())
    }
}
