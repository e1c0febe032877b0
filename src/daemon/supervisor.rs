//! The calling thread's duties while the daemon runs: reloads (SIGHUP), the output disk's free
//! space (pausing and resuming intake), series reports after the quiet period, systemd STATUS and
//! WATCHDOG messages (sent only while every watched thread is alive and within its deadline).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::liveness::{Watched, unhealthy};
use super::queue::Queue;
use super::series;
use super::settings::{self, DaemonSettings};
use super::shared::Shared;
use super::shutdown::{Reloaded, Shutdown};
use super::{disk, systemd};
use crate::protocol::EventKind;

/// The calling thread's duties while the daemon runs.
pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    queue: Queue,
    next_disk: Instant,
    next_series: Instant,
    next_status: Instant,
    next_watchdog: Instant,
    next_prune: Instant,
    watchdog: Option<Duration>,
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>, queue: Queue) -> Supervisor {
        let now = Instant::now();
        Supervisor {
            shared,
            queue,
            next_disk: now,
            next_series: now,
            next_status: now,
            next_watchdog: now,
            next_prune: now,
            watchdog: systemd::watchdog_interval(),
        }
    }

    /// Runs until `shutdown`; `Err(reason)` as soon as a watched thread died or stalled.
    pub(crate) fn run(
        &mut self,
        shutdown: &Shutdown,
        status_queue: &mut Queue,
        threads: &[Watched],
    ) -> Result<(), String> {
        while !shutdown.is_triggered() {
            let now = Instant::now();
            let stall = Duration::from_secs_f64(self.shared.settings().stall_timeout_s);
            if let Some(reason) = unhealthy(threads, stall) {
                return Err(reason);
            }
            if let Some(reload) = shutdown.take_reload() {
                self.reload(reload);
            }
            if now >= self.next_disk || self.shared.disk_check_now.swap(false, Ordering::SeqCst) {
                self.check_disk();
            }
            if now >= self.next_series {
                self.report_series();
                self.next_series = now + Duration::from_millis(500);
            }
            if now >= self.next_prune {
                self.prune();
                self.next_prune = now + Duration::from_secs(3600);
            }
            if now >= self.next_status {
                self.status(status_queue);
                self.next_status = now + Duration::from_secs(5);
            }
            if let Some(every) = self.watchdog
                && now >= self.next_watchdog
            {
                systemd::sd_notify("WATCHDOG=1");
                self.next_watchdog = now + every;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn reload(&mut self, reload: Result<Reloaded, String>) {
        // checked as at start-up (`run`)
        let checked = reload.and_then(|r| {
            let daemon = settings::checked(r.daemon, &r.slice).map_err(|e| e.to_string())?;
            Ok((daemon, r.slice, r.restart_keys))
        });
        let (new, slice, restart_keys) = match checked {
            Ok(s) => s,
            Err(e) => {
                self.shared.publish(
                    EventKind::Warning,
                    format!("reload failed, settings unchanged: {e}"),
                    None,
                    None,
                );
                return;
            }
        };
        let old = self.shared.settings();
        // Read once by threads that run for the daemon's life: these wait for a restart.
        let mut fixed: Vec<String> = [
            ("watch", old.watch != new.watch),
            ("output", old.output != new.output),
            ("state", old.state != new.state),
            ("socket", old.socket != new.socket),
            ("socket_group", old.socket_group != new.socket_group),
            ("control_group", old.control_group != new.control_group),
            ("max_clients", old.max_clients != new.max_clients),
            ("socket_mode", old.socket_mode != new.socket_mode),
            ("poll", old.poll != new.poll),
            ("poll_interval_s", old.poll_interval_s != new.poll_interval_s),
            (
                "rescan_interval_s",
                old.rescan_interval_s != new.rescan_interval_s,
            ),
            ("settle_ms", old.settle_ms != new.settle_ms),
            ("stability_polls", old.stability_polls != new.stability_polls),
            ("ignore_suffixes", old.ignore_suffixes != new.ignore_suffixes),
            ("device", old.device != new.device),
            ("dicom.receiver", old.dicom.receiver != new.dicom.receiver),
            (
                "dicom.forward.destinations",
                old.dicom.forward.destinations.is_empty() != new.dicom.forward.destinations.is_empty(),
            ),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| format!("daemon.{k}"))
        .collect();
        // Settings outside the daemon block the screener was built with (models, screening).
        fixed.extend(restart_keys);
        let mut applied = new.clone();
        (applied.watch, applied.output, applied.state) =
            (old.watch.clone(), old.output.clone(), old.state.clone());
        (applied.socket, applied.socket_group, applied.socket_mode) = (
            old.socket.clone(),
            old.socket_group.clone(),
            old.socket_mode.clone(),
        );
        (applied.poll, applied.poll_interval_s, applied.rescan_interval_s) =
            (old.poll, old.poll_interval_s, old.rescan_interval_s);
        (
            applied.settle_ms,
            applied.stability_polls,
            applied.ignore_suffixes,
        ) = (old.settle_ms, old.stability_polls, old.ignore_suffixes.clone());
        applied.device = old.device;
        (applied.control_group, applied.max_clients) = (old.control_group.clone(), old.max_clients);
        applied.dicom.receiver = old.dicom.receiver;
        if let Ok(mut s) = self.shared.settings.write() {
            *s = applied;
        }
        // `slice:` (windowing, limits) applies to the next file read.
        if let Ok(mut s) = self.shared.slice.write() {
            *s = slice;
        }
        let msg = if fixed.is_empty() {
            "settings reloaded".to_string()
        } else {
            format!("settings reloaded; restart to apply: {}", fixed.join(", "))
        };
        self.shared.publish(EventKind::Reloaded, msg, None, None);
        self.next_disk = Instant::now();
        self.shared.rescan.store(true, Ordering::SeqCst);
        self.shared.wake();
    }

    pub(crate) fn check_disk(&mut self) {
        let settings = self.shared.settings();
        self.next_disk = Instant::now() + Duration::from_secs_f64(settings.disk_check_interval_s);
        let info = match disk::disk_info(&settings.output) {
            Ok(i) => i,
            Err(e) => {
                if let Some(held) = self.shared.log_limit.allow("disk") {
                    tracing::warn!(error = %e, held_back = held, "cannot read the output disk's free space");
                }
                return;
            }
        };
        let reason = disk::disk_low_reason(&info, &settings).or_else(|| {
            let mut full = self.shared.disk_full_free.lock().ok()?;
            let at_failure = (*full)?;
            if info.free_bytes >= at_failure.saturating_add(disk::DISK_FULL_MARGIN) {
                *full = None;
                return None;
            }
            Some(disk::disk_full_reason(&info, at_failure))
        });
        // The state disk (queue database, thumbnails) is watched like the output disk.
        let reason = reason.or_else(|| {
            disk::disk_info(&settings.state)
                .ok()
                .and_then(|state| disk::disk_low_reason(&state, &settings))
                .map(|r| format!("state folder: {r}"))
        });
        if let Ok(mut d) = self.shared.disk.lock() {
            *d = Some(info);
        }
        let was = self
            .shared
            .disk_low
            .lock()
            .map(|mut d| std::mem::replace(&mut *d, reason.clone()))
            .unwrap_or(None);
        match (was, reason) {
            (None, Some(r)) => {
                self.shared
                    .publish(EventKind::IntakePaused, format!("intake paused: {r}"), None, None);
                systemd::sd_notify(&format!("STATUS=paused: {r}"));
            }
            (Some(_), None) => {
                self.shared.publish(
                    EventKind::IntakeResumed,
                    "intake resumed: disk space is back".into(),
                    None,
                    None,
                );
                self.shared.rescan.store(true, Ordering::SeqCst);
                self.shared.wake();
            }
            _ => {}
        }
    }

    fn report_series(&mut self) {
        let settings = self.shared.settings();
        let due = match self
            .queue
            .series_due(Duration::from_secs_f64(settings.quiet_period_s))
        {
            Ok(d) => d,
            Err(e) => {
                if let Some(held) = self.shared.log_limit.allow("series") {
                    tracing::error!(error = %e, held_back = held, "cannot list series");
                }
                return;
            }
        };
        for (key, last_done) in due {
            if self.shared.disk_is_low() {
                return;
            }
            if let Err(e) = self.report_one(&key, last_done, &settings)
                && let Some(held) = self.shared.log_limit.allow("series report")
            {
                tracing::warn!(series = %key, error = %e, held_back = held, "cannot write a series report");
            }
        }
    }

    fn report_one(&mut self, key: &str, last_done: i64, settings: &DaemonSettings) -> Result<(), String> {
        let slices = self.queue.series_slices(key).map_err(|e| e.to_string())?;
        let revision = self.queue.series_revision(key).map_err(|e| e.to_string())?;
        let report = series::build(key, slices, &settings.series, revision, &self.shared.models);
        report.write(&settings.output).map_err(|e| e.to_string())?;
        crate::dicom::after_series_report(&self.shared, &self.queue, &report, settings);
        self.queue
            .series_reported(key, last_done, &report.summary().into())
            .map_err(|e| e.to_string())?;
        let msg = format!(
            "series {key} reported (revision {revision}): {} over {} slices",
            report.verdict.label, report.slice_count
        );
        self.shared
            .publish(EventKind::SeriesReported, msg, None, Some(key.to_string()));
        Ok(())
    }

    /// Retention: done jobs and their thumbnails older than `retention_days` leave the state.
    fn prune(&mut self) {
        let days = self.shared.settings().retention_days;
        if days <= 0.0 {
            return;
        }
        let cutoff = crate::clock::now_ms() - (days * 86_400_000.0) as i64;
        match self.queue.prune(cutoff) {
            Ok((0, 0)) => {}
            Ok((jobs, paths)) => tracing::info!(jobs, paths, "retention: old done jobs and paths removed"),
            Err(e) => tracing::warn!(error = %e, "retention: cannot prune the state"),
        }
    }

    fn status(&mut self, queue: &Queue) {
        if let Ok(c) = queue.counts() {
            let intake = self.shared.intake();
            let state = if intake.paused {
                format!("paused ({})", intake.reasons.join("; "))
            } else {
                "running".into()
            };
            systemd::sd_notify(&format!(
                "STATUS={state}; pending {}, done {}, failed {}, quarantined {}",
                c.pending, c.done, c.failed, c.quarantined
            ));
        }
    }
}
