//! The queue on temporary folders: one job per content, crash recovery, backoff and quarantine,
//! series due, retention, thumbnails, the state lock.

use std::time::Duration;

use rusqlite::params;

use super::*;
use crate::protocol::{QueueCounts, Thumbnail};

fn seen(path: &str, sha: &str) -> FileSeen {
    FileSeen {
        path: path.into(),
        sha256: sha.into(),
        size: 10,
        mtime_ns: 1,
        series_key: None,
    }
}

fn summary(job_id: i64, key: &str) -> ScreenedSlice {
    ScreenedSlice {
        record: SliceRecord {
            job_id,
            series_key: key.into(),
            label: Some(crate::protocol::Label::Covid),
            ..SliceRecord::default()
        },
        thumbnail: None,
    }
}

#[test]
fn same_content_is_one_job_across_copies_and_renames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::open(dir.path(), "m1").expect("open");
    let Enqueued::New(id) = q.enqueue(&seen("/in/a.dcm", "aa")).expect("enqueue") else {
        panic!("not new")
    };
    assert_eq!(
        q.enqueue(&seen("/in/copy.dcm", "aa")).expect("copy"),
        Enqueued::Known(id, JobState::Pending)
    );
    assert_eq!(
        q.job(id).expect("job").path,
        PathBuf::from("/in/copy.dcm"),
        "pending job follows the newest path"
    );
    let claimed = q.claim(10).expect("claim");
    q.complete(claimed[0].id, &[summary(id, "s1")]).expect("complete");
    assert_eq!(
        q.enqueue(&seen("/in/renamed.dcm", "aa")).expect("rename"),
        Enqueued::Known(id, JobState::Done)
    );
    assert_eq!(q.paths_for("aa").expect("paths").len(), 3);
    assert!(matches!(
        q.enqueue(&seen("/in/b.dcm", "bb")).expect("other"),
        Enqueued::New(_)
    ));
    // Other models: the same content is a new job.
    let mut q2 = Queue::open(dir.path(), "m2").expect("open m2");
    assert!(matches!(
        q2.enqueue(&seen("/in/a.dcm", "aa")).expect("m2"),
        Enqueued::New(_)
    ));
    assert_eq!(
        q.counts().expect("counts"),
        QueueCounts {
            pending: 1,
            done: 1,
            ..QueueCounts::default()
        }
    );
    assert_eq!(
        q.known_files().expect("known").get(Path::new("/in/a.dcm")),
        Some(&(10, 1))
    );
    assert_eq!(
        q.known_file(Path::new("/in/a.dcm")).expect("known"),
        Some((10, 1))
    );
    assert_eq!(q.known_file(Path::new("/in/none.dcm")).expect("known"), None);
}

#[test]
fn running_jobs_go_back_to_pending_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut q = Queue::open(dir.path(), "m").expect("open");
        q.enqueue(&seen("/a", "1")).expect("enqueue");
        q.enqueue(&seen("/b", "2")).expect("enqueue");
        assert_eq!(q.claim(5).expect("claim").len(), 2);
        assert!(q.claim(5).expect("claim again").is_empty());
    } // "crash": dropped while running
    let mut q = Queue::open(dir.path(), "m").expect("reopen");
    assert_eq!(q.counts().expect("counts").running, 2);
    assert_eq!(q.recover_running(1).expect("recover"), (2, vec![]));
    // Each crashed job is claimed alone, its try counted at the claim.
    let one = q.claim(5).expect("claim");
    assert_eq!((one.len(), one[0].attempts, one[0].crashes), (1, 2, 1));
    q.complete(one[0].id, &[]).expect("done");
    let other = q.claim(5).expect("claim");
    assert_eq!(other.len(), 1);
    // It dies again: two tries spent with retries 1, so it is quarantined.
    let (requeued, quarantined) = q.recover_running(1).expect("recover");
    assert_eq!(requeued, 0);
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0].1.starts_with("stopped the daemon 2 times"),
        "{quarantined:?}"
    );
    assert_eq!(q.job(other[0].id).expect("job").state, JobState::Quarantined);
    // A clean stop gives the claim's try back.
    q.enqueue(&seen("/c", "3")).expect("enqueue");
    let c = q.claim(5).expect("claim");
    assert_eq!(q.requeue_running().expect("requeue"), 1);
    assert_eq!(q.job(c[0].id).expect("job").attempts, 0);
}

