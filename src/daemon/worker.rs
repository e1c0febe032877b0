//! The screening pipeline around a model-agnostic `Screener`. Three threads:
//! - the reader claims due jobs, reads each file once (checking that its content still has the
//!   job's hash), decodes its slices and hands them over a small bounded channel, so the reading
//!   of the next slices overlaps the model's work; of a multi-frame object longer than a batch it
//!   decodes the first batch, and the worker decodes the rest a batch at a time;
//! - the worker owns the screener (built on that thread by the caller's closure: tensors are not
//!   `Sync`) and screens in batches; a writer thread it starts writes each batch's outputs and
//!   records each job's outcome while the next batch is screened (a multi-frame object longer
//!   than a batch is written by the worker, a part at a time).
//!
//! A slice failure is data: an `Err` or a caught panic fails its job (retried with backoff, then
//! quarantined); a file the reader refuses (not CT, localizer, corrupt...) is quarantined at once,
//! since the same content would be refused again; a full disk requeues without counting a try.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::Shared;
use super::input;
use super::outputs::{self, SliceContext};
use super::queue::{Job, Queue, ScreenedSlice};
use crate::findings::Finding;
use crate::protocol::{EventKind, JobState};
use crate::slice::{Frames, Slice, SliceError, open_frames_from_bytes};

/// What the daemon needs from the models: screen slices, say which models and where.
pub trait Screener {
    /// One result per slice, in order; a failed slice is an `Err` with a short reason.
    fn screen_batch(&mut self, slices: &[Slice]) -> Vec<Result<Finding, String>>;
    /// (name, sha256) of every model file used; jobs are keyed by these.
    fn model_identity(&self) -> Vec<(String, String)>;
    /// Where the models run (`cpu`, `cuda:0`).
    fn device(&self) -> String;
    /// What each model of [`Screener::model_identity`] was trained on, in the same order.
    fn training_data(&self) -> Vec<Option<String>> {
        Vec::new()
    }
}

/// Builds the screener on the worker thread.
pub type MakeScreener =
    Box<dyn FnOnce() -> Result<Box<dyn Screener>, Box<dyn std::error::Error + Send + Sync>> + Send>;

/// What the worker reports once its screener is built.
#[derive(Debug, Clone)]
pub struct Identity {
    pub models: Vec<(String, String)>,
    pub device: String,
    /// Per model, what it was trained on (may be shorter than `models`).
    pub training_data: Vec<Option<String>>,
}

/// A claimed job with its decoded slices.
pub struct ReadJob {
    pub job: Job,
    /// The path actually read (the job's newest path, or another one recorded for its hash).
    pub path: PathBuf,
    /// The slices decoded so far: all of them, or the first batch of a multi-frame object
    /// with more frames than a batch.
    pub slices: Vec<Slice>,
    /// The frames of a multi-frame object not decoded yet: the worker decodes and screens
    /// them a batch at a time, so one batch of frames is held, not the whole object.
    pub rest: Option<Frames>,
    pub read_ms: f64,
}

/// Why a job could not be read.
enum ReadFailure {
    /// Same content would fail again: quarantine now.
    Permanent(String),
    Retry(String),
}

fn read_job(queue: &Queue, job: &Job, shared: &Shared) -> Result<(PathBuf, Frames), ReadFailure> {
    let settings = shared.settings();
    let mut candidates = vec![job.path.clone()];
    candidates.extend(
        queue
            .paths_for(&job.sha256)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != job.path),
    );
    let mut last_err = String::from("file no longer exists");
    let mut permanent = false;
    for path in candidates {
        // Opened once, beneath its watch folder, no symlink followed, regular files only.
        let bytes = match input::read_input(&path, &settings.input_roots(), settings.max_file_bytes) {
            Ok(b) => b,
            Err(e @ input::InputError::TooLarge { .. }) => return Err(ReadFailure::Permanent(e.to_string())),
            Err(e) => {
                permanent = e.is_permanent();
                last_err = if permanent {
                    format!("file replaced after it was queued: {e}")
                } else {
                    e.to_string()
                };
                continue;
            }
        };
        if crate::digest::sha256_hex(&bytes) != job.sha256 {
            last_err = "file changed after it was queued (its new content is queued separately)".into();
            permanent = true;
            continue;
        }
        super::faults::on_read(&bytes);
        let frames = open_frames_from_bytes(&bytes, &format!("job {}", job.id), &shared.slice_options())
            .map_err(read_failure)?;
        if frames.remaining() == 0 {
            return Err(ReadFailure::Permanent("no slices in file".into()));
        }
        return Ok((path, frames));
    }
    Err(if permanent {
        ReadFailure::Permanent(last_err)
    } else {
        ReadFailure::Retry(last_err)
    })
}

