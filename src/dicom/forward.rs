//! Forwarding: the DICOM objects written for a series are sent by C-STORE (dicom-ul, blocking)
//! to every configured destination, through a durable outbox.
//!
//! The outbox is the `outbox` table of the queue database: one row per (destination, object),
//! added in one transaction when the objects are written. A row is `pending` until the
//! destination answers success (`sent`); a refusal, a timeout or a destination that is down
//! counts a try and schedules the next after `backoff_s * 2^(tries-1)` (capped); after `retries`
//! more tries it is `failed`, shown in `ctmask status`, the socket's snapshot and the dashboard, and
//! sent again on request (`retry_forward`). A newer revision of a series replaces the unsent
//! rows of the objects it reissues (same file, new SOP instance). Sending is at least once: a
//! crash between the destination's success and the row's update sends that object again, which
//! a PACS treats as the same SOP instance.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociationOptions, Pdu};
use rusqlite::{Connection, params};

use super::settings::{Destination, DicomSettings};
use super::{Written, receiver};
use crate::clock::now_ms;
use crate::daemon::{DaemonError, Shared};
use crate::protocol::{EventKind, OutboxItem, OutboxStatus};

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
    pub kind: String,
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
                "DELETE FROM outbox WHERE destination = ?1 AND path = ?2 AND state != 'sent' AND sop_instance_uid != ?3",
                params![name, path, w.sop_instance_uid],
            )?;
            n += tx.execute(
                "INSERT OR IGNORE INTO outbox (destination, series_key, kind, path, sop_class_uid, sop_instance_uid,
                 state, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)",
                params![name, series_key, w.kind.as_str(), path, w.sop_class_uid, w.sop_instance_uid, now],
            )?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Pending rows whose time has come, oldest first.
pub fn due(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare(
        "SELECT id, destination, series_key, kind, path, sop_class_uid, sop_instance_uid, attempts FROM outbox
         WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2",
    )?;
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
        "UPDATE outbox SET state = 'sent', reason = NULL, updated_ms = ?2 WHERE id = ?1",
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
) -> rusqlite::Result<&'static str> {
    let attempts = row.attempts + 1;
    let (state, next) = if attempts > retries {
        ("failed", 0)
    } else {
        ("pending", now_ms() + backoff(attempts).as_millis() as i64)
    };
    conn.execute(
        "UPDATE outbox SET state = ?2, attempts = ?3, reason = ?4, next_attempt_ms = ?5, updated_ms = ?6 WHERE id = ?1",
        params![row.id, state, attempts, reason, next, now_ms()],
    )?;
    Ok(state)
}

/// An operator's retry: failed rows (one, or all) -> pending now, tries reset. Returns how many.
pub fn retry(conn: &Connection, id: Option<i64>) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = 0, updated_ms = ?2
         WHERE state = 'failed' AND (?1 IS NULL OR id = ?1)",
        params![id, now_ms()],
    )
}

/// Counts and the unsent rows (newest first, at most `limit`) for the status.
pub fn status(conn: &Connection, limit: usize) -> rusqlite::Result<OutboxStatus> {
    let mut s = OutboxStatus::default();
    let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (state, n) = row?;
        let n = n.max(0) as u64;
        match state.as_str() {
            "pending" => s.pending = n,
            "sent" => s.sent = n,
            "failed" => s.failed = n,
            _ => {}
        }
    }
    let now = now_ms();
    let mut stmt = conn.prepare(
        "SELECT id, destination, series_key, kind, state, attempts, reason, next_attempt_ms FROM outbox
         WHERE state != 'sent' ORDER BY id DESC LIMIT ?1",
    )?;
    let items = stmt.query_map(params![limit as i64], |r| {
        let state: String = r.get(4)?;
        let attempts: u32 = r.get(5)?;
        let next: i64 = r.get(7)?;
        Ok(OutboxItem {
            id: r.get(0)?,
            destination: r.get(1)?,
            series: r.get(2)?,
            kind: r.get(3)?,
            next_retry_s: (state == "pending" && attempts > 0).then(|| (next - now).max(0) as f64 / 1000.0),
            state,
            attempts,
            reason: r.get(6)?,
        })
    })?;
    s.items = items.collect::<rusqlite::Result<_>>()?;
    Ok(s)
}

