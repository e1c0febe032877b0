//! The daemon in-process against hostile conditions (issue 17): a broken device, a second file
//! with a screened SOP instance UID, queued files swapped for links and FIFOs, and reloads that
//! name what needs a restart, a client over `max_clients`, and the stop as a subscriber sees it.
//! Helpers come from the parent module (`mod.rs`).

use super::*;

#[test]
fn a_run_of_screening_failures_pauses_intake_instead_of_quarantining_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        device_failure_limit: 3,
        retries: 0, // without the pause, every failure would quarantine its file
        batch_size: 1,
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    d.broken.store(true, Ordering::SeqCst);
    for i in 0..6 {
        drop_file(&watch, &format!("{i}.png"), &png(100 + i));
    }
    let snap = || fetch_snapshot(&d.socket).expect("status");
    assert!(
        wait_until(Duration::from_secs(10), || snap().intake.reasons.iter().any(
            |r| r.starts_with("screening failed for 3 files in a row (last: CUDA error")
        )),
        "{:?}",
        snap().intake
    );
    std::thread::sleep(Duration::from_millis(300));
    let paused = snap();
    assert!(paused.intake.paused);
    assert!(
        paused.counts.quarantined <= 5, // 3, plus at most the reader's read-ahead
        "the pause stops the run: {:?}",
        paused.counts
    );
    assert!(
        paused.counts.pending >= 1,
        "files wait while paused: {:?}",
        paused.counts
    );
    // The device is fixed; the operator retries everything.
    d.broken.store(false, Ordering::SeqCst);
    assert!(matches!(
        d.client().request(&Request::RetryAll),
        Ok(Message::Ack { .. })
    ));
    // Reports appear before the queue records the job done: wait for the queue.
    assert!(
        wait_until(Duration::from_secs(10), || snap().counts.done == 6),
        "{:?}",
        snap().counts
    );
    assert_eq!(slice_reports(&out).len(), 6);
    let after = snap();
    assert!(!after.intake.paused, "{:?}", after.intake);
    assert_eq!((after.counts.done, after.counts.quarantined), (6, 0));
    d.stop();
}

#[test]
fn a_second_file_with_the_same_sop_instance_is_a_conflict_not_a_second_result() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    let original = std::fs::read(shared_dicom("chest_ct1_128_crop_explicit_le.dcm")).expect("dicom");
    drop_file(&watch, "a.dcm", &original);
    assert!(wait_until(Duration::from_secs(10), || series_reports(&out).len() == 1));
    // Same SOP instance UID, other pixels (the last pixel byte changed).
    let mut other = original.clone();
    let last = other.len() - 1;
    other[last] ^= 0x01;
    drop_file(&watch, "b.dcm", &other);
    let snap = || fetch_snapshot(&d.socket).expect("status");
    assert!(
        wait_until(Duration::from_secs(10), || snap().counts.quarantined == 1),
        "{:?}",
        snap().jobs
    );
    let reason = snap().jobs[0].reason.clone().unwrap_or_default();
    assert!(reason.starts_with("conflict: SOP instance"), "{reason}");
    std::thread::sleep(Duration::from_millis(600)); // a quiet period: no second report
    assert_eq!(slice_reports(&out).len(), 1);
    let report = json(&series_reports(&out)[0]);
    assert_eq!(report["slice_count"], 1, "counted once");
    assert_eq!(snap().counts.done, 1);
    d.stop();
}

#[test]
fn queued_files_swapped_for_links_or_fifos_are_refused_not_followed_or_waited_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    let mut client = d.client();
    assert!(matches!(client.request(&Request::Pause), Ok(Message::Ack { .. })));
    let a = drop_file(&watch, "a.png", &png(200));
    let b = drop_file(&watch, "b.png", &png(201));
    let snap = || fetch_snapshot(&d.socket).expect("status");
    assert!(
        wait_until(Duration::from_secs(10), || snap().counts.pending == 2),
        "{:?} {:?}",
        snap().counts,
        snap().jobs
    );
    // Swapped while queued: a link to /dev/zero, and a FIFO.
    std::fs::remove_file(&a).expect("rm a");
    std::os::unix::fs::symlink("/dev/zero", &a).expect("symlink");
    std::fs::remove_file(&b).expect("rm b");
    let c = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).expect("cstr");
    // SAFETY: mkfifo of a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    drop_file(&watch, "good.png", &png(202));
    assert!(matches!(
        client.request(&Request::Resume),
        Ok(Message::Ack { .. })
    ));
    assert!(
        wait_until(Duration::from_secs(10), || snap().counts.quarantined == 2
            && slice_reports(&out).len() == 1),
        "{:?}",
        snap().jobs
    );
    let reasons: Vec<String> = snap().jobs.iter().filter_map(|j| j.reason.clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r == "file replaced after it was queued: a symbolic link (links are never followed)"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r == "file replaced after it was queued: not a regular file (a FIFO)"),
        "{reasons:?}"
    );
    d.stop();
}

