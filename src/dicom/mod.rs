//! DICOM in and out, beside the watch folders and the JSON reports:
//! - [`seg`], [`sr`], [`capture`]: per reported series, a Segmentation, a TID 1500 measurement
//!   report and secondary-capture overlays, written with dicom-object into the series folder next
//!   to `series.json` (setting `dicom.outputs`), atomically, and reissued with each revision;
//! - [`receiver`]: a C-STORE/C-ECHO SCP (dicom-ul) that stores each received instance durably in
//!   an incoming folder and queues it before it answers success;
//! - [`forward`]: a C-STORE SCU that sends the written objects to configured destinations through
//!   a durable outbox (a table in the queue database) with retries and backoff.
//!
//! The objects copy the source's Patient, Study and Frame of Reference attributes, as the standard
//! requires of derived objects; nothing of the patient is logged, and file names are UIDs.
//! UIDs: see [`uids`] (root `2.25`, name-based).

pub mod capture;
pub mod elements;
pub mod forward;
pub mod receiver;
pub mod seg;
pub mod settings;
pub mod source;
pub mod sr;
pub mod uids;

use std::path::{Path, PathBuf};

pub use settings::{DicomSettings, ObjectKind};

use crate::daemon::outputs::sanitize;
use crate::daemon::series::SeriesReport;
use crate::fsutil::AtomicBatch;

/// File name of the SEG inside the series folder.
pub const SEG_FILE: &str = "seg.dcm";
/// File name of the SR inside the series folder.
pub const SR_FILE: &str = "sr.dcm";
/// Suffix of the overlays' file names (`<source SOP instance UID>_sc.dcm`).
pub const SC_SUFFIX: &str = "_sc.dcm";

/// One DICOM object written for a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub kind: ObjectKind,
    pub path: PathBuf,
    pub sop_class_uid: &'static str,
    pub sop_instance_uid: String,
}

/// Writes the configured DICOM objects of a reported series into `<output>/<key>/`, all files
/// appearing together; `paths(job_id)` lists where a job's source file was seen.
pub fn write_series(
    output: &Path,
    kinds: &[ObjectKind],
    report: &SeriesReport,
    paths: impl Fn(i64) -> Vec<PathBuf>,
) -> Result<Vec<Written>, String> {
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    let src = source::gather(output, report, paths)?;
    let dir = output.join(&report.series_key);
    let mut batch = AtomicBatch::new(&dir).map_err(|e| e.to_string())?;
    let mut written = Vec::new();
    let mut seg_uid = None;
    if kinds.contains(&ObjectKind::Seg) {
        let (uid, bytes) = seg::build(&src, report)?;
        batch.add(SEG_FILE, &bytes).map_err(|e| e.to_string())?;
        written.push(Written {
            kind: ObjectKind::Seg,
            path: dir.join(SEG_FILE),
            sop_class_uid: seg::SEG_STORAGE,
            sop_instance_uid: uid.clone(),
        });
        seg_uid = Some(uid);
    }
    if kinds.contains(&ObjectKind::Sr) {
        let (uid, bytes) = sr::build(&src, report, seg_uid.as_deref())?;
        batch.add(SR_FILE, &bytes).map_err(|e| e.to_string())?;
        written.push(Written {
            kind: ObjectKind::Sr,
            path: dir.join(SR_FILE),
            sop_class_uid: sr::SR_STORAGE,
            sop_instance_uid: uid,
        });
    }
    if kinds.contains(&ObjectKind::Sc) {
        for (source_uid, uid, bytes) in capture::build(&src, report)? {
            let name = format!("{}{SC_SUFFIX}", sanitize(&source_uid));
            batch.add(&name, &bytes).map_err(|e| e.to_string())?;
            written.push(Written {
                kind: ObjectKind::Sc,
                path: dir.join(name),
                sop_class_uid: capture::SC_STORAGE,
                sop_instance_uid: uid,
            });
        }
    }
    batch.commit().map_err(|e| e.to_string())?;
    Ok(written)
}

/// The daemon's hook after a series report: writes the configured objects and hands those to be
/// forwarded to the outbox. Failures are logged (job ids and reasons only) and never stop the daemon.
pub(crate) fn after_series_report(
    shared: &crate::daemon::Shared,
    queue: &crate::daemon::queue::Queue,
    report: &SeriesReport,
    settings: &crate::daemon::DaemonSettings,
) {
    let dicom = &settings.dicom;
    if dicom.outputs.is_empty() || report.series_uid.is_none() {
        return;
    }
    let paths = |id: i64| -> Vec<PathBuf> {
        let Ok(job) = queue.job(id) else { return Vec::new() };
        let mut v = vec![job.path.clone()];
        v.extend(
            queue
                .paths_for(&job.sha256)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| *p != job.path),
        );
        v
    };
    let written = match write_series(&settings.output, &dicom.outputs, report, paths) {
        Ok(w) => w,
        Err(e) => {
            shared.publish(
                crate::protocol::EventKind::Warning,
                format!("series {}: DICOM objects not written: {e}", report.series_key),
                None,
                Some(report.series_key.clone()),
            );
            return;
        }
    };
    tracing::info!(
        series = %report.series_key,
        revision = report.revision,
        objects = written.len(),
        "DICOM objects written"
    );
    let f = &dicom.forward;
    let to_send: Vec<Written> = written
        .into_iter()
        .filter(|w| f.objects.contains(&w.kind))
        .collect();
    if f.destinations.is_empty() || to_send.is_empty() {
        return;
    }
    match forward::add(queue.connection(), &f.destinations, &report.series_key, &to_send) {
        Ok(n) => {
            tracing::info!(series = %report.series_key, entries = n, "DICOM objects queued for forwarding")
        }
        Err(e) => {
            tracing::error!(series = %report.series_key, error = %e, "cannot queue DICOM objects for forwarding")
        }
    }
}
