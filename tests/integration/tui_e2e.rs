//! The dashboard end to end inside tmux: a real daemon (tiny real model), `ctmask tui` in a
//! detached tmux session, a synthetic series dropped into the watch folder shows up in Results,
//! `p` pauses intake in the daemon, and killing the daemon shows the disconnected state, then
//! reconnection once it is back. Needs tmux (`make test` installs it when run as root).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn screen(session: &str) -> String {
    tmux(&["capture-pane", "-p", "-t", session])
}

fn wait_screen(session: &str, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let s = screen(session);
        if pred(&s) {
            return s;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}; screen:\n{s}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn daemon(cfg: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ctmask"))
        .args(["daemon", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap()
}

#[test]
fn dashboard_follows_a_real_daemon_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed (make test installs it when run as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (seg, cls) = super::daemon_e2e::tiny_models(d);
    let cfg = super::daemon_e2e::config(d, &seg, &cls);
    let socket = d.join("d.sock");
    let mut child = daemon(&cfg);
    let t = Instant::now();
    while !socket.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "daemon socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let session = format!("ctmask-e2e-{}", std::process::id());
    let cmd = format!(
        "{} tui --socket {}",
        env!("CARGO_BIN_EXE_ctmask"),
        socket.display()
    );
    tmux(&["new-session", "-d", "-s", &session, "-x", "120", "-y", "40", &cmd]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_screen(
            &session,
            "the connected dashboard",
            Duration::from_secs(20),
            |s| s.contains("connected") && !s.contains("disconnected"),
        );
        for (i, f) in super::daemon_e2e::series(d, 3, 17).iter().enumerate() {
            std::fs::copy(f, d.join("in").join(format!("s{i}.dcm"))).unwrap();
        }
        tmux(&["send-keys", "-t", &session, "2"]);
        let s = wait_screen(&session, "the series in Results", Duration::from_secs(120), |s| {
            s.contains("2.25.") && s.contains("3 ")
        });
        assert!(s.contains("Results"));
        tmux(&["send-keys", "-t", &session, "p"]);
        let t = Instant::now();
        loop {
            let snap = ctmask::protocol::fetch_snapshot(&socket).unwrap();
            if snap.intake.paused {
                assert!(
                    snap.intake.reasons.iter().any(|r| r.contains("operator")),
                    "{:?}",
                    snap.intake.reasons
                );
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "p did not pause intake");
            std::thread::sleep(Duration::from_millis(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        wait_screen(&session, "the disconnected state", Duration::from_secs(20), |s| {
            s.contains("disconnected")
        });
        let mut again = daemon(&cfg);
        let s = wait_screen(&session, "reconnection", Duration::from_secs(60), |s| {
            s.contains("connected") && !s.contains("disconnected")
        });
        assert!(s.contains("ctmask"));
        again.kill().unwrap();
        again.wait().unwrap();
    }));
    tmux(&["kill-session", "-t", &session]);
    let _ = child.kill();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