impl ReadFailure {
    /// Records the failure of `job`, its reason after `prefix`: a permanent one quarantines it.
    fn record(self, queue: &mut Queue, shared: &Shared, job: &Job, prefix: &str) {
        let (reason, permanent) = match self {
            ReadFailure::Permanent(r) => (r, true),
            ReadFailure::Retry(r) => (r, false),
        };
        record_failure(queue, shared, job, &format!("{prefix}{reason}"), permanent);
    }
}

fn read_failure(e: SliceError) -> ReadFailure {
    match e.rejection() {
        Some(_) => ReadFailure::Permanent(e.reason()),
        None => ReadFailure::Retry(e.reason()),
    }
}

/// Decodes up to `n` more slices of `frames`.
fn next_slices(frames: &mut Frames, n: usize) -> Result<Vec<Slice>, ReadFailure> {
    frames
        .by_ref()
        .take(n.max(1))
        .map(|r| r.map_err(read_failure))
        .collect()
}

/// Records a failure and publishes it; returns the new state.
pub(crate) fn record_failure(queue: &mut Queue, shared: &Shared, job: &Job, reason: &str, permanent: bool) {
    let s = shared.settings();
    match queue.fail(job.id, reason, permanent, s.retries, |a| s.backoff(a)) {
        Ok(JobState::Quarantined) => {
            shared.publish(
                EventKind::Quarantined,
                format!("job {} quarantined: {reason}", job.id),
                Some(job.id),
                None,
            );
            if let Some(dir) = &s.quarantine_dir {
                move_to_quarantine(job, dir, &s);
            }
        }
        Ok(_) => shared.publish(
            EventKind::Failed,
            format!("job {} failed, will retry: {reason}", job.id),
            Some(job.id),
            None,
        ),
        Err(e) => tracing::error!(job = job.id, error = %e, "cannot record a failure"),
    }
}

/// Moves a quarantined input to `dir` as `<job id>-<first 16 hex digits of its hash>` (never its
/// own name, which may hold a patient's), and only while its content still has the job's hash:
/// a file replaced since it was queued is another input and stays where it is.
fn move_to_quarantine(job: &Job, dir: &Path, settings: &super::DaemonSettings) {
    let hash = input::hash_input(&job.path, &settings.input_roots(), settings.max_file_bytes);
    if !hash.as_ref().is_ok_and(|h| *h == job.sha256) {
        tracing::warn!(
            job = job.id,
            "a quarantined input is no longer the queued content or cannot be read; not moved"
        );
        return;
    }
    let target = dir.join(format!("{}-{}", job.id, &job.sha256[..job.sha256.len().min(16)]));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::rename(&job.path, &target)) {
        tracing::warn!(job = job.id, error = %e, "cannot move a quarantined input");
    }
}