#[test]
fn failures_back_off_then_quarantine_and_can_be_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::open(dir.path(), "m").expect("open");
    q.enqueue(&seen("/bad", "x")).expect("enqueue");
    let backoff = |a: u32| Duration::from_millis(40 * u64::from(a));
    let id = q.claim(1).expect("claim")[0].id;
    assert_eq!(
        q.fail(id, "truncated", false, 2, backoff).expect("fail 1"),
        JobState::Failed
    );
    assert!(q.claim(1).expect("too early").is_empty(), "backoff not over");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(q.claim(1).expect("due")[0].id, id);
    assert_eq!(
        q.fail(id, "truncated", false, 2, backoff).expect("fail 2"),
        JobState::Failed
    );
    std::thread::sleep(Duration::from_millis(100));
    q.claim(1).expect("due again");
    assert_eq!(
        q.fail(id, "truncated again", false, 2, backoff).expect("fail 3"),
        JobState::Quarantined
    );
    let job = q.job(id).expect("job");
    assert_eq!(
        (job.attempts, job.reason.as_deref()),
        (3, Some("truncated again"))
    );
    std::thread::sleep(Duration::from_millis(10));
    assert!(q.claim(1).expect("quarantined").is_empty());
    let open = q.open_jobs(10).expect("open jobs");
    assert_eq!((open[0].state, open[0].attempts), (JobState::Quarantined, 3));
    q.retry(id).expect("retry");
    assert_eq!(
        q.claim(1).expect("retried")[0].attempts,
        1,
        "tries reset, this claim counted"
    );
    assert!(matches!(q.retry(id), Err(QueueError::NotRetryable { .. })));
    assert!(matches!(q.retry(999), Err(QueueError::NoSuchJob(999))));
    assert_eq!(
        q.fail(id, "not dicom", true, 5, backoff).expect("permanent"),
        JobState::Quarantined
    );
}

#[test]
fn series_become_due_after_quiet_and_again_after_late_slices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::open(dir.path(), "m").expect("open");
    q.enqueue(&seen("/a", "1")).expect("enqueue");
    let id = q.claim(1).expect("claim")[0].id;
    q.complete(id, &[summary(id, "S")]).expect("complete");
    assert!(
        q.series_due(Duration::from_secs(60)).expect("due").is_empty(),
        "still quiet period"
    );
    let due = q.series_due(Duration::ZERO).expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(
        q.series_reported("S", due[0].1, &SeriesRecord::default())
            .expect("reported"),
        1
    );
    assert!(q.series_due(Duration::ZERO).expect("due").is_empty());
    q.enqueue(&seen("/b", "2")).expect("late slice");
    let id2 = q.claim(1).expect("claim")[0].id;
    q.complete(id2, &[summary(id2, "S")]).expect("complete");
    assert_eq!(q.series_due(Duration::ZERO).expect("due again").len(), 1);
    assert_eq!(q.series_revision("S").expect("rev"), 2);
    assert_eq!(q.series_slices("S").expect("slices").len(), 2);
    assert_eq!(q.recent_slices(1, 0, true).expect("recent")[0].job_id, id2);
}

#[test]
fn retention_deletes_old_done_jobs_and_paths_of_files_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let present = dir.path().join("present.dcm");
    std::fs::write(&present, b"x").expect("file");
    let mut q = Queue::open(dir.path(), "m").expect("open");
    q.enqueue(&seen(&present.to_string_lossy(), "1"))
        .expect("enqueue");
    q.enqueue(&seen("/gone/a.dcm", "2")).expect("enqueue");
    q.enqueue(&seen("/gone/b.dcm", "3")).expect("enqueue");
    let jobs = q.claim(2).expect("claim");
    for j in &jobs {
        q.complete(j.id, &[summary(j.id, "S")]).expect("complete");
    }
    assert_eq!(q.prune(0).expect("nothing old"), (0, 0));
    let later = now_ms() + 1000;
    // Two done jobs go; the pending one stays; only the path of a file that exists stays.
    assert_eq!(q.prune(later).expect("prune"), (2, 2));
    assert_eq!(q.counts().expect("counts").pending, 1);
    assert_eq!(q.counts().expect("counts").done, 0);
    assert!(q.known_files().expect("known").contains_key(&present));
    assert_eq!(q.known_files().expect("known").len(), 1);
}

#[test]
fn thumbnails_are_blobs_and_older_hex_ones_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::open(dir.path(), "m").expect("open");
    q.enqueue(&seen("/a", "1")).expect("enqueue");
    let id = q.claim(1).expect("claim")[0].id;
    let thumb = Thumbnail {
        width: 2,
        height: 1,
        channels: 3,
        data: vec![1, 2, 3, 250, 251, 252],
    };
    let slice = ScreenedSlice {
        thumbnail: Some(thumb.clone()),
        ..summary(id, "S")
    };
    q.complete(id, &[slice]).expect("complete");
    assert_eq!(q.thumbnail(id, None).expect("read"), Some(thumb.clone()));
    let stored: Vec<u8> = q
        .conn
        .query_row(
            "SELECT data FROM thumbnail_blobs WHERE job_id = ?1",
            params![id],
            |r| r.get(0),
        )
        .expect("blob");
    assert_eq!(stored, thumb.data, "raw bytes, not hex");
    q.conn
        .execute(
            "INSERT INTO thumbnails (job_id, frame, thumbnail) VALUES (99, 0, ?1)",
            params![serde_json::to_string(&thumb).expect("json")],
        )
        .expect("old row");
    assert_eq!(q.thumbnail(99, None).expect("old"), Some(thumb));
    assert_eq!(q.thumbnail(98, None).expect("none"), None);
}

#[test]
fn a_second_lock_is_refused_with_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = StateLock::acquire(dir.path()).expect("first");
    let err = StateLock::acquire(dir.path()).expect_err("second");
    let msg = err.to_string();
    assert!(
        msg.contains("another ctmask daemon") && msg.contains(&std::process::id().to_string()),
        "{msg}"
    );
    drop(first);
    StateLock::acquire(dir.path()).expect("free again");
}
