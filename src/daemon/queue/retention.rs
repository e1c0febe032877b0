//! Retention: old done jobs leave the state with their thumbnails and SOP instance records, and
//! paths of files that are gone are forgotten.

use rusqlite::params;

use super::{Queue, Result};
use crate::protocol::JobState::Done;

impl Queue {
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
            let old =
                format!("SELECT id FROM jobs WHERE models = ?1 AND state = '{Done}' AND updated_ms < ?2");
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
                &format!("DELETE FROM jobs WHERE models = ?1 AND state = '{Done}' AND updated_ms < ?2"),
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
}
