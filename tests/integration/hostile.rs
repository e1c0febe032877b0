//! The daemon binary against hostile inputs (issue 17): inputs under folders and names that look
//! like patient names leave no trace of them in any output file, output name, log line or API
//! answer; a file that aborts the process (the test-only `CTMASK_TEST_ABORT_MARKER` hook) ends
//! quarantined after the retries instead of a crash loop; links, FIFOs and files swapped for
//! them are refused, never followed or hung on, while the good slices around them are screened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctmask::protocol::{Message, Request};

use super::daemon_e2e::{config, series, tiny_models};

/// Strings that must never leave the daemon: the folder, the file names, the DICOM patient name.
const PRIVATE: [&str; 5] = ["DOE_JOHN", "19600101", "SMITH", "JANE", "SYNTHETIC^PHANTOM"];

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctmask daemon` with `cfg`, logging at `level` into `log` (appended), with `envs` set.
fn daemon_command(cfg: &Path, log: &Path, envs: &[(&str, &str)], level: &str) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctmask"));
    cmd.args(["daemon", "--config"])
        .arg(cfg)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn daemon(cfg: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    daemon_command(cfg, log, envs, "debug").spawn().unwrap()
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn slice_reports(out: &Path) -> usize {
    walk(out)
        .iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".json") && n != "series.json" && !n.starts_with('.')
        })
        .count()
}

fn assert_private(what: &str, text: &str) {
    for p in PRIVATE {
        assert!(!text.contains(p), "{what} contains {p:?}");
    }
}

fn status(socket: &Path) -> ctmask::protocol::Snapshot {
    ctmask::protocol::fetch_snapshot(socket).unwrap()
}

fn append_line(cfg: &Path, line: &str) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text.push_str(line);
    text.push('\n');
    std::fs::write(cfg, text).unwrap();
}

#[test]
fn patient_names_in_folders_and_file_names_never_leave_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg = config(d, &seg, &cls);
    let patient = d.join("in/DOE_JOHN_19600101");
    std::fs::create_dir_all(&patient).unwrap();
    for (i, f) in series(d, 2, 3).iter().enumerate() {
        std::fs::copy(f, patient.join(format!("SMITH^JANE_IM{i:04}.dcm"))).unwrap();
    }
    let png = image::GrayImage::from_fn(64, 64, |x, y| image::Luma([((x * 5 + y) % 250) as u8]));
    png.save(patient.join("DOE_JOHN.png")).unwrap();
    std::fs::write(patient.join("DOE_JOHN_bad.dcm"), b"not an image").unwrap();
    let log = d.join("daemon.log");
    let child = daemon(&cfg, &log, &[]);
    let (out, socket) = (d.join("out"), d.join("d.sock"));
    wait_for("3 reports", Duration::from_secs(120), || slice_reports(&out) == 3);
    wait_for("the quarantine", Duration::from_secs(30), || {
        socket.exists()
            && ctmask::protocol::fetch_snapshot(&socket)
                .is_ok_and(|s| s.counts.quarantined == 1 && s.counts.done == 3)
    });
    wait_for("2 series reports", Duration::from_secs(30), || {
        walk(&out).iter().filter(|p| p.ends_with("series.json")).count() == 2
    });

    // The API: status (JSON, as `ctmask status --json` prints it), recent results, each series.
    let status_json = Command::new(env!("CARGO_BIN_EXE_ctmask"))
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(status_json.status.success());
    let status_text = String::from_utf8(status_json.stdout).unwrap();
    assert!(status_text.contains("\"quarantined\": 1"), "{status_text}");
    assert_private("status --json", &status_text);
    let mut client = ctmask::protocol::Client::connect(&socket, Some(Duration::from_secs(10))).unwrap();
    let Message::Results(recent) = client.request(&Request::Recent { limit: 50, offset: 0 }).unwrap() else {
        panic!("no results")
    };
    assert_eq!(recent.slices.len(), 3);
    assert_private("recent", &serde_json::to_string(&recent).unwrap());
    for s in &recent.series {
        let answer = client
            .request(&Request::Series {
                key: s.key.clone(),
                offset: 0,
                limit: None,
            })
            .unwrap();
        assert_private("series", &serde_json::to_string(&answer).unwrap());
    }
    stop(child);

    // Every output file: its name and its content.
    let files = walk(&out);
    assert!(files.len() >= 3 * 3 + 2, "{files:?}");
    for f in files {
        assert_private("an output name", &f.strip_prefix(&out).unwrap().to_string_lossy());
        if f.is_file() {
            let bytes = std::fs::read(&f).unwrap();
            assert_private(&f.display().to_string(), &String::from_utf8_lossy(&bytes));
        }
    }
    // Every log line, at debug level.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("quarantined"), "{log_text}");
    assert_private("the log", &log_text);

    // With show_input_paths on, status names a quarantined input relative to its watch folder.
    append_line(&cfg, "  show_input_paths: true"); // the daemon block ends the file
    let child = daemon(&cfg, &log, &[]);
    wait_for("the daemon", Duration::from_secs(30), || {
        socket.exists() && ctmask::protocol::fetch_snapshot(&socket).is_ok()
    });
    let paths: Vec<String> = status(&socket).jobs.iter().map(|j| j.path.clone()).collect();
    assert_eq!(paths, ["DOE_JOHN_19600101/DOE_JOHN_bad.dcm"]);
    stop(child);
}

/// Starts the daemon without core dumps (a test-only abort must not leave a core file behind).
fn daemon_no_core(cfg: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = daemon_command(cfg, log, envs, "info");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn a_file_that_kills_the_daemon_is_quarantined_after_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg = config(d, &seg, &cls);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("retries: 0", "retries: 1");
    std::fs::write(&cfg, text).unwrap();
    let inbox = d.join("in");
    // The poison comes first (the lowest job id), so it is in the first claimed batch.
    std::fs::write(inbox.join("a-poison.dcm"), b"DICM POISON-ABORT-MARKER").unwrap();
    for (i, f) in series(d, 3, 11).iter().enumerate() {
        std::fs::copy(f, inbox.join(format!("s{i}.dcm"))).unwrap();
    }
    let (out, socket, log) = (d.join("out"), d.join("d.sock"), d.join("daemon.log"));
    let envs = [("CTMASK_TEST_ABORT_MARKER", "POISON-ABORT-MARKER")];
    // systemd's part: restart the daemon whenever it dies, up to a start limit.
    let mut starts = 0;
    let mut child = daemon_no_core(&cfg, &log, &envs);
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < Duration::from_secs(180), "timed out");
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the daemon exited cleanly on its own");
            starts += 1;
            assert!(starts <= 3, "crash loop: {starts} deaths");
            child = daemon_no_core(&cfg, &log, &envs);
            continue;
        }
        // The queue records a job done just after its report appears: ask the queue.
        if slice_reports(&out) == 3
            && socket.exists()
            && ctmask::protocol::fetch_snapshot(&socket)
                .is_ok_and(|s| s.counts.quarantined == 1 && s.counts.done == 3)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap = status(&socket);
    stop(child);
    assert_eq!(starts, 2, "the poison killed the daemon once per try (retries 1)");
    assert_eq!(
        (snap.counts.done, snap.counts.quarantined),
        (3, 1),
        "{:?}",
        snap.jobs
    );
    let reason = snap.jobs[0].reason.clone().unwrap_or_default();
    assert!(reason.starts_with("stopped the daemon 2 times"), "{reason}");
    // The innocent slices claimed with the poison were screened once each.
    assert_eq!(slice_reports(&out), 3);
}

#[test]
fn a_dead_thread_stops_the_watchdog_and_the_daemon_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg = config(d, &seg, &cls);
    let notify_path = d.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = d.join("daemon.log");
    let notify_env = notify_path.to_string_lossy().into_owned();
    let mut child = daemon_no_core(
        &cfg,
        &log,
        &[
            ("NOTIFY_SOCKET", notify_env.as_str()),
            ("WATCHDOG_USEC", "200000"), // a ping every 100 ms
            ("CTMASK_TEST_PANIC_MARKER", "KILL-THE-READER"),
        ],
    );
    let mut messages: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let mut recv = |messages: &mut Vec<String>| {
        if let Ok(n) = notify.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let t = Instant::now();
    while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no watchdog pings: {messages:?}"
        );
        recv(&mut messages);
    }
    assert!(messages.contains(&"READY=1".to_string()), "{messages:?}");
    std::fs::write(d.join("in/poison.dcm"), b"KILL-THE-READER").unwrap();
    let status = loop {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the daemon kept running: {messages:?}"
        );
        recv(&mut messages);
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
    };
    while let Ok(n) = notify.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    let unhealthy = messages
        .iter()
        .position(|m| m.starts_with("STATUS=unhealthy: the reader thread ended unexpectedly"))
        .unwrap_or_else(|| panic!("no unhealthy status: {messages:?}"));
    assert!(
        !messages[unhealthy..].iter().any(|m| m == "WATCHDOG=1"),
        "pinged after a thread died: {messages:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("daemon unhealthy, exiting for a restart"),
        "{log_text}"
    );
}

/// A number of a process's /proc status (`VmRSS:` in kB, `Threads:`); 0 when absent.
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:") << 10
}

/// `ctmask status` against `socket`, and how long it took.
fn status_cli(socket: &Path) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ctmask"))
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn idle_clients_a_reader_that_never_reads_and_a_flood_do_not_starve_status() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Other users must reach the socket for the role check below.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (seg, cls) = tiny_models(d);
    let cfg = config(d, &seg, &cls);
    append_line(&cfg, "  socket_group: users");
    for (i, f) in series(d, 3, 21).iter().enumerate() {
        std::fs::copy(f, d.join(format!("in/s{i}.dcm"))).unwrap();
    }
    let (out, socket, log) = (d.join("out"), d.join("d.sock"), d.join("daemon.log"));
    let child = daemon(&cfg, &log, &[]);
    wait_for("3 reports", Duration::from_secs(120), || slice_reports(&out) == 3);
    wait_for("3 jobs done", Duration::from_secs(30), || {
        ctmask::protocol::fetch_snapshot(&socket).is_ok_and(|s| s.counts.done == 3)
    });
    let pid = child.id();

    // 200 idle clients (connected, never a word).
    let idle: Vec<UnixStream> = (0..200).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    // A client that requests without ever reading the replies.
    let mut deaf = UnixStream::connect(&socket).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let deaf_writer = std::thread::spawn(move || {
        let _ = deaf.write_all(b"{\"type\":\"hello\",\"version\":1}\n");
        let line = b"{\"type\":\"recent\",\"limit\":1000}\n";
        let mut sent = 0usize;
        while sent < 20_000 && deaf.write_all(line).is_ok() {
            sent += 1;
        }
        sent
    });
    // A flood of `recent` from a client that reads.
    let mut flood = ctmask::protocol::Client::connect(&socket, Some(Duration::from_secs(10))).unwrap();
    for _ in 0..300 {
        let Message::Results(r) = flood
            .request(&Request::Recent {
                limit: 1000,
                offset: 0,
            })
            .unwrap()
        else {
            panic!("no results")
        };
        assert_eq!(r.slices.len(), 3);
    }
    let sent = deaf_writer.join().unwrap();
    assert!(
        sent < 20_000,
        "the daemon kept reading a client that never reads ({sent} requests)"
    );
    // A well-behaved `ctmask status` still answers.
    let (status_out, took) = status_cli(&socket);
    assert!(status_out.status.success(), "{status_out:?}");
    eprintln!("ctmask status answered in {took:?} with 200 idle clients");
    let rss = rss_bytes(pid);
    eprintln!("daemon resident memory {} MB", rss >> 20);
    assert!(rss > 0 && rss < 2 << 30, "daemon at {} MB", rss >> 20);
    drop(idle);

    // A socket_group member without the control role may read but not pause (needs root to
    // act as another user).
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        let as_member = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_ctmask"))
                .arg(args[0])
                .arg("--socket")
                .arg(&socket)
                .args(&args[1..])
                .uid(65534) // nobody
                .gid(100) // users: the socket's group
                .output()
                .unwrap()
        };
        let read = as_member(&["status"]);
        assert!(read.status.success(), "{read:?}");
        let pause = as_member(&["control", "pause"]);
        assert!(!pause.status.success());
        let err = String::from_utf8_lossy(&pause.stderr);
        assert!(err.contains("forbidden") && err.contains("control role"), "{err}");
        assert!(!status(&socket).intake.paused);
    } else {
        eprintln!("skipped the role check: not root");
    }
    stop(child);
}

/// What the server's tokio runtime buys: 1000 greeted, idle clients are held at once (the cap
/// raised for them) while the daemon's thread count stays small, and `ctmask status` answers.
#[test]
fn a_thousand_idle_clients_are_held_by_a_few_threads_and_status_answers() {
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixStream;
    const IDLE: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg = config(d, &seg, &cls);
    append_line(&cfg, &format!("  max_clients: {}", IDLE + 10));
    let (socket, log) = (d.join("d.sock"), d.join("daemon.log"));
    let child = daemon(&cfg, &log, &[]);
    wait_for("the socket", Duration::from_secs(60), || {
        ctmask::protocol::fetch_snapshot(&socket).is_ok()
    });
    let pid = child.id();
    let before = proc_status(pid, "Threads:");
    let clients: Vec<UnixStream> = (0..IDLE)
        .map(|i| {
            let mut c = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("client {i}: {e}"));
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(b"{\"type\":\"hello\",\"version\":1}\n").unwrap();
            c
        })
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let mut line = String::new();
        let read = std::io::BufReader::new(c).read_line(&mut line);
        read.unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(line.contains("\"hello\""), "client {i}: {line}");
    }
    let held = proc_status(pid, "Threads:");
    let (status_out, took) = status_cli(&socket);
    assert!(status_out.status.success(), "{status_out:?}");
    eprintln!("{IDLE} idle clients: daemon threads {before} before, {held} while held; status in {took:?}");
    assert!(held > 0 && held <= before + 8, "{held} threads (were {before})");
    drop(clients);
    stop(child);
}

/// Peak resident memory of a process (VmHWM), from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status(pid, "VmHWM:") << 10
}

/// The decoder bombs of `hostile_files` (every codec, huge declared sizes, a deflate bomb, PNG and
/// JPEG headers) dropped into the watch folder between good slices: each is quarantined at its
/// first try with its reason, the good slices around them are screened, and the one daemon process
/// (never restarted) stays under 300 MB of peak memory.
#[test]
fn decoder_bombs_in_the_watch_folder_are_quarantined_and_the_slices_around_them_screened() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = tiny_models(d);
    let cfg = config(d, &seg, &cls);
    std::fs::create_dir_all(d.join("bombs")).unwrap();
    let bombs = super::hostile_files::corpus(&d.join("bombs"));
    let good = series(d, 4, 8);
    let log = d.join("daemon.log");
    let mut child = daemon(&cfg, &log, &[]);
    let (out, socket) = (d.join("out"), d.join("d.sock"));
    wait_for("the daemon", Duration::from_secs(60), || {
        socket.exists() && ctmask::protocol::fetch_snapshot(&socket).is_ok()
    });
    let drop_in = |from: &Path, name: String| std::fs::copy(from, d.join("in").join(name)).unwrap();
    drop_in(&good[0], "a0.dcm".into());
    drop_in(&good[1], "a1.dcm".into());
    wait_for("2 reports", Duration::from_secs(120), || slice_reports(&out) == 2);
    // the daemon's own peak with its models loaded and two slices screened
    let before = peak_rss_bytes(child.id());
    let started = Instant::now();
    for (i, (b, _)) in bombs.iter().enumerate() {
        drop_in(b, format!("b{i:02}_{}", b.file_name().unwrap().to_string_lossy()));
    }
    drop_in(&good[2], "c0.dcm".into());
    drop_in(&good[3], "c1.dcm".into());
    wait_for(
        "every bomb quarantined and 4 reports",
        Duration::from_secs(300),
        || {
            slice_reports(&out) == 4
                && ctmask::protocol::fetch_snapshot(&socket)
                    .is_ok_and(|s| s.counts.quarantined == bombs.len() as u64 && s.counts.done == 4)
        },
    );
    eprintln!(
        "{} bombs and 4 good slices through the daemon: {:.1} s",
        bombs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
    let peak = peak_rss_bytes(child.id());
    eprintln!(
        "daemon peak RSS {} MB before the bombs, {} MB after",
        before >> 20,
        peak >> 20
    );
    assert!(before > 0, "no peak RSS in /proc");
    assert!(
        peak - before < 300 << 20,
        "the bombs took the daemon from {} MB to {} MB",
        before >> 20,
        peak >> 20
    );
    // each bomb was refused at its first try, with the reason `segment` gives it
    let snapshot = status(&socket);
    let quarantined: Vec<_> = snapshot
        .jobs
        .iter()
        .filter(|j| j.state == ctmask::protocol::JobState::Quarantined)
        .collect();
    assert_eq!(quarantined.len(), bombs.len(), "{:?}", snapshot.jobs);
    for j in &quarantined {
        let reason = j.reason.clone().unwrap_or_default();
        assert_eq!(j.attempts, 1, "{reason}");
        assert!(
            bombs.iter().any(|(_, why)| reason.contains(why)),
            "unexpected reason {reason:?}"
        );
    }
    stop(child);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(!log_text.contains("panicked"), "{log_text}");
}