/// The reader thread: claims due jobs while intake runs, reads them, feeds the worker.
pub(crate) fn reader_loop(shared: Arc<Shared>, mut queue: Queue, tx: SyncSender<ReadJob>) {
    while !shared.stopping() {
        shared.beats.reader.beat();
        if shared.intake_paused() {
            shared.wait_for_work(Duration::from_millis(250));
            continue;
        }
        let batch = shared.settings().batch_size;
        let jobs = match queue.claim(batch) {
            Ok(j) => j,
            Err(e) => {
                if let Some(held) = shared.log_limit.allow("claim") {
                    tracing::error!(error = %e, held_back = held, "cannot claim jobs");
                }
                shared.wait_for_work(Duration::from_secs(1));
                continue;
            }
        };
        if jobs.is_empty() {
            shared.wait_for_work(Duration::from_millis(500));
            continue;
        }
        if shared.intake_paused() {
            // paused between the check above and the claim: what was queued after the pause
            // stays queued (the try given back)
            requeue_all(&mut queue, jobs.iter());
            continue;
        }
        // A job that was in hand when the daemon died is read and screened with nothing else in
        // flight, so that if it kills the process again no other job is charged for it.
        let isolated = jobs.len() == 1 && jobs[0].crashes > 0;
        if isolated {
            shared.wait_idle();
        }
        let mut pending = jobs.into_iter();
        while let Some(job) = pending.next() {
            shared.beats.reader.beat();
            let t0 = Instant::now();
            // the first batch now; the rest of a long multi-frame object as it is screened
            let read = read_job(&queue, &job, &shared).and_then(|(path, mut frames)| {
                let slices = next_slices(&mut frames, shared.settings().batch_size)?;
                Ok((path, slices, (frames.remaining() > 0).then_some(frames)))
            });
            let item = match read {
                Ok((path, slices, rest)) => ReadJob {
                    job,
                    path,
                    slices,
                    rest,
                    read_ms: t0.elapsed().as_secs_f64() * 1e3,
                },
                Err(f) => {
                    f.record(&mut queue, &shared, &job, "");
                    continue;
                }
            };
            shared.in_flight.fetch_add(1, Ordering::SeqCst);
            if let Err(id) = send_until_stopped(&tx, item, &shared) {
                // Stopping: this and the other claimed jobs go back to pending.
                for id in std::iter::once(id).chain(pending.by_ref().map(|j| j.id)) {
                    let _ = queue.requeue(id, Duration::ZERO);
                }
                return;
            }
            if isolated {
                shared.wait_idle();
            }
        }
    }
}

