//! State every daemon thread sees: the live settings, the models' identity, intake (operator
//! pause, low disk), the event hub, the reader's wake-up, and throughput figures.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::queue::{Queue, QueueError};
use super::settings::DaemonSettings;
use super::{disk, systemd};
use crate::config::SliceSettings;
use crate::protocol::{DiskInfo, EventKind, Intake, ModelInfo, PROTOCOL_VERSION, Snapshot, Throughput};
use crate::slice::SliceOptions;

/// State every daemon thread sees.
pub(crate) struct Shared {
    pub(crate) settings: RwLock<DaemonSettings>,
    /// The `slice:` block the reader decodes with (a reload applies to the next file read).
    pub(crate) slice: RwLock<SliceSettings>,
    pub(crate) state_dir: PathBuf,
    pub(crate) models: Vec<ModelInfo>,
    pub(crate) models_hash: String,
    pub(crate) device: String,
    pub(crate) hub: super::hub::Hub,
    /// The one shutdown signal (every thread checks `stopping()`).
    pub(crate) shutdown: super::Shutdown,
    pub(crate) operator_paused: AtomicBool,
    pub(crate) disk_low: Mutex<Option<String>>,
    /// Free bytes on the output disk when a write last failed with ENOSPC/EDQUOT; intake stays
    /// paused until [`DISK_FULL_MARGIN`] more are free (cleared by the disk check).
    pub(crate) disk_full_free: Mutex<Option<u64>>,
    pub(crate) disk: Mutex<Option<DiskInfo>>,
    pub(crate) disk_check_now: AtomicBool,
    pub(crate) rescan: Arc<AtomicBool>,
    pub(crate) wake: (Mutex<u64>, Condvar),
    /// (when, model ms, overhead ms) per screened slice, last minute.
    pub(crate) metrics: Mutex<VecDeque<(Instant, f64, f64)>>,
    pub(crate) slices_total: AtomicU64,
    pub(crate) started: Instant,
    /// Jobs handed to the worker and not finished yet (a crashed job is read only when it is 0).
    pub(crate) in_flight: AtomicUsize,
    pub(crate) beats: super::liveness::Beats,
    /// Distinct jobs in a row whose screening failed (a retry of the same file counts once), and
    /// the alert once `device_failure_limit` is hit.
    pub(crate) failure_streak: Mutex<(Vec<i64>, Option<String>)>,
    pub(crate) log_limit: LogLimiter,
}