/// The forwarding thread: sends due outbox rows, one association per destination and round.
pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    conn: Connection,
}

impl Forwarder {
    /// None when no destination is configured.
    pub(crate) fn new(shared: &Arc<Shared>) -> Result<Option<Forwarder>, DaemonError> {
        if shared.settings().dicom.forward.destinations.is_empty() {
            return Ok(None);
        }
        let queue = crate::daemon::queue::Queue::open(&shared.state_dir, &shared.models_hash)?;
        Ok(Some(Forwarder {
            shared: shared.clone(),
            conn: queue.into_connection(),
        }))
    }

    pub(crate) fn run(self) {
        while !self.shared.stopping() {
            let rows = match due(&self.conn, 64) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            if rows.is_empty() {
                if self.shared.shutdown.wait(Duration::from_millis(500)) {
                    return;
                }
                continue;
            }
            let settings = self.shared.settings().dicom;
            let mut by_destination: BTreeMap<String, Vec<Row>> = BTreeMap::new();
            for r in rows {
                by_destination.entry(r.destination.clone()).or_default().push(r);
            }
            for (name, rows) in by_destination {
                let dest = settings.forward.destinations.iter().find(|d| d.name() == name);
                match dest {
                    Some(d) => self.send_all(&settings, d, &rows),
                    None => {
                        for r in &rows {
                            self.failed(r, "destination no longer configured", &settings);
                        }
                    }
                }
            }
        }
    }

    fn failed(&self, row: &Row, reason: &str, settings: &DicomSettings) {
        let f = &settings.forward;
        match mark_failed(&self.conn, row, reason, f.retries, |a| f.backoff(a)) {
            Ok(state) => {
                let then = if state == "failed" {
                    "gave up (retry with `ctmask status --retry-forward`)".to_string()
                } else {
                    format!("try {} failed", row.attempts + 1)
                };
                self.shared.publish(
                    EventKind::Warning,
                    format!(
                        "forwarding {} of series {} to {}: {then}: {reason}",
                        row.kind, row.series_key, row.destination
                    ),
                    None,
                    Some(row.series_key.clone()),
                );
            }
            Err(e) => tracing::error!(error = %e, "cannot record a forwarding failure"),
        }
    }

    fn send_all(&self, settings: &DicomSettings, dest: &Destination, rows: &[Row]) {
        let f = &settings.forward;
        let timeout = Duration::from_secs_f64(f.timeout_s);
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(f.calling_ae_title.0.clone())
            .called_ae_title(dest.ae_title.0.clone())
            .connection_timeout(timeout)
            .read_timeout(timeout)
            .write_timeout(timeout);
        let mut classes: Vec<&str> = rows.iter().map(|r| r.sop_class_uid.as_str()).collect();
        classes.sort_unstable();
        classes.dedup();
        for c in &classes {
            options = options.with_abstract_syntax(*c);
        }
        let mut assoc = match options.establish((dest.host.as_str(), dest.port.0)) {
            Ok(a) => a,
            Err(e) => {
                for r in rows {
                    self.failed(r, &format!("cannot associate: {e}"), settings);
                }
                return;
            }
        };
        for (i, row) in rows.iter().enumerate() {
            if self.shared.stopping() {
                break;
            }
            match store_one(&mut assoc, row, i as u16 + 1) {
                Ok(()) => {
                    if let Err(e) = mark_sent(&self.conn, row.id) {
                        tracing::error!(error = %e, "cannot record a sent object");
                    }
                    tracing::info!(series = %row.series_key, kind = %row.kind, destination = %row.destination, "forwarded");
                }
                Err(Failure::Superseded) => {
                    let _ = self
                        .conn
                        .execute("DELETE FROM outbox WHERE id = ?1", params![row.id]);
                }
                Err(Failure::Object(reason)) => self.failed(row, &reason, settings),
                Err(Failure::Association(reason)) => {
                    for r in &rows[i..] {
                        self.failed(r, &reason, settings);
                    }
                    let _ = assoc.abort();
                    return;
                }
            }
        }
        let _ = assoc.release();
    }
}