#[test]
fn a_reload_applies_what_it_can_and_names_what_needs_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let d = start(s.clone(), Duration::ZERO);
    let mut events = d.client();
    events.send(&Request::Subscribe).expect("subscribe");
    d.signal.set_reloader(Box::new(move || {
        Ok(Reloaded {
            daemon: DaemonSettings {
                poll_interval_s: 0.5,
                retries: 7,
                show_input_paths: true,
                ..s.clone()
            },
            slice: SliceSettings::default(),
            restart_keys: vec!["screening".into()],
        })
    }));
    d.signal.request_reload();
    let message = loop {
        match events.next_message().expect("event") {
            Message::Event(e) if e.kind == EventKind::Reloaded => break e.message,
            _ => {}
        }
    };
    assert_eq!(
        message,
        "settings reloaded; restart to apply: daemon.poll_interval_s, screening"
    );
    d.stop();
}

#[test]
fn a_reload_applies_the_slice_block_to_the_next_file_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let watch = s.watch[0].clone();
    let d = start(s.clone(), Duration::ZERO);
    let snap = || fetch_snapshot(&d.socket).expect("status");
    drop_file(&watch, "a.png", &png(100));
    assert!(wait_until(Duration::from_secs(10), || snap().counts.done == 1));
    // The reader's size limit drops below the 8x8 test images (SIGHUP in production).
    let mut events = d.client();
    events.send(&Request::Subscribe).expect("subscribe");
    d.signal.set_reloader(Box::new(move || {
        Ok(Reloaded {
            daemon: s.clone(),
            slice: SliceSettings {
                max_width: crate::config::Positive(4),
                ..SliceSettings::default()
            },
            restart_keys: Vec::new(),
        })
    }));
    d.signal.request_reload();
    let message = loop {
        match events.next_message().expect("event") {
            Message::Event(e) if e.kind == EventKind::Reloaded => break e.message,
            _ => {}
        }
    };
    assert_eq!(message, "settings reloaded", "the slice block applies live");
    drop_file(&watch, "b.png", &png(200));
    assert!(
        wait_until(Duration::from_secs(10), || snap().counts.quarantined == 1),
        "{:?}",
        snap().jobs
    );
    let reason = snap().jobs[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("too large: 8x8 exceeds limit 4x"), "{reason}");
    assert_eq!(snap().counts.done, 1);
    d.stop();
}

#[test]
fn a_client_over_max_clients_is_told_busy_and_a_subscriber_hears_the_daemon_stop() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        max_clients: 2,
        ..settings(tmp.path())
    };
    let d = start(s, Duration::ZERO);
    let mut events = d.client();
    events.send(&Request::Subscribe).expect("subscribe");
    let _second = d.client();
    let third = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut line = String::new();
    std::io::BufReader::new(&third)
        .read_line(&mut line)
        .expect("busy line");
    let busy: Message = crate::protocol::decode(&line).expect("decode");
    assert!(
        matches!(&busy, Message::Error { code: crate::protocol::ErrorCode::Busy, message } if message.contains("too many clients")),
        "{busy:?}"
    );
    // The stop: "daemon stopping" reaches the subscriber before its connection closes.
    d.signal.trigger();
    loop {
        match events.next_message() {
            Ok(Message::Event(e)) if e.kind == EventKind::DaemonStopping => break,
            Ok(_) => continue,
            Err(e) => panic!("closed before the stopping event: {e}"),
        }
    }
    d.stop();
}
