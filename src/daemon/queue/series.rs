//! Series in the queue: which are due for a report (quiet long enough since their newest slice),
//! their revisions, and the stored summaries (`SeriesRecord`, the `series.summary` column).

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::{Queue, QueueError, Result, SeriesRecord, now_ms};

impl Queue {
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
    pub fn series_reported(&mut self, key: &str, last_done_ms: i64, summary: &SeriesRecord) -> Result<u32> {
        let summary_json = serde_json::to_string(summary).map_err(|source| QueueError::SeriesSummary {
            key: key.to_string(),
            source,
        })?;
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

    /// The stored summary of one reported series (None also for a summary this build cannot
    /// read).
    pub fn series_summary(&self, key: &str) -> Result<Option<SeriesRecord>> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT summary FROM series WHERE key = ?1 AND summary IS NOT NULL",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Stored series summaries, newest first (a summary this build cannot read is skipped).
    pub fn recent_series(&self, limit: usize) -> Result<Vec<SeriesRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT summary FROM series WHERE summary IS NOT NULL ORDER BY reported_ms DESC LIMIT ?1",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![limit as i64], |r| r.get::<_, String>(0))
            .map_err(self.db())?;
        let json: Vec<String> = rows.collect::<rusqlite::Result<_>>().map_err(self.db())?;
        Ok(json.iter().filter_map(|j| serde_json::from_str(j).ok()).collect())
    }
}