enum Failure {
    /// The file now holds a newer revision (its own row sends it).
    Superseded,
    /// This object was refused.
    Object(String),
    /// The association broke: the rest of the round fails too.
    Association(String),
}

/// C-STORE of one outbox row on an open association.
fn store_one(
    assoc: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
    row: &Row,
    message_id: u16,
) -> Result<(), Failure> {
    let file = OpenFileOptions::new()
        .open_file(&row.path)
        .map_err(|_| Failure::Object(format!("the {} file is no longer readable", row.kind)))?;
    if file
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        != row.sop_instance_uid
    {
        return Err(Failure::Superseded);
    }
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.abstract_syntax == row.sop_class_uid
                && pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
        })
        .cloned()
        .ok_or_else(|| Failure::Object(format!("the destination does not accept {}", row.kind)))?;
    let ts = TransferSyntaxRegistry
        .get(pc.transfer_syntax.trim_end_matches('\0'))
        .ok_or_else(|| Failure::Object(format!("unknown transfer syntax {}", pc.transfer_syntax)))?;
    let mut data = Vec::new();
    let obj: InMemDicomObject = file.into_inner();
    obj.write_dataset_with_ts(&mut data, ts)
        .map_err(|e| Failure::Object(format!("cannot encode: {e}")))?;
    let cmd = receiver::command(vec![
        (
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(row.sop_class_uid.as_str()),
        ),
        (tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
        (tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        (tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        (
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0000u16),
        ),
        (
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(row.sop_instance_uid.as_str()),
        ),
    ])
    .map_err(Failure::Object)?;
    let broken = |e: &dyn std::fmt::Display| Failure::Association(format!("association broke: {e}"));
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc.id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd,
            }],
        })
        .map_err(|e| broken(&e))?;
    {
        let mut writer = assoc.send_pdata(pc.id);
        writer.write_all(&data).map_err(|e| broken(&e))?;
        writer.finish().map_err(|e| broken(&e))?;
    }
    let mut command_buf = Vec::new();
    loop {
        match assoc.receive().map_err(|e| broken(&e))? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        continue;
                    }
                    command_buf.extend_from_slice(&pdv.data);
                    if !pdv.is_last {
                        continue;
                    }
                    let rsp = InMemDicomObject::read_dataset_with_ts(
                        command_buf.as_slice(),
                        &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                    )
                    .map_err(|e| broken(&e))?;
                    let status = rsp
                        .get(tags::STATUS)
                        .and_then(|e| e.to_int::<u16>().ok())
                        .unwrap_or(0xFFFF);
                    // success, or one of the warnings (coercion, elements discarded, not verified)
                    return if matches!(status, 0x0000 | 0xB000 | 0xB006 | 0xB007) {
                        Ok(())
                    } else {
                        Err(Failure::Object(format!("refused with status 0x{status:04X}")))
                    };
                }
            }
            Pdu::AbortRQ { .. } => return Err(Failure::Association("aborted by the destination".into())),
            other => {
                return Err(Failure::Association(format!(
                    "unexpected PDU: {}",
                    other.short_description()
                )));
            }
        }
    }
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
    use crate::dicom::ObjectKind;
    use crate::dicom::settings::{AeTitle, Port};

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
        assert_eq!(
            mark_failed(conn, &rows[0], "down", 1, backoff).unwrap(),
            "pending"
        );
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
            "failed"
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