/// Hands a read job to the worker; `Err(job id)` when stopping.
fn send_until_stopped(tx: &SyncSender<ReadJob>, mut item: ReadJob, shared: &Shared) -> Result<(), i64> {
    loop {
        match tx.try_send(item) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(i)) => return Err(i.job.id),
            Err(TrySendError::Full(i)) => {
                shared.beats.reader.beat(); // waiting on the worker, whose own beat is watched
                if shared.stopping() {
                    return Err(i.job.id);
                }
                item = i;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Screens `slices`, turning a panic into per-slice errors; after a panic in a batch, each slice
/// is retried alone so that one bad slice does not fail its neighbours.
pub fn screen_guarded(screener: &mut dyn Screener, slices: &[Slice]) -> Vec<Result<Finding, String>> {
    let mut once = |s: &[Slice]| -> Result<Vec<Result<Finding, String>>, String> {
        match catch_unwind(AssertUnwindSafe(|| screener.screen_batch(s))) {
            Ok(r) if r.len() == s.len() => Ok(r),
            Ok(r) => Err(format!(
                "screener returned {} results for {} slices",
                r.len(),
                s.len()
            )),
            Err(p) => Err(format!("screener panicked: {}", panic_message(&p))),
        }
    };
    match once(slices) {
        Ok(r) => r,
        Err(e) if slices.len() == 1 => vec![Err(e)],
        Err(_) => slices
            .iter()
            .map(|s| once(std::slice::from_ref(s)).and_then(|mut r| r.remove(0)))
            .collect(),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The worker thread's screening loop (the screener is already built). The outputs of each
/// screened batch go to a writer thread (PNG and JSON files, the queue's records), so the
/// screener goes on with the next batch while they are written; at the end the writer drains
/// what it was handed before the loop returns.
pub(crate) fn worker_loop(
    shared: Arc<Shared>,
    queue: Queue,
    screener: &mut dyn Screener,
    rx: Receiver<ReadJob>,
) {
    let queue = std::sync::Mutex::new(queue);
    let (to_writer, from_worker) = std::sync::mpsc::sync_channel::<Screened>(1);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("writer".into())
            .spawn_scoped(scope, || writer_loop(&shared, &queue, from_worker));
        if let Err(e) = &writer {
            tracing::error!(error = %e, "cannot start the writer thread; writing on the worker thread");
        }
        let writer_tx = writer.is_ok().then_some(to_writer);
        screening_loop(&shared, &queue, screener, rx, writer_tx.as_ref());
        drop(writer_tx); // the writer ends once it has written what it holds
    });
}

/// One screened batch on its way to the writer: its jobs, one result per slice in order, and
/// the model's milliseconds per slice.
struct Screened {
    jobs: Vec<ReadJob>,
    results: Vec<Result<Finding, String>>,
    model_ms: f64,
}

/// Writes each screened batch's outputs and records its jobs' outcomes, until the worker hangs
/// up.
fn writer_loop(shared: &Shared, queue: &std::sync::Mutex<Queue>, rx: Receiver<Screened>) {
    for batch in rx {
        write_screened(shared, queue, batch);
    }
}

fn write_screened(shared: &Shared, queue: &std::sync::Mutex<Queue>, batch: Screened) {
    let mut results = batch.results.into_iter();
    let n_jobs = batch.jobs.len();
    for job in batch.jobs {
        let t1 = Instant::now();
        let findings: Vec<Result<Finding, String>> = results.by_ref().take(job.slices.len()).collect();
        let n = job.slices.len();
        let outcome = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            finish_job(shared, &mut q, &job, findings)
        };
        let overhead = (job.read_ms + t1.elapsed().as_secs_f64() * 1e3) / n.max(1) as f64;
        if outcome {
            shared.record_slices(n, batch.model_ms, overhead);
        }
    }
    shared.in_flight.fetch_sub(n_jobs, Ordering::SeqCst);
}

fn screening_loop(
    shared: &Arc<Shared>,
    queue: &std::sync::Mutex<Queue>,
    screener: &mut dyn Screener,
    rx: Receiver<ReadJob>,
    writer: Option<&SyncSender<Screened>>,
) {
    let lock = || queue.lock().unwrap_or_else(|p| p.into_inner());
    // A job that was in hand when the daemon died is screened alone: held back from a batch.
    let mut held: Option<ReadJob> = None;
    loop {
        shared.beats.worker.beat();
        let first = match held
            .take()
            .map(Ok)
            .unwrap_or_else(|| rx.recv_timeout(Duration::from_millis(200)))
        {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) if !shared.stopping() => continue,
            Err(_) => break,
        };
        let batch_size = shared.settings().batch_size;
        if first.rest.is_some() {
            // a multi-frame object longer than a batch: screened alone, a batch at a time
            if shared.stopping() {
                requeue_all(&mut lock(), std::iter::once(&first.job));
                break;
            }
            // written here, a part at a time (the frames' outputs are not held in memory)
            screen_streamed(shared, queue, screener, first, batch_size);
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let alone = first.job.crashes > 0;
        let mut jobs = vec![first];
        shared.beats.worker.beat();
        while !alone && jobs.iter().map(|j| j.slices.len()).sum::<usize>() < batch_size {
            match rx.try_recv() {
                Ok(j) if j.job.crashes > 0 || j.rest.is_some() => {
                    held = Some(j);
                    break;
                }
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if shared.stopping() {
            requeue_all(&mut lock(), jobs.iter().map(|j| &j.job));
            break;
        }
        let screened = screen_jobs(shared, screener, jobs, batch_size);
        match writer {
            Some(tx) => send_to_writer(tx, screened, shared, queue),
            None => write_screened(shared, queue, screened),
        }
    }
    // Whatever the reader already handed over goes back to pending.
    let left: Vec<ReadJob> = held.into_iter().chain(rx.try_iter()).collect();
    requeue_all(&mut lock(), left.iter().map(|j| &j.job));
}

/// Hands a screened batch to the writer, beating while it waits (the writer holds at most one
/// more batch: a slow disk holds the screener back rather than piling outputs up in memory).
fn send_to_writer(
    tx: &SyncSender<Screened>,
    mut item: Screened,
    shared: &Shared,
    queue: &std::sync::Mutex<Queue>,
) {
    loop {
        match tx.try_send(item) {
            Ok(()) => return,
            Err(TrySendError::Full(back)) => {
                item = back;
                shared.beats.worker.beat();
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TrySendError::Disconnected(back)) => {
                // the writer died (a panic): write here rather than lose the batch
                tracing::error!("the writer thread is gone; writing on the worker thread");
                write_screened(shared, queue, back);
                return;
            }
        }
    }
}

fn requeue_all<'a>(queue: &mut Queue, jobs: impl Iterator<Item = &'a Job>) {
    for job in jobs {
        if let Err(e) = queue.requeue(job.id, Duration::ZERO) {
            tracing::error!(job = job.id, error = %e, "cannot requeue");
        }
    }
}

/// Screens the slices of `jobs` in batches of `batch_size`.
fn screen_jobs(
    shared: &Shared,
    screener: &mut dyn Screener,
    jobs: Vec<ReadJob>,
    batch_size: usize,
) -> Screened {
    let all: Vec<Slice> = jobs.iter().flat_map(|j| j.slices.iter().cloned()).collect();
    let t0 = Instant::now();
    let mut results = Vec::with_capacity(all.len());
    for chunk in all.chunks(batch_size.max(1)) {
        shared.beats.worker.beat();
        results.extend(screen_guarded(screener, chunk));
    }
    let model_ms = t0.elapsed().as_secs_f64() * 1e3 / all.len().max(1) as f64;
    Screened {
        jobs,
        results,
        model_ms,
    }
}

/// Screens a job whose multi-frame object is longer than a batch: a batch of frames is decoded,
/// screened and written, then dropped before the next is decoded. The job is done when every
/// frame is; the first failure fails it (outputs of the frames before stay, as a retry rewrites
/// them). Returns whether the job is done.
fn screen_streamed(
    shared: &Shared,
    queue: &std::sync::Mutex<Queue>,
    screener: &mut dyn Screener,
    mut job: ReadJob,
    batch_size: usize,
) -> bool {
    // the queue is shared with the writer thread: held only while a part is recorded
    let lock = || queue.lock().unwrap_or_else(|p| p.into_inner());
    let mut rest = job.rest.take();
    let mut slices = std::mem::take(&mut job.slices);
    let mut summaries = Vec::new();
    let mut done = 0;
    let mut read_ms = job.read_ms;
    loop {
        shared.beats.worker.beat();
        let t0 = Instant::now();
        let findings = screen_guarded(screener, &slices);
        let model_ms = t0.elapsed().as_secs_f64() * 1e3 / slices.len().max(1) as f64;
        let t1 = Instant::now();
        if !write_part(
            shared,
            &mut lock(),
            &job,
            &slices,
            findings,
            done,
            true,
            &mut summaries,
        ) {
            return false;
        }
        let n = slices.len();
        done += n;
        shared.record_slices(
            n,
            model_ms,
            (read_ms + t1.elapsed().as_secs_f64() * 1e3) / n.max(1) as f64,
        );
        let Some(frames) = rest.as_mut() else { break };
        if frames.remaining() == 0 {
            break;
        }
        if shared.stopping() {
            requeue_all(&mut lock(), std::iter::once(&job.job)); // not a try: screened again whole
            return false;
        }
        let t2 = Instant::now();
        drop(std::mem::take(&mut slices));
        slices = match next_slices(frames, batch_size) {
            Ok(s) => s,
            Err(f) => {
                f.record(&mut lock(), shared, &job.job, &format!("frame {done}: "));
                return false;
            }
        };
        read_ms = t2.elapsed().as_secs_f64() * 1e3;
    }
    complete_job(shared, &mut lock(), &job.job, &summaries)
}

/// Writes the outputs of a job whose slices all succeeded and marks it done; otherwise records
/// the failure. Returns whether the job is done.
fn finish_job(
    shared: &Shared,
    queue: &mut Queue,
    job: &ReadJob,
    findings: Vec<Result<Finding, String>>,
) -> bool {
    let mut summaries = Vec::with_capacity(findings.len());
    write_part(
        shared,
        queue,
        job,
        &job.slices,
        findings,
        0,
        job.slices.len() > 1,
        &mut summaries,
    ) && complete_job(shared, queue, &job.job, &summaries)
}

/// Checks and writes the outputs of `slices` (slices `first..` of the job): a failed slice,
/// a SOP instance another content already owns or an output that cannot be written fails the
/// job (recorded); otherwise their records are added to `summaries`.
#[allow(clippy::too_many_arguments)]
fn write_part(
    shared: &Shared,
    queue: &mut Queue,
    job: &ReadJob,
    slices: &[Slice],
    findings: Vec<Result<Finding, String>>,
    first: usize,
    numbered: bool,
    summaries: &mut Vec<ScreenedSlice>,
) -> bool {
    if let Some((i, Err(reason))) = findings.iter().enumerate().find(|(_, r)| r.is_err()) {
        let reason = if numbered {
            format!("slice {}: {reason}", first + i)
        } else {
            reason.clone()
        };
        if shared.device_failure_paused() {
            // intake is already paused for a run of screening failures (the device or the
            // models): this one is not the file's fault either; it waits, its tries untouched
            // (the writer learns of the pause after the worker screened further jobs)
            if let Err(e) = queue.requeue(job.job.id, Duration::ZERO) {
                tracing::error!(job = job.job.id, error = %e, "cannot requeue");
            }
            return false;
        }
        record_failure(
            queue,
            shared,
            &job.job,
            &format!("screening failed: {reason}"),
            false,
        );
        shared.note_screening_failure(job.job.id, &reason);
        return false;
    }
    shared.note_screening_success();
    // One result per SOP instance: a different file (other content) with the UID of a slice
    // already screened is a conflict, reported and never counted twice.
    for slice in slices {
        let (key, stem) = (
            outputs::series_key(&slice.meta, &job.path),
            outputs::slice_stem(&slice.meta, &job.job.sha256),
        );
        match queue.instance_owner(&key, &stem) {
            Ok(Some(owner)) if owner != job.job.id => {
                let reason = format!(
                    "conflict: SOP instance {stem} of series {key} was already screened from other content (job {owner}); not counted twice"
                );
                record_failure(queue, shared, &job.job, &reason, true);
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                record_failure(
                    queue,
                    shared,
                    &job.job,
                    &format!("cannot check the SOP instance: {e}"),
                    false,
                );
                return false;
            }
        }
    }
    let output = shared.settings().output.clone();
    let models = shared.models.clone();
    let ctx = SliceContext {
        job_id: job.job.id,
        path: &job.path,
        sha256: &job.job.sha256,
        models: &models,
    };
    for (slice, finding) in slices.iter().zip(findings.into_iter().flatten()) {
        match outputs::write_slice(&output, &ctx, slice, &finding) {
            Ok(s) => summaries.push(s),
            Err(e) if e.is_disk_full() => {
                tracing::warn!(job = job.job.id, error = %e, "output disk full; job requeued");
                shared.note_disk_full();
                // not a try: intake (and so this job) waits until the disk check sees space
                let _ = queue.requeue(job.job.id, Duration::ZERO);
                return false;
            }
            Err(e) => {
                record_failure(
                    queue,
                    shared,
                    &job.job,
                    &format!("cannot write outputs: {e}"),
                    false,
                );
                return false;
            }
        }
    }
    true
}

/// Marks a job done with the records of all its slices and publishes it.
fn complete_job(shared: &Shared, queue: &mut Queue, job: &Job, summaries: &[ScreenedSlice]) -> bool {
    let series = summaries.first().map(|s| s.record.series_key.clone());
    match queue.complete(job.id, summaries) {
        Ok(()) => {
            let label = summaries
                .first()
                .and_then(|s| s.record.label)
                .map_or("screened", |l| l.as_str());
            shared.publish(
                EventKind::Done,
                format!("job {} done: {label}", job.id),
                Some(job.id),
                series,
            );
            true
        }
        Err(e) => {
            tracing::error!(job = job.id, error = %e, "cannot record a finished job");
            false
        }
    }
}
