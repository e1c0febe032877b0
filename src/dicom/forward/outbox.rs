//! The forwarding outbox: the `outbox` table of the queue database, one row per (destination,
//! object), and its transitions. A row is `pending` until the destination answers success
//! (`sent`); a failed try schedules the next after a backoff, and after `retries` more tries the
//! row is `failed` until an operator retries it. The states are [`OutboxState`], spelled in the
//! SQL from its `as_str` as the queue spells `JobState`.

use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, params};

use super::super::Written;
use super::super::settings::Destination;
use crate::clock::now_ms;
use crate::dicom::ObjectKind;
use crate::protocol::{OutboxItem, OutboxStatus};

/// Where an outbox row is (the `outbox.state` column and `OutboxItem::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting for its (next) try.
    Pending,
    /// The destination answered success.
    Sent,
    /// Out of tries: waits for an operator's retry.
    Failed,
}

impl OutboxState {
    pub const ALL: [OutboxState; 3] = [OutboxState::Pending, OutboxState::Sent, OutboxState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        OutboxState::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for OutboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromSql for OutboxState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        OutboxState::parse(s).ok_or_else(|| FromSqlError::Other(format!("unknown outbox state `{s}`").into()))
    }
}

impl FromSql for ObjectKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        ObjectKind::parse(s).ok_or_else(|| FromSqlError::Other(format!("unknown object kind `{s}`").into()))
    }
}

use OutboxState::{Failed, Pending, Sent};

/// The outbox table (created with the queue's schema).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY,
  destination TEXT NOT NULL,
  series_key TEXT NOT NULL,
  kind TEXT NOT NULL,
  path TEXT NOT NULL,
  sop_class_uid TEXT NOT NULL,
  sop_instance_uid TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending','sent','failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_ms INTEGER NOT NULL DEFAULT 0,
  reason TEXT,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_ms);
";

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub destination: String,
    pub series_key: String,
    pub kind: ObjectKind,
    pub path: std::path::PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub attempts: u32,
}

/// Adds the objects of a series for every destination; unsent rows of the files they replace go.
pub fn add(
    conn: &Connection,
    destinations: &[Destination],
    series_key: &str,
    objects: &[Written],
) -> rusqlite::Result<usize> {
    let now = now_ms();
    let tx = conn.unchecked_transaction()?;
    let mut n = 0;
    for d in destinations {
        let name = d.name();
        for w in objects {
            let path = w.path.to_string_lossy();
            tx.execute(
                &format!(
                    "DELETE FROM outbox WHERE destination = ?1 AND path = ?2 AND state != '{Sent}' AND sop_instance_uid != ?3"
                ),
                params![name, path, w.sop_instance_uid],
            )?;
            n += tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO outbox (destination, series_key, kind, path, sop_class_uid, sop_instance_uid,
                     state, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, '{Pending}', ?7, ?7)"
                ),
                params![name, series_key, w.kind.as_str(), path, w.sop_class_uid, w.sop_instance_uid, now],
            )?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Pending rows whose time has come, oldest first.
pub fn due(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT id, destination, series_key, kind, path, sop_class_uid, sop_instance_uid, attempts FROM outbox
         WHERE state = '{Pending}' AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now_ms(), limit as i64], |r| {
        Ok(Row {
            id: r.get(0)?,
            destination: r.get(1)?,
            series_key: r.get(2)?,
            kind: r.get(3)?,
            path: std::path::PathBuf::from(r.get::<_, String>(4)?),
            sop_class_uid: r.get(5)?,
            sop_instance_uid: r.get(6)?,
            attempts: r.get(7)?,
        })
    })?;
    rows.collect()
}

pub fn mark_sent(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute(
        &format!("UPDATE outbox SET state = '{Sent}', reason = NULL, updated_ms = ?2 WHERE id = ?1"),
        params![id, now_ms()],
    )?;
    Ok(())
}

/// Counts a failed try: pending again after the backoff, or failed after `retries` more tries.
pub fn mark_failed(
    conn: &Connection,
    row: &Row,
    reason: &str,
    retries: u32,
    backoff: impl Fn(u32) -> Duration,
) -> rusqlite::Result<OutboxState> {
    let attempts = row.attempts + 1;
    let (state, next) = if attempts > retries {
        (Failed, 0)
    } else {
        (Pending, now_ms() + backoff(attempts).as_millis() as i64)
    };
    conn.execute(
        "UPDATE outbox SET state = ?2, attempts = ?3, reason = ?4, next_attempt_ms = ?5, updated_ms = ?6 WHERE id = ?1",
        params![row.id, state.as_str(), attempts, reason, next, now_ms()],
    )?;
    Ok(state)
}

/// An operator's retry: failed rows (one, or all) -> pending now, tries reset. Returns how many.
pub fn retry(conn: &Connection, id: Option<i64>) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE outbox SET state = '{Pending}', attempts = 0, next_attempt_ms = 0, updated_ms = ?2
             WHERE state = '{Failed}' AND (?1 IS NULL OR id = ?1)"
        ),
        params![id, now_ms()],
    )
}