/// Repeated errors of one kind are logged at most once per `LOG_EVERY`, with how many were held
/// back, so a broken disk or database does not flood the journal.
#[derive(Default)]
pub(crate) struct LogLimiter(Mutex<std::collections::HashMap<&'static str, (Instant, u64)>>);

/// Shortest time between two log lines of one kind of repeated error.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(60);

impl LogLimiter {
    /// Whether an error of this kind may be logged now: `Some(held back since the last line)`.
    pub(crate) fn allow(&self, kind: &'static str) -> Option<u64> {
        let mut m = self.0.lock().ok()?;
        let now = Instant::now();
        match m.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < LOG_EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = std::mem::take(held);
                *last = now;
                Some(n)
            }
            None => {
                m.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

impl Shared {
    pub(crate) fn settings(&self) -> DaemonSettings {
        self.settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The reader's options (the `slice:` block; a reload applies to the next file read).
    pub(crate) fn slice_options(&self) -> SliceOptions {
        self.slice
            .read()
            .map(|s| s.options())
            .unwrap_or_else(|p| p.into_inner().options())
    }

    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.is_stopping()
    }

    /// Records a write that failed for lack of space (free bytes now, when readable) and asks
    /// the supervisor for a disk check, which pauses intake until space returns.
    pub(crate) fn note_disk_full(&self) {
        let free = disk::disk_info(&self.settings().output).map_or(0, |d| d.free_bytes);
        if let Ok(mut f) = self.disk_full_free.lock() {
            *f = Some(free);
        }
        self.disk_check_now.store(true, Ordering::SeqCst);
    }

    pub(crate) fn disk_is_low(&self) -> bool {
        self.disk_low.lock().map(|d| d.is_some()).unwrap_or(false)
    }

    pub(crate) fn intake_paused(&self) -> bool {
        self.operator_paused.load(Ordering::SeqCst) || self.disk_is_low() || self.device_alert().is_some()
    }

    /// Whether intake is paused for a run of screening failures.
    pub(crate) fn device_failure_paused(&self) -> bool {
        self.device_alert().is_some()
    }

    fn device_alert(&self) -> Option<String> {
        self.failure_streak.lock().ok().and_then(|s| s.1.clone())
    }

    /// A file whose screening failed (the model, not the file's reading): after
    /// `device_failure_limit` in a row, intake pauses with an alert.
    pub(crate) fn note_screening_failure(&self, job_id: i64, reason: &str) {
        let limit = self.settings().device_failure_limit as usize;
        if limit == 0 {
            return;
        }
        let tripped = self.failure_streak.lock().ok().and_then(|mut s| {
            if !s.0.contains(&job_id) && s.0.len() < limit {
                s.0.push(job_id);
            }
            (s.0.len() >= limit && s.1.is_none()).then(|| {
                let alert = format!(
                    "screening failed for {} files in a row (last: {reason}); the device or the models may be broken: fix them, then retry all failed jobs or resume",
                    s.0.len()
                );
                s.1 = Some(alert.clone());
                alert
            })
        });
        if let Some(alert) = tripped {
            self.publish(
                EventKind::IntakePaused,
                format!("intake paused: {alert}"),
                None,
                None,
            );
            systemd::sd_notify(&format!("STATUS=paused: {alert}"));
        }
    }

    pub(crate) fn note_screening_success(&self) {
        if let Ok(mut s) = self.failure_streak.lock() {
            s.0.clear();
        }
    }

    /// Clears a device-failure pause (an operator's resume or retry-all); whether there was one.
    pub(crate) fn clear_device_alert(&self) -> bool {
        let was = self
            .failure_streak
            .lock()
            .map(|mut s| {
                s.0.clear();
                s.1.take().is_some()
            })
            .unwrap_or(false);
        if was {
            self.publish(
                EventKind::IntakeResumed,
                "intake resumed by operator after screening failures".into(),
                None,
                None,
            );
            self.wake();
        }
        was
    }

    pub(crate) fn intake(&self) -> Intake {
        let mut reasons = Vec::new();
        if self.operator_paused.load(Ordering::SeqCst) {
            reasons.push("paused by operator".to_string());
        }
        if let Ok(Some(r)) = self.disk_low.lock().map(|d| d.clone()) {
            reasons.push(r);
        }
        if let Some(alert) = self.device_alert() {
            reasons.push(alert);
        }
        Intake {
            paused: !reasons.is_empty(),
            reasons,
        }
    }

    pub(crate) fn set_operator_pause(&self, paused: bool) {
        if self.operator_paused.swap(paused, Ordering::SeqCst) != paused {
            let (kind, msg) = if paused {
                (EventKind::IntakePaused, "intake paused by operator")
            } else {
                (EventKind::IntakeResumed, "intake resumed by operator")
            };
            self.publish(kind, msg.into(), None, None);
            self.wake();
        }
    }

    /// Publishes an event and logs it (messages carry job ids, series keys and reasons only).
    pub(crate) fn publish(
        &self,
        kind: EventKind,
        message: String,
        job_id: Option<i64>,
        series: Option<String>,
    ) {
        match kind {
            EventKind::Failed | EventKind::Quarantined | EventKind::Warning | EventKind::IntakePaused => {
                tracing::warn!(job = job_id, "{message}")
            }
            _ => tracing::info!(job = job_id, "{message}"),
        }
        self.hub.publish(kind, message, job_id, series);
    }

    /// Wakes the reader (new job, resume, retry).
    pub(crate) fn wake(&self) {
        if let Ok(mut n) = self.wake.0.lock() {
            *n += 1;
            self.wake.1.notify_all();
        }
    }

    pub(crate) fn wait_for_work(&self, timeout: Duration) {
        if let Ok(n) = self.wake.0.lock() {
            let seen = *n;
            let _ = self
                .wake
                .1
                .wait_timeout_while(n, timeout, |n| *n == seen && !self.stopping());
        }
    }

    /// Waits until the worker holds no job (or the daemon stops).
    pub(crate) fn wait_idle(&self) {
        while self.in_flight.load(Ordering::SeqCst) > 0 && !self.stopping() {
            self.beats.reader.beat();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn record_slices(&self, n: usize, model_ms: f64, overhead_ms: f64) {
        self.slices_total.fetch_add(n as u64, Ordering::Relaxed);
        if let Ok(mut m) = self.metrics.lock() {
            let now = Instant::now();
            for _ in 0..n {
                m.push_back((now, model_ms, overhead_ms));
            }
            while m
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > Duration::from_secs(60))
            {
                m.pop_front();
            }
        }
    }

    fn throughput(&self) -> Throughput {
        let now = Instant::now();
        let m = self.metrics.lock().map(|m| m.clone()).unwrap_or_default();
        let recent: Vec<_> = m
            .iter()
            .filter(|(t, _, _)| now.duration_since(*t) <= Duration::from_secs(60))
            .collect();
        let n = recent.len() as f64;
        let window = self.started.elapsed().as_secs_f64().clamp(1.0, 60.0);
        Throughput {
            slices_per_s: n / window,
            slices_total: self.slices_total.load(Ordering::Relaxed),
            mean_model_ms: if n > 0.0 {
                recent.iter().map(|r| r.1).sum::<f64>() / n
            } else {
                0.0
            },
            mean_overhead_ms: if n > 0.0 {
                recent.iter().map(|r| r.2).sum::<f64>() / n
            } else {
                0.0
            },
        }
    }

    pub(crate) fn snapshot(&self, queue: &Queue) -> Result<Snapshot, QueueError> {
        let settings = self.settings();
        Ok(Snapshot {
            protocol: PROTOCOL_VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            time_ms: crate::clock::now_ms().max(0) as u64,
            uptime_s: self.started.elapsed().as_secs_f64(),
            device: self.device.clone(),
            models: self.models.clone(),
            watch: settings
                .watch
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            intake: self.intake(),
            counts: queue.counts()?,
            jobs: queue
                .open_jobs(200)?
                .into_iter()
                .map(|mut j| {
                    j.path = shown_path(&j.path, &settings);
                    j
                })
                .collect(),
            throughput: self.throughput(),
            disk: self.disk.lock().ok().and_then(|d| d.clone()),
            outbox: crate::dicom::forward::snapshot(queue, &settings),
        })
    }
}

/// What the API shows of an input's path: nothing, unless `show_input_paths` is on; then the
/// path relative to the watch folder holding it (never an absolute path).
pub(crate) fn shown_path(path: &str, settings: &DaemonSettings) -> String {
    if !settings.show_input_paths {
        return String::new();
    }
    let path = std::path::Path::new(path);
    settings
        .watch
        .iter()
        .find_map(|w| path.strip_prefix(w).ok())
        .map(|rel| rel.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_held_back_and_counted() {
        let limit = LogLimiter::default();
        assert_eq!(limit.allow("claim"), Some(0));
        assert_eq!(limit.allow("claim"), None);
        assert_eq!(limit.allow("claim"), None);
        assert_eq!(limit.allow("disk"), Some(0), "kinds are limited apart");
        // A minute later the next line says how many were held back.
        if let Ok(mut m) = limit.0.lock()
            && let Some((last, _)) = m.get_mut("claim")
            && let Some(earlier) = last.checked_sub(LOG_EVERY)
        {
            *last = earlier;
        }
        assert_eq!(limit.allow("claim"), Some(2));
    }

    #[test]
    fn paths_are_shown_only_when_asked_and_relative_to_the_watch_folder() {
        let s = DaemonSettings {
            watch: vec![PathBuf::from("/srv/in")],
            ..DaemonSettings::default()
        };
        assert_eq!(shown_path("/srv/in/DOE_JOHN/IM1.dcm", &s), "");
        let on = DaemonSettings {
            show_input_paths: true,
            ..s
        };
        assert_eq!(shown_path("/srv/in/DOE_JOHN/IM1.dcm", &on), "DOE_JOHN/IM1.dcm");
        assert_eq!(shown_path("/elsewhere/x.dcm", &on), "", "never an absolute path");
    }
}
