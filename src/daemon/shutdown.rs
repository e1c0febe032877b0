//! The daemon's one shutdown signal (as mini-redis's `shutdown.rs`): a cheap-to-clone handle
//! that SIGTERM and SIGINT (or a test, or the demo) trigger, that the supervisor turns into the
//! drain, and that every thread checks or waits on. It moves through two phases so the drain is
//! orderly: *requested* (a signal arrived: the supervisor publishes "daemon stopping" while
//! subscribers still read) then *stopping* (every thread ends its loop: watcher, intake, reader,
//! worker, server, connections, DICOM receiver and forwarder). SIGHUP asks for a reload, read
//! through the `Reloader` the caller sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::settings::DaemonSettings;
use crate::config::SliceSettings;

/// What a reload (SIGHUP) reads, through the same path as start-up: the blocks `run` takes,
/// checked by the same code, and the keys outside them that changed and wait for a restart
/// (`models`, `screening`, `threads`: the screener is built once).
#[derive(Debug, Clone, PartialEq)]
pub struct Reloaded {
    pub daemon: DaemonSettings,
    pub slice: SliceSettings,
    pub restart_keys: Vec<String>,
}

/// Reads the settings again (SIGHUP); an `Err` keeps the old ones.
pub type Reloader = Box<dyn Fn() -> Result<Reloaded, String> + Send>;

/// Asks a running daemon to stop or to reload, and tells its threads when to stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Set by a signal handler or `trigger`: the supervisor starts the drain.
    requested: Arc<AtomicBool>,
    /// Set by the supervisor once it drains (or gives up): every thread ends.
    stopping: AtomicBool,
    reload: Arc<AtomicBool>,
    reloader: Mutex<Option<Reloader>>,
    /// Wakes `wait` early when the signal changes (signal handlers cannot notify: waits are
    /// bounded by their timeout).
    changed: (Mutex<()>, Condvar),
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Makes SIGTERM and SIGINT trigger the shutdown and SIGHUP request a reload.
    pub fn install_os_handlers(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, self.inner.requested.clone())?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, self.inner.reload.clone())?;
        Ok(())
    }

    /// What a reload reads (without one, SIGHUP only logs that nothing can be reloaded).
    pub fn set_reloader(&self, reloader: Reloader) {
        if let Ok(mut r) = self.inner.reloader.lock() {
            *r = Some(reloader);
        }
    }

    /// Asks the daemon to drain and stop (what SIGTERM does).
    pub fn trigger(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Every thread ends its loop now (the supervisor's drain, or a test's watcher).
    pub(crate) fn begin_stop(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Whether threads must end their loops.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps up to `timeout`, less when the daemon starts stopping; whether it is stopping.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (lock, cv) = &self.inner.changed;
        if let Ok(guard) = lock.lock() {
            let _ = cv.wait_timeout_while(guard, timeout, |_| !self.is_stopping());
        }
        self.is_stopping()
    }

    pub fn request_reload(&self) {
        self.inner.reload.store(true, Ordering::SeqCst);
    }

    /// If a reload was requested: the new settings (or why they could not be read).
    pub(crate) fn take_reload(&self) -> Option<Result<Reloaded, String>> {
        if !self.inner.reload.swap(false, Ordering::SeqCst) {
            return None;
        }
        let guard = self.inner.reloader.lock().ok()?;
        Some(match guard.as_ref() {
            Some(f) => f(),
            None => Err("no configuration source to reload from".into()),
        })
    }

    fn notify(&self) {
        let (lock, cv) = &self.inner.changed;
        let _guard = lock.lock();
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_triggers_and_reloads() {
        let s = Shutdown::new();
        assert!(s.take_reload().is_none());
        s.request_reload();
        assert!(matches!(s.take_reload(), Some(Err(_))), "no reloader set");
        s.set_reloader(Box::new(|| {
            Ok(Reloaded {
                daemon: DaemonSettings {
                    batch_size: 9,
                    ..DaemonSettings::default()
                },
                slice: SliceSettings::default(),
                restart_keys: Vec::new(),
            })
        }));
        s.request_reload();
        assert_eq!(
            s.take_reload().and_then(Result::ok).map(|x| x.daemon.batch_size),
            Some(9)
        );
        let c = s.clone();
        c.trigger();
        assert!(s.is_triggered());
    }

    #[test]
    fn a_request_is_not_yet_a_stop_and_a_stop_ends_waits() {
        let s = Shutdown::new();
        s.trigger();
        assert!(!s.is_stopping(), "the supervisor drains first");
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait(Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.begin_stop();
        assert!(waiter.join().expect("waiter"), "woken by the stop");
        assert!(s.is_stopping() && s.is_triggered());
    }
}