/// Counts and the unsent rows (newest first, at most `limit`) for the status.
pub fn status(conn: &Connection, limit: usize) -> rusqlite::Result<OutboxStatus> {
    let mut s = OutboxStatus::default();
    let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, OutboxState>(0)?, r.get::<_, i64>(1)?)))? {
        let (state, n) = row?;
        let n = n.max(0) as u64;
        match state {
            Pending => s.pending = n,
            Sent => s.sent = n,
            Failed => s.failed = n,
        }
    }
    let now = now_ms();
    let mut stmt = conn.prepare(&format!(
        "SELECT id, destination, series_key, kind, state, attempts, reason, next_attempt_ms FROM outbox
         WHERE state != '{Sent}' ORDER BY id DESC LIMIT ?1"
    ))?;
    let items = stmt.query_map(params![limit as i64], |r| {
        let state: OutboxState = r.get(4)?;
        let attempts: u32 = r.get(5)?;
        let next: i64 = r.get(7)?;
        Ok(OutboxItem {
            id: r.get(0)?,
            destination: r.get(1)?,
            series: r.get(2)?,
            kind: r.get::<_, ObjectKind>(3)?.as_str().to_string(),
            next_retry_s: (state == Pending && attempts > 0).then(|| (next - now).max(0) as f64 / 1000.0),
            state: state.as_str().to_string(),
            attempts,
            reason: r.get(6)?,
        })
    })?;
    s.items = items.collect::<rusqlite::Result<_>>()?;
    Ok(s)
}

/// The outbox part of the status snapshot (None when forwarding is not configured).
pub(crate) fn snapshot(
    queue: &crate::daemon::queue::Queue,
    settings: &crate::daemon::DaemonSettings,
) -> Option<OutboxStatus> {
    if settings.dicom.forward.destinations.is_empty() {
        return None;
    }
    status(queue.connection(), 50)
        .map_err(|e| tracing::warn!(error = %e, "cannot read the outbox"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::settings::{AeTitle, Port};

    #[test]
    fn the_check_constraint_lists_every_state() {
        let states: Vec<String> = OutboxState::ALL.iter().map(|s| format!("'{s}'")).collect();
        assert!(SCHEMA.contains(&format!("CHECK (state IN ({}))", states.join(","))));
    }

    fn written(kind: ObjectKind, path: &str, uid: &str) -> Written {
        Written {
            kind,
            path: path.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4",
            sop_instance_uid: uid.into(),
        }
    }

    #[test]
    fn the_outbox_retries_backs_off_gives_up_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let q = crate::daemon::queue::Queue::open(dir.path(), "m").unwrap();
        let conn = q.connection();
        let dests = [Destination {
            ae_title: AeTitle::new("PACS"),
            host: "127.0.0.1".into(),
            port: Port(104),
        }];
        let objs = [
            written(ObjectKind::Seg, "/o/S/seg.dcm", "2.25.1"),
            written(ObjectKind::Sr, "/o/S/sr.dcm", "2.25.2"),
        ];
        assert_eq!(add(conn, &dests, "S", &objs).unwrap(), 2);
        assert_eq!(
            add(conn, &dests, "S", &objs).unwrap(),
            0,
            "the same instances once"
        );
        let rows = due(conn, 10).unwrap();
        assert_eq!(rows.len(), 2);
        let backoff = |a: u32| Duration::from_millis(60 * u64::from(a));
        assert_eq!(mark_failed(conn, &rows[0], "down", 1, backoff).unwrap(), Pending);
        mark_sent(conn, rows[1].id).unwrap();
        assert!(due(conn, 10).unwrap().is_empty(), "backing off");
        let s = status(conn, 10).unwrap();
        assert_eq!((s.pending, s.sent, s.failed), (1, 1, 0));
        assert_eq!(s.items[0].reason.as_deref(), Some("down"));
        assert!(s.items[0].next_retry_s.is_some());
        std::thread::sleep(Duration::from_millis(80));
        let again = due(conn, 10).unwrap();
        assert_eq!((again.len(), again[0].attempts), (1, 1));
        assert_eq!(
            mark_failed(conn, &again[0], "still down", 1, backoff).unwrap(),
            Failed
        );
        assert!(
            due(conn, 10).unwrap().is_empty(),
            "failed rows wait for an operator"
        );
        assert_eq!(status(conn, 10).unwrap().failed, 1);
        assert_eq!(retry(conn, Some(999)).unwrap(), 0);
        assert_eq!(retry(conn, None).unwrap(), 1);
        assert_eq!(due(conn, 10).unwrap()[0].attempts, 0);
        // a new revision replaces the unsent row of the same file, not the sent one
        let newer = [
            written(ObjectKind::Seg, "/o/S/seg.dcm", "2.25.3"),
            written(ObjectKind::Sr, "/o/S/sr.dcm", "2.25.4"),
        ];
        assert_eq!(add(conn, &dests, "S", &newer).unwrap(), 2);
        let uids: Vec<String> = due(conn, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.sop_instance_uid)
            .collect();
        assert_eq!(uids, ["2.25.3", "2.25.4"]);
        assert_eq!(status(conn, 10).unwrap().sent, 1);
    }
}
