//! Operating the daemon: pause and resume over the socket with its events and permissions, intake
//! paused by a low disk, a second instance refused, and the drain that requeues the slice in hand.
//! Helpers come from `mod.rs`.

use super::*;

#[test]
fn pause_resume_events_and_socket_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path());
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s, Duration::ZERO);
    let mode = std::fs::metadata(&d.socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut events = d.client();
    events.send(&Request::Subscribe).expect("subscribe");
    let mut client = d.client();
    assert!(matches!(client.request(&Request::Pause), Ok(Message::Ack { .. })));
    drop_file(&watch, "a.png", &png(250));
    let mut status = || match client.request(&Request::Status) {
        Ok(Message::Snapshot(s)) => s,
        other => panic!("no snapshot: {other:?}"),
    };
    assert!(wait_until(Duration::from_secs(5), || status().counts.pending == 1));
    std::thread::sleep(Duration::from_millis(300));
    let Ok(Message::Snapshot(snap)) = client.request(&Request::Status) else {
        panic!("no snapshot")
    };
    assert!(snap.intake.paused && snap.intake.reasons == ["paused by operator"]);
    assert_eq!(
        (snap.counts.pending, snap.counts.done),
        (1, 0),
        "queued but not screened while paused"
    );
    assert!(slice_reports(&out).is_empty());
    assert!(matches!(
        client.request(&Request::Resume),
        Ok(Message::Ack { .. })
    ));
    assert!(wait_until(Duration::from_secs(5), || slice_reports(&out).len() == 1));
    let mut kinds = Vec::new();
    while !kinds.contains(&EventKind::Done) {
        match events.next_message().expect("event") {
            Message::Event(e) => kinds.push(e.kind),
            other => panic!("unexpected {other:?}"),
        }
    }
    for k in [
        EventKind::DaemonStarted,
        EventKind::IntakePaused,
        EventKind::Queued,
        EventKind::IntakeResumed,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
    // Garbage and a missing hello get errors, not a dropped daemon.
    let mut raw = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    std::io::Write::write_all(&mut raw, b"{\"type\":\"status\"}\nnot json\n").expect("write");
    let mut reader = std::io::BufReader::new(raw);
    let first: Option<Message> = crate::protocol::read_message(&mut reader).expect("reply");
    assert!(matches!(first, Some(Message::Error { ref code, .. }) if code == "hello_required"));
    let second: Option<Message> = crate::protocol::read_message(&mut reader).expect("reply");
    assert!(matches!(second, Some(Message::Error { ref code, .. }) if code == "bad_request"));
    d.stop();
    assert!(
        !tmp.path().join("run/ctmask.sock").exists(),
        "socket removed on exit"
    );
}

#[test]
fn low_disk_pauses_intake_until_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        min_free_bytes: u64::MAX,
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s.clone(), Duration::ZERO);
    drop_file(&watch, "a.png", &png(250));
    std::thread::sleep(Duration::from_millis(800));
    let snap = fetch_snapshot(&d.socket).expect("status");
    assert!(snap.intake.paused);
    assert!(
        snap.intake.reasons[0].starts_with("low disk space on"),
        "{:?}",
        snap.intake.reasons
    );
    assert!(snap.disk.is_some_and(|disk| disk.free_bytes > 0));
    assert!(
        std::fs::read_dir(&out).expect("out").next().is_none(),
        "nothing written while the disk is low"
    );
    // Space "returns": the threshold drops on reload (SIGHUP in production).
    d.signal.set_reloader(Box::new(move || {
        Ok(reloaded(DaemonSettings {
            min_free_bytes: 0,
            ..s.clone()
        }))
    }));
    d.signal.request_reload();
    assert!(
        wait_until(Duration::from_secs(5), || slice_reports(&out).len() == 1),
        "not resumed"
    );
    assert!(!fetch_snapshot(&d.socket).expect("status").intake.paused);
    d.stop();
}

#[test]
fn second_instance_is_refused_and_drain_requeues_the_slice_in_hand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = DaemonSettings {
        drain_timeout_s: 0.1,
        batch_size: 1,
        ..settings(tmp.path())
    };
    let (watch, out) = (s.watch[0].clone(), s.output.clone());
    let d = start(s.clone(), Duration::from_millis(600));
    let other = DaemonSettings {
        socket: tmp.path().join("run/other.sock"),
        ..s.clone()
    };
    let make: MakeScreener = Box::new(|| Err("must not be built".into()));
    let err = run(other, SliceSettings::default(), make, Shutdown::new()).expect_err("second instance");
    assert!(err.to_string().contains("another ctmask daemon"), "{err}");

    for i in 0..3 {
        drop_file(&watch, &format!("{i}.png"), &png(100 + i));
    }
    assert!(
        wait_until(Duration::from_secs(5), || d.calls.load(Ordering::SeqCst) >= 1),
        "screening never started"
    );
    d.stop(); // SIGTERM in production: returns after drain_timeout_s although the model is busy
    let done_before = slice_reports(&out).len();
    assert!(done_before < 3, "drain should interrupt the run");
    std::thread::sleep(Duration::from_millis(700)); // the abandoned model call ends
    let d = start(s, Duration::ZERO);
    assert!(
        wait_until(Duration::from_secs(10), || slice_reports(&out).len() == 3),
        "requeued slices not finished"
    );
    d.stop();
    let names: Vec<String> = slice_reports(&out)
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "exactly one report per slice: {names:?}");
}
