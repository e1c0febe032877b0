//! The DICOM receiver: a C-STORE and C-ECHO SCP on dicom-ul's blocking association API.
//!
//! Accepted: every CT image storage SOP class (CT, Enhanced CT, Legacy Converted Enhanced CT) and
//! Verification, in every transfer syntax the slice reader decodes. Callers must address the
//! configured AE title and, when `allowed_calling_ae_titles` is set, call with one of them;
//! others are rejected at association (A-ASSOCIATE-RJ, calling/called AE title not recognised).
//!
//! Durability: a received instance is written as a DICOM file (preamble, file meta from the
//! command set and the presentation context, then the data set bytes exactly as received) under a
//! temporary name in the incoming folder, fsynced, renamed to `<SOP instance UID>-<hash>.dcm`, the
//! folder fsynced, and enqueued (one committed SQLite transaction) before the C-STORE response
//! says success. A crash at any point before that response loses nothing acknowledged; a crash
//! after the rename but before the enqueue leaves a whole file that the watcher (which also watches
//! the incoming folder) queues at the next start. While the output disk is low, stores are refused
//! with "out of resources" (0xA700) so the sender keeps the images and retries.
//!
//! Logs name AE titles, peer addresses and job ids, never patient attributes.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::Association;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use dicom_ul::{Pdu, ServerAssociationOptions};

use super::settings::ReceiverSettings;
use crate::daemon::Shared;
use crate::daemon::outputs::sanitize;
use crate::daemon::queue::{Enqueued, FileSeen, Queue};
use crate::digest::sha256_hex;
use crate::fsutil::write_atomic_creating_dir;
use crate::protocol::EventKind;

/// Storage SOP classes accepted: CT, Enhanced CT, Legacy Converted Enhanced CT.
pub const CT_STORAGE_CLASSES: [&str; 3] = [
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2.2",
];
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Transfer syntaxes accepted: every one the slice reader decodes.
pub const TRANSFER_SYNTAXES: [&str; 13] = crate::slice::DECODED_TRANSFER_SYNTAXES;

pub const STATUS_SUCCESS: u16 = 0x0000;
pub const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
pub const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;

/// Called AE title must be ours; calling AE title must be allowed (when a list is set).
struct AllowList {
    allowed: Vec<String>,
}

