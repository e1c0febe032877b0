//! The screening daemon, as a library function: `run(settings, slice, make_screener, shutdown)` returns
//! when `shutdown` is triggered (SIGTERM through `Shutdown::install_os_handlers`, or a test).
//!
//! Threads, each with its own SQLite connection, moving paths, job ids and summaries:
//! watcher (complete files) -> intake (hash, enqueue) -> reader (claim, read, decode) -> worker
//! (owns the screener; screens, writes outputs, records) ; the server answers the socket; the
//! calling thread supervises: signals, reloads, disk space, series reports, systemd notify.
//! Every thread checks or waits on the one `Shutdown` (`shutdown.rs`); the supervisor turns a
//! request into the drain. The server (`server/`: tokio tasks on its one thread; accept,
//! `connection.rs`, one handler per request in `handlers.rs`) and `hub.rs` (events) answer the
//! socket, each connection writing through its bounded `outbox.rs`; `systemd.rs` and `disk.rs`
//! are what their names say.

pub mod disk;
mod faults;
mod hub;
mod input;
mod intake;
mod liveness;
mod outbox;
pub mod outputs;
pub mod peers;
pub mod queue;
pub mod series;
pub mod server;
pub mod settings;
mod shared;
pub mod shutdown;
mod supervisor;
pub mod systemd;
pub mod thumbnail;
pub mod watcher;
pub mod worker;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use settings::DaemonSettings;
pub use shutdown::{Reloaded, Reloader, Shutdown};
pub use worker::{Identity, MakeScreener, Screener};

use crate::config::SliceSettings;
use crate::protocol::{EventKind, ModelInfo};
use queue::{Queue, QueueError, StateLock};
pub(crate) use shared::Shared;
use supervisor::Supervisor;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot create output folder {path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("the screener could not be built: {0}")]
    Screener(String),
    #[error("cannot listen for DICOM on {addr}: {source}")]
    DicomListen { addr: String, source: std::io::Error },
    #[error("{0}")]
    Unhealthy(String),
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Hash identifying a set of models: sha256 over `name=sha256` lines.
pub fn models_hash(models: &[(String, String)]) -> String {
    let text: String = models.iter().map(|(n, h)| format!("{n}={h}\n")).collect();
    crate::digest::sha256_hex(text.as_bytes())
}

fn spawn<F: FnOnce() + Send + 'static>(
    name: &'static str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(format!("ctmask-{name}"))
        .spawn(f)
        .map_err(|source| DaemonError::Thread { name, source })
}

/// What the worker thread needs once the daemon is set up.
type WorkerStart = (Arc<Shared>, Queue, Receiver<worker::ReadJob>);

/// Starts the worker thread, builds the screener there and waits for its identity.
fn start_worker(
    make: MakeScreener,
) -> Result<
    (
        Identity,
        std::sync::mpsc::Sender<WorkerStart>,
        std::thread::JoinHandle<()>,
    ),
    DaemonError,
> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Identity, String>>();
    let (start_tx, start_rx) = std::sync::mpsc::channel::<WorkerStart>();
    let handle = spawn("worker", move || {
        let mut screener = match make() {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready_tx.send(Ok(Identity {
            models: screener.model_identity(),
            device: screener.device(),
            training_data: screener.training_data(),
        }));
        if let Ok((shared, queue, rx)) = start_rx.recv() {
            worker::worker_loop(shared, queue, screener.as_mut(), rx);
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(identity)) => Ok((identity, start_tx, handle)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(DaemonError::Screener(e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(DaemonError::Screener(
                "the worker thread ended while building the screener".into(),
            ))
        }
    }
}

/// Runs the daemon until `shutdown` is triggered, with the `daemon:` block and the top-level
/// `slice:` block the reader decodes with (a reload replaces both, see [`Reloaded`]).
pub fn run(
    settings: DaemonSettings,
    slice: SliceSettings,
    make_screener: MakeScreener,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    let settings = settings::checked(settings, &slice)?;
    let _lock = StateLock::acquire(&settings.state)?;
    std::fs::create_dir_all(&settings.output).map_err(|source| DaemonError::Output {
        path: settings.output.clone(),
        source,
    })?;
    let swept = outputs::sweep_temp_files(&settings.output);
    if swept > 0 {
        tracing::info!(files = swept, "removed temporary files left by a crash");
    }
    let server = server::Server::bind(&settings)?;
    let dicom_rx = crate::dicom::receiver::listen(&settings)?;
    let (identity, start_worker_tx, worker_handle) = start_worker(make_screener)?;
    let models_hash = models_hash(&identity.models);
    let mut queue = Queue::open(&settings.state, &models_hash)?;
    // Jobs left running died with the process: a crash each, quarantined once their tries are spent.
    let (requeued, crashed) = queue.recover_running(settings.retries)?;
    // the watcher looks up the files it meets, one at a time, on a connection of its own
    let known = {
        let lookup = Queue::open(&settings.state, &models_hash)?;
        watcher::KnownFiles::new(Box::new(move |p: &Path| match lookup.known_file(p) {
            Ok(sig) => sig,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up a file in the queue; taking it again");
                None
            }
        }))
    };
    let rescan = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        state_dir: settings.state.clone(),
        models: identity
            .models
            .iter()
            .enumerate()
            .map(|(k, (name, sha256))| ModelInfo {
                name: name.clone(),
                sha256: sha256.clone(),
                training_data: identity.training_data.get(k).cloned().flatten(),
            })
            .collect(),
        models_hash: models_hash.clone(),
        device: identity.device.clone(),
        hub: hub::Hub::default(),
        shutdown: shutdown.clone(),
        operator_paused: AtomicBool::new(false),
        disk_low: Mutex::new(None),
        disk_full_free: Mutex::new(None),
        disk: Mutex::new(None),
        disk_check_now: AtomicBool::new(true),
        rescan: rescan.clone(),
        wake: (Mutex::new(0), Condvar::new()),
        metrics: Mutex::new(VecDeque::new()),
        slices_total: Default::default(),
        started: Instant::now(),
        in_flight: Default::default(),
        beats: Default::default(),
        failure_streak: Mutex::new((Vec::new(), None)),
        log_limit: Default::default(),
        settings: RwLock::new(settings.clone()),
        slice: RwLock::new(slice),
    });
    let mut sup = Supervisor::new(shared.clone(), Queue::open(&settings.state, &models_hash)?);
    sup.check_disk(); // before anything is taken

    let (job_tx, job_rx) = std::sync::mpsc::sync_channel(1);
    let _ = start_worker_tx.send((
        shared.clone(),
        Queue::open(&settings.state, &models_hash)?,
        job_rx,
    ));
    let reader_queue = Queue::open(&settings.state, &models_hash)?;
    let reader = spawn("reader", {
        let shared = shared.clone();
        move || worker::reader_loop(shared, reader_queue, job_tx)
    })?;
    let (taken_tx, taken_rx) = std::sync::mpsc::channel();
    let intake_queue = Queue::open(&settings.state, &models_hash)?;
    let intake = spawn("intake", {
        let shared = shared.clone();
        move || intake::intake_loop(shared, intake_queue, taken_rx)
    })?;
    let watch = watcher::Watcher::new(crate::dicom::receiver::watched(&settings), known, taken_tx)
        .with_beat(shared.beats.watcher.clone());
    if !watch.polled_dirs().is_empty() {
        tracing::info!(
            folders = watch.polled_dirs().len(),
            "polling folders on network filesystems"
        );
    }
    let watcher = watcher::spawn(watch, shutdown.clone(), rescan).map_err(|source| DaemonError::Thread {
        name: "watch",
        source,
    })?;
    let serve = spawn("server", {
        let shared = shared.clone();
        move || server.serve(shared)
    })?;
    // the DICOM receiver and forwarder (when configured) stop with the others; they report no
    // beats, so the liveness check does not watch them
    let mut dicom_threads = Vec::new();
    if let Some(listener) = dicom_rx {
        let (shared, models_hash) = (shared.clone(), models_hash.clone());
        dicom_threads.push(spawn("dicom-rx", move || {
            crate::dicom::receiver::serve(listener, shared, models_hash)
        })?);
    }
    if let Some(forwarder) = crate::dicom::forward::Forwarder::new(&shared)? {
        dicom_threads.push(spawn("forward", move || forwarder.run())?);
    }

    shared.publish(
        EventKind::DaemonStarted,
        format!(
            "daemon started on {} ({} jobs requeued)",
            identity.device, requeued
        ),
        None,
        None,
    );
    for (id, reason) in crashed {
        shared.publish(
            EventKind::Quarantined,
            format!("job {id} quarantined: {reason}"),
            Some(id),
            None,
        );
    }
    systemd::sd_notify("READY=1");
    let beats = &shared.beats;
    let threads = vec![
        liveness::Watched {
            name: "watch",
            handle: watcher,
            beat: beats.watcher.clone(),
        },
        liveness::Watched {
            name: "intake",
            handle: intake,
            beat: beats.intake.clone(),
        },
        liveness::Watched {
            name: "reader",
            handle: reader,
            beat: beats.reader.clone(),
        },
        liveness::Watched {
            name: "worker",
            handle: worker_handle,
            beat: beats.worker.clone(),
        },
        liveness::Watched {
            name: "server",
            handle: serve,
            beat: beats.server.clone(),
        },
    ];
    if let Err(reason) = sup.run(&shutdown, &mut queue, &threads) {
        // No drain: a hung thread would never join, and the slice in hand must count as a crash.
        shared.publish(
            EventKind::Warning,
            format!("daemon unhealthy, exiting for a restart: {reason}"),
            None,
            None,
        );
        systemd::sd_notify(&format!("STATUS=unhealthy: {reason}"));
        shutdown.begin_stop();
        return Err(DaemonError::Unhealthy(reason));
    }

    // Drain: stop intake and reading at once; the worker finishes or requeues what it holds.
    shared.publish(EventKind::DaemonStopping, "daemon stopping".into(), None, None);
    systemd::sd_notify("STOPPING=1");
    shutdown.begin_stop();
    shared.wake();
    let deadline = Instant::now() + Duration::from_secs_f64(shared.settings().drain_timeout_s);
    let mut worker_handle = None;
    for t in threads {
        if t.name == "worker" {
            worker_handle = Some(t.handle);
        } else {
            let _ = t.handle.join();
        }
    }
    for h in dicom_threads {
        let _ = h.join();
    }
    let Some(worker_handle) = worker_handle else {
        return Ok(());
    };
    while !worker_handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if worker_handle.is_finished() {
        let _ = worker_handle.join();
    } else {
        tracing::warn!("the slice in hand did not finish within drain_timeout_s; requeued");
    }
    let requeued = queue.requeue_running()?;
    if requeued > 0 {
        tracing::info!(jobs = requeued, "requeued unfinished jobs");
    }
    Ok(())
}
