//! The intake thread: hashes each file the watcher took (streamed SHA-256; oversized files are
//! keyed by path, size and mtime instead and quarantined unread) and enqueues it. It holds while
//! the output disk is low, so files wait in the channel rather than being dropped.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::input;
use super::outputs;
use super::queue::{self, Enqueued, FileSeen, Queue};
use super::settings::DaemonSettings;
use super::shared::Shared;
use super::watcher::TakenFile;
use super::worker;
use crate::protocol::{EventKind, JobState};

/// The intake thread: hashes taken files and enqueues them (holding while the disk is low).
pub(crate) fn intake_loop(shared: Arc<Shared>, mut queue: Queue, rx: Receiver<TakenFile>) {
    loop {
        shared.beats.intake.beat();
        let taken = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) if !shared.stopping() => continue,
            Err(_) => return,
        };
        while shared.disk_is_low() && !shared.stopping() {
            shared.beats.intake.beat();
            shared.shutdown.wait(Duration::from_millis(200));
        }
        if shared.stopping() {
            return;
        }
        let settings = shared.settings();
        let oversize = taken.size > settings.max_file_bytes;
        let sha256 = if oversize {
            // Not read: keyed by where and what it is, and quarantined at once.
            let key = format!(
                "oversize\n{}\n{}\n{}",
                taken.path.display(),
                taken.size,
                taken.mtime_ns
            );
            crate::digest::sha256_hex(key.as_bytes())
        } else {
            match input::hash_input(&taken.path, &settings.input_roots(), settings.max_file_bytes) {
                Ok(h) => h,
                Err(e) => {
                    // Vanished, or replaced by a link, FIFO or device since the watcher saw it.
                    tracing::debug!(error = %e, "a taken file could not be hashed; skipped");
                    continue;
                }
            }
        };
        let seen = FileSeen {
            series_key: loose_image_key(&taken.path, &settings),
            path: taken.path.clone(),
            sha256,
            size: taken.size,
            mtime_ns: taken.mtime_ns,
        };
        match queue.enqueue(&seen) {
            Ok(Enqueued::New(id)) => {
                tracing::debug!(
                    job = id,
                    latency_ms = taken.at.elapsed().as_secs_f64() * 1e3,
                    "queued"
                );
                shared.publish(
                    EventKind::Queued,
                    format!("job {id} queued"),
                    Some(id),
                    seen.series_key.clone(),
                );
                if oversize {
                    let job = queue::Job {
                        id,
                        sha256: seen.sha256.clone(),
                        path: seen.path.clone(),
                        state: JobState::Pending,
                        attempts: 0,
                        reason: None,
                        series_key: None,
                        created_ms: 0,
                        next_attempt_ms: 0,
                        crashes: 0,
                    };
                    let reason = format!(
                        "file too large: {} bytes > max_file_bytes {}",
                        taken.size, settings.max_file_bytes
                    );
                    worker::record_failure(&mut queue, &shared, &job, &reason, true);
                }
                shared.wake();
            }
            Ok(Enqueued::Known(id, state)) => {
                tracing::debug!(job = id, state = state.as_str(), "content already known");
            }
            Err(e) => {
                if let Some(held) = shared.log_limit.allow("enqueue") {
                    tracing::error!(error = %e, held_back = held, "cannot enqueue a file");
                }
            }
        }
    }
}

/// Series key of PNG/JPEG files (their folder); DICOM series are known after reading.
fn loose_image_key(path: &Path, settings: &DaemonSettings) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let (mut file, _) = input::open_input(path, &settings.input_roots(), settings.max_file_bytes).ok()?;
    let n = file.read(&mut head).ok()?;
    let raster = head[..n].starts_with(b"\x89PNG") || head[..n].starts_with(&[0xFF, 0xD8, 0xFF]);
    raster.then(|| outputs::folder_key(path))
}
