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

use super::receiver;
use super::settings::{Destination, DicomSettings};
use crate::daemon::{DaemonError, Shared};
use crate::protocol::EventKind;

mod outbox;
pub(crate) use outbox::snapshot;
pub use outbox::{OutboxState, Row, SCHEMA, add, due, mark_failed, mark_sent, retry, status};

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
                let then = if state == OutboxState::Failed {
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
