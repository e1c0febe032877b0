//! The queue database's tables and their version (`PRAGMA user_version`, which also versions the
//! `jobs.summary` JSON, `SliceRecord`), and the migrations of databases made by earlier builds.

use rusqlite::Connection;

/// The version of the tables and of the `SliceRecord` JSON in `jobs.summary`.
pub const SCHEMA_VERSION: u32 = 1;

pub(super) const SCHEMA: &str = "
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

/// Creates what is missing (with the DICOM outbox's table) and migrates older databases.
pub(super) fn create_or_migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(crate::dicom::forward::SCHEMA)?;
    // Databases made before crashes were counted get the column (existing rows: 0).
    let has_crashes = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'crashes'")
        .and_then(|mut st| st.exists([]))?;
    if !has_crashes {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_marker_is_the_one_the_tables_carry() {
        assert!(SCHEMA.contains(&format!("PRAGMA user_version = {SCHEMA_VERSION};")));
        let conn = Connection::open_in_memory().expect("db");
        create_or_migrate(&conn).expect("create");
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn the_state_check_lists_every_job_state() {
        use crate::protocol::JobState;
        let states: Vec<String> = JobState::ALL
            .iter()
            .filter(|s| **s != JobState::Unknown)
            .map(|s| format!("'{s}'"))
            .collect();
        assert!(SCHEMA.contains(&format!("CHECK (state IN ({}))", states.join(","))));
    }
}