impl AccessControl for AllowList {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == calling_ae_title.trim()) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Binds the receiver's listening socket.
pub fn bind(settings: &ReceiverSettings) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::new(settings.bind, settings.port.0))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Accepts associations until the daemon stops, at most `max_associations` at a time (further
/// callers wait in the listen backlog).
pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>, models_hash: String) {
    let settings = shared.settings().dicom.receiver;
    let active = Arc::new(AtomicUsize::new(0));
    tracing::info!(
        ae_title = %settings.ae_title.0,
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "DICOM receiver listening"
    );
    while !shared.stopping() {
        if active.load(Ordering::SeqCst) >= settings.max_associations {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "DICOM receiver: accept failed");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        active.fetch_add(1, Ordering::SeqCst);
        let (shared, active, settings, models_hash) = (
            shared.clone(),
            active.clone(),
            settings.clone(),
            models_hash.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("ctmask-dicom-assoc".into())
            .spawn(move || {
                if let Err(e) = association(stream, peer, &shared, &settings, &models_hash) {
                    tracing::warn!(peer = %peer, "DICOM association ended: {e}");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "DICOM receiver: cannot start an association thread");
        }
    }
}

/// Command set of a response, with its group length.
pub(crate) fn command(elements: Vec<(Tag, VR, PrimitiveValue)>) -> Result<Vec<u8>, String> {
    let encode = |obj: &InMemDicomObject| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    let mut obj = InMemDicomObject::from_element_iter(
        elements.into_iter().map(|(t, vr, v)| DataElement::new(t, vr, v)),
    );
    let len = encode(&obj)?.len() as u32;
    obj.put(DataElement::new(
        tags::COMMAND_GROUP_LENGTH,
        VR::UL,
        PrimitiveValue::from(len),
    ));
    encode(&obj)
}

fn response(
    class: &str,
    instance: Option<&str>,
    field: u16,
    message_id: u16,
    status: u16,
) -> Result<Vec<u8>, String> {
    let mut e = vec![
        (tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(class)),
        (tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
        (
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            PrimitiveValue::from(message_id),
        ),
        (
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101u16),
        ),
        (tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(i) = instance {
        e.push((tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(i)));
    }
    command(e)
}

fn uid_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    Some(
        obj.get(tag)?
            .to_str()
            .ok()?
            .trim_end_matches(['\0', ' '])
            .to_string(),
    )
}

/// A C-STORE request waiting for its data set.
struct Pending {
    message_id: u16,
    class: String,
    instance: String,
}

fn association(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    settings: &ReceiverSettings,
    models_hash: &str,
) -> Result<(), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs_f64(settings.timeout_s);
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AllowList {
            allowed: settings
                .allowed_calling_ae_titles
                .iter()
                .map(|a| a.0.clone())
                .collect(),
        })
        .ae_title(settings.ae_title.0.clone())
        .max_pdu_length(settings.max_pdu_bytes)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .with_abstract_syntax(VERIFICATION);
    for class in CT_STORAGE_CLASSES {
        options = options.with_abstract_syntax(class);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts);
    }
    let mut assoc = match options.establish(stream) {
        Ok(a) => a,
        Err(e) => {
            shared.publish(
                EventKind::Warning,
                format!("DICOM association from {peer} refused: {e}"),
                None,
                None,
            );
            return Ok(());
        }
    };
    let calling = assoc.peer_ae_title().trim().to_string();
    tracing::info!(peer = %peer, calling_ae = %calling, "DICOM association accepted");
    let mut queue = Queue::open(&shared.state_dir, models_hash).map_err(|e| e.to_string())?;
    let max_bytes = shared.settings().max_file_bytes;
    let mut command_buf = Vec::new();
    let mut data_buf = Vec::new();
    let mut pending: Option<Pending> = None;
    loop {
        let pdu = match assoc.receive() {
            Ok(p) => p,
            Err(e) => return Err(format!("receive: {e}")),
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    let PDataValue {
                        presentation_context_id: pc,
                        value_type,
                        is_last,
                        data,
                    } = pdv;
                    match value_type {
                        PDataValueType::Command => {
                            command_buf.extend_from_slice(&data);
                            if !is_last {
                                continue;
                            }
                            let cmd = InMemDicomObject::read_dataset_with_ts(
                                command_buf.as_slice(),
                                &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                            )
                            .map_err(|e| format!("unreadable command: {e}"))?;
                            command_buf.clear();
                            let field = cmd
                                .get(tags::COMMAND_FIELD)
                                .and_then(|e| e.to_int::<u16>().ok())
                                .unwrap_or(0);
                            let message_id = cmd
                                .get(tags::MESSAGE_ID)
                                .and_then(|e| e.to_int::<u16>().ok())
                                .unwrap_or(0);
                            match field {
                                0x0030 => {
                                    let rsp =
                                        response(VERIFICATION, None, 0x8030, message_id, STATUS_SUCCESS)?;
                                    send(&mut assoc, pc, rsp)?;
                                }
                                0x0001 => {
                                    pending = Some(Pending {
                                        message_id,
                                        class: uid_of(&cmd, tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default(),
                                        instance: uid_of(&cmd, tags::AFFECTED_SOP_INSTANCE_UID)
                                            .unwrap_or_default(),
                                    });
                                    data_buf.clear();
                                }
                                other => {
                                    tracing::warn!(peer = %peer, command = other, "unsupported DICOM command; aborting");
                                    let _ = assoc.abort();
                                    return Ok(());
                                }
                            }
                        }
                        PDataValueType::Data => {
                            data_buf.extend_from_slice(&data);
                            // a data set far over max_file_bytes is not buffered to the end
                            if data_buf.len() as u64 > max_bytes.saturating_add(1 << 20) {
                                shared.publish(
                                    EventKind::Warning,
                                    format!("DICOM association from {calling} aborted: data set over max_file_bytes"),
                                    None,
                                    None,
                                );
                                let _ = assoc.abort();
                                return Ok(());
                            }
                            if !is_last {
                                continue;
                            }
                            let Some(req) = pending.take() else {
                                return Err("a data set without a C-STORE request".into());
                            };
                            let ts = assoc
                                .presentation_contexts()
                                .iter()
                                .find(|c| c.id == pc)
                                .map(|c| c.transfer_syntax.trim_end_matches('\0').to_string())
                                .ok_or("data on an unknown presentation context")?;
                            let t0 = Instant::now();
                            let status = match store(shared, &mut queue, &req, &ts, &data_buf, settings) {
                                Ok(()) => STATUS_SUCCESS,
                                Err((status, reason)) => {
                                    shared.publish(
                                        EventKind::Warning,
                                        format!("DICOM store from {calling} refused: {reason}"),
                                        None,
                                        None,
                                    );
                                    status
                                }
                            };
                            tracing::debug!(
                                calling_ae = %calling,
                                store_ms = t0.elapsed().as_secs_f64() * 1e3,
                                status,
                                "C-STORE handled"
                            );
                            data_buf.clear();
                            let rsp =
                                response(&req.class, Some(&req.instance), 0x8001, req.message_id, status)?;
                            send(&mut assoc, pc, rsp)?;
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                tracing::info!(peer = %peer, calling_ae = %calling, "DICOM association released");
                return Ok(());
            }
            Pdu::AbortRQ { .. } => return Err("aborted by the peer".into()),
            other => return Err(format!("unexpected PDU: {}", other.short_description())),
        }
    }
}

fn send<S>(assoc: &mut dicom_ul::ServerAssociation<S>, pc: u8, data: Vec<u8>) -> Result<(), String>
where
    S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket,
{
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        })
        .map_err(|e| format!("send: {e}"))
}

