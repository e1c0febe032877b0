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

fn daemon(cfg: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctmask"));
    cmd.args(["daemon", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
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
    ctmask::daemon::status_client(socket).unwrap()
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
        socket.exists() && status(&socket).counts.quarantined == 1
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
    let mut client = ctmask::daemon::Client::connect(&socket, Some(Duration::from_secs(10))).unwrap();
    let Message::Results(recent) = client.request(&Request::Recent { limit: 50 }).unwrap() else {
        panic!("no results")
    };
    assert_eq!(recent.slices.len(), 3);
    assert_private("recent", &serde_json::to_string(&recent).unwrap());
    for s in &recent.series {
        let answer = client
            .request(&Request::Series { key: s.key.clone() })
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
        socket.exists() && ctmask::daemon::status_client(&socket).is_ok()
    });
    let paths: Vec<String> = status(&socket).jobs.iter().map(|j| j.path.clone()).collect();
    assert_eq!(paths, ["DOE_JOHN_19600101/DOE_JOHN_bad.dcm"]);
    stop(child);
}

/// Starts the daemon without core dumps (a test-only abort must not leave a core file behind).
fn daemon_no_core(cfg: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctmask"));
    cmd.args(["daemon", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in envs {
        cmd.env(k, v);
    }
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
    let text = std::fs::read_to_string(&cfg).unwrap().replace("retries: 0", "retries: 1");
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
        if slice_reports(&out) == 3
            && socket.exists()
            && ctmask::daemon::status_client(&socket).is_ok_and(|s| s.counts.quarantined == 1)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap = status(&socket);
    stop(child);
    assert_eq!(starts, 2, "the poison killed the daemon once per try (retries 1)");
    assert_eq!((snap.counts.done, snap.counts.quarantined), (3, 1), "{:?}", snap.jobs);
    let reason = snap.jobs[0].reason.clone().unwrap_or_default();
    assert!(reason.starts_with("stopped the daemon 2 times"), "{reason}");
    // The innocent slices claimed with the poison were screened once each.
    assert_eq!(slice_reports(&out), 3);
}
