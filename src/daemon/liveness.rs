//! Honest liveness: every long-lived daemon thread (watcher, intake, reader, worker, server)
//! beats at least once per loop turn; the supervisor pings systemd's watchdog only while every
//! thread is alive and beat within `stall_timeout_s`. A thread that died (a panic outside the
//! per-slice guards) or hangs makes the daemon stop pinging and exit non-zero, so systemd
//! restarts it; the slice in hand then counts as a crash (see `queue/`).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Milliseconds on a monotonic clock since the first call (wall-clock jumps do not matter).
fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One thread's last sign of progress.
#[derive(Clone, Debug)]
pub struct Beat(Arc<AtomicU64>);

impl Default for Beat {
    fn default() -> Self {
        Beat(Arc::new(AtomicU64::new(mono_ms())))
    }
}

impl Beat {
    pub fn beat(&self) {
        self.0.store(mono_ms(), Ordering::Relaxed);
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(mono_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// The beats of the daemon's threads.
#[derive(Default)]
pub(crate) struct Beats {
    pub(crate) watcher: Beat,
    pub(crate) intake: Beat,
    pub(crate) reader: Beat,
    pub(crate) worker: Beat,
    pub(crate) server: Beat,
}

/// A watched thread: its name, its handle and its beat.
pub(crate) struct Watched {
    pub(crate) name: &'static str,
    pub(crate) handle: JoinHandle<()>,
    pub(crate) beat: Beat,
}

/// Why the daemon is not healthy: the first thread that ended or stalled, if any.
pub(crate) fn unhealthy(threads: &[Watched], stall: Duration) -> Option<String> {
    threads.iter().find_map(|t| {
        if t.handle.is_finished() {
            Some(format!("the {} thread ended unexpectedly", t.name))
        } else if t.beat.age() > stall {
            Some(format!(
                "the {} thread made no progress for {:.0} s (stall_timeout_s {:.0})",
                t.name,
                t.beat.age().as_secs_f64(),
                stall.as_secs_f64()
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_and_stalled_threads_are_named() {
        let beat = Beat::default();
        let (keep, until) = std::sync::mpsc::channel::<()>();
        let alive = Watched {
            name: "alive",
            handle: std::thread::spawn(move || {
                let _ = until.recv(); // runs until `keep` is dropped
            }),
            beat: beat.clone(),
        };
        assert_eq!(
            unhealthy(std::slice::from_ref(&alive), Duration::from_secs(60)),
            None
        );
        std::thread::sleep(Duration::from_millis(30));
        let stalled = unhealthy(std::slice::from_ref(&alive), Duration::from_millis(10)).expect("stalled");
        assert!(
            stalled.starts_with("the alive thread made no progress"),
            "{stalled}"
        );
        beat.beat();
        let dead = Watched {
            name: "reader",
            handle: std::thread::spawn(|| panic!("test: a thread dies")),
            beat: Beat::default(),
        };
        while !dead.handle.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            unhealthy(&[alive, dead], Duration::from_secs(60)).as_deref(),
            Some("the reader thread ended unexpectedly")
        );
        drop(keep);
    }
}