/// The file of a received instance: preamble, file meta, the data set bytes as received.
pub fn file_bytes(class: &str, instance: &str, ts: &str, dataset: &[u8]) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance)
        .transfer_syntax(ts)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(dataset.len() + 512);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| e.to_string())?;
    out.extend_from_slice(dataset);
    Ok(out)
}

/// Stores one instance durably and queues it; `Err((status, reason))` when refused.
fn store(
    shared: &Shared,
    queue: &mut Queue,
    req: &Pending,
    ts: &str,
    dataset: &[u8],
    settings: &ReceiverSettings,
) -> Result<(), (u16, String)> {
    if shared.disk_is_low() {
        return Err((STATUS_OUT_OF_RESOURCES, "the output disk is low".into()));
    }
    let max = shared.settings().max_file_bytes;
    if dataset.len() as u64 > max {
        return Err((
            STATUS_OUT_OF_RESOURCES,
            format!("{} bytes > max_file_bytes {max}", dataset.len()),
        ));
    }
    if req.instance.is_empty() || !CT_STORAGE_CLASSES.contains(&req.class.as_str()) {
        return Err((
            STATUS_CANNOT_UNDERSTAND,
            "no SOP instance UID or not a CT storage class".into(),
        ));
    }
    // The file meta's instance UID is the command's, unless that is no UID at all (some
    // de-identification tools write hashes): then a UID derived from it, so that the file stays
    // readable; the data set keeps its own value untouched.
    let meta_uid = if is_uid(&req.instance) {
        req.instance.clone()
    } else {
        super::uids::derived_uid(&["received-invalid-uid", &req.instance])
    };
    let bytes = file_bytes(&req.class, &meta_uid, ts, dataset).map_err(|e| (STATUS_CANNOT_UNDERSTAND, e))?;
    let sha256 = sha256_hex(&bytes);
    let path = incoming_path(&settings.incoming, &req.instance, &sha256);
    let io = |e: String| (STATUS_OUT_OF_RESOURCES, e);
    if !path.exists() {
        write_atomic_creating_dir(&path, &bytes).map_err(|e| {
            if e.is_disk_full() {
                shared.note_disk_full();
            }
            // the reason without the path (an input path never goes into the logs)
            io(format!("cannot store in the incoming folder: {}", e.source))
        })?;
    }
    let meta = std::fs::metadata(&path).map_err(|e| io(format!("cannot stat a stored instance: {e}")))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    let seen = FileSeen {
        path,
        sha256,
        size: meta.len(),
        mtime_ns,
        series_key: None,
    };
    match queue
        .enqueue(&seen)
        .map_err(|e| io(format!("cannot queue: {e}")))?
    {
        Enqueued::New(id) => {
            shared.publish(
                EventKind::Queued,
                format!("job {id} queued (received over DICOM)"),
                Some(id),
                None,
            );
            shared.wake();
        }
        Enqueued::Known(id, state) => {
            tracing::debug!(job = id, state = state.as_str(), "received content already known");
        }
    }
    Ok(())
}

/// Digits and dots, at most 64 characters (what the file meta group must hold).
pub fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c == '.' || c.is_ascii_digit())
}

/// `<incoming>/<SOP instance UID>-<first 16 hex digits of the file's SHA-256>.dcm`.
pub fn incoming_path(incoming: &Path, instance: &str, sha256: &str) -> PathBuf {
    incoming.join(format!("{}-{}.dcm", sanitize(instance), &sha256[..16]))
}

/// The receiver's socket when it is enabled (the incoming folder created first).
pub(crate) fn listen(
    settings: &crate::daemon::DaemonSettings,
) -> Result<Option<TcpListener>, crate::daemon::DaemonError> {
    let r = &settings.dicom.receiver;
    if !r.enabled {
        return Ok(None);
    }
    let addr = SocketAddr::new(r.bind, r.port.0).to_string();
    std::fs::create_dir_all(&r.incoming).map_err(|source| crate::daemon::DaemonError::DicomListen {
        addr: addr.clone(),
        source,
    })?;
    bind(r)
        .map(Some)
        .map_err(|source| crate::daemon::DaemonError::DicomListen { addr, source })
}

/// The watcher's settings: the incoming folder is watched too when the receiver is on.
pub(crate) fn watched(settings: &crate::daemon::DaemonSettings) -> crate::daemon::DaemonSettings {
    let mut s = settings.clone();
    if s.dicom.receiver.enabled {
        s.watch.push(s.dicom.receiver.incoming.clone());
    }
    s
}
