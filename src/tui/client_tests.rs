//! The client against a fake daemon: a `UnixListener` in a temporary folder that serves canned
//! protocol lines, goes away and comes back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use super::*;
use crate::protocol::{Event, EventKind, Message, Request, Snapshot};

const WAIT: Duration = Duration::from_secs(10);

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(40))
}

fn line<T: serde::Serialize>(m: &T) -> String {
    protocol::encode(m).expect("encode")
}

/// The next message that is not a retry notice.
fn next(rx: &Receiver<Msg>) -> Msg {
    loop {
        match rx.recv_timeout(WAIT).expect("a message from the client") {
            Msg::Disconnected { .. } => continue,
            m => return m,
        }
    }
}

/// Accepts one client, answers its hello and reads its subscribe.
fn greet_client(listener: &UnixListener) -> (BufReader<UnixStream>, UnixStream) {
    let (stream, _) = listener.accept().expect("accept");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut l = String::new();
    reader.read_line(&mut l).expect("hello line");
    assert!(
        matches!(protocol::decode(&l), Ok(Request::Hello { version: 1, .. })),
        "{l}"
    );
    let hello = Message::Hello {
        version: 1,
        server: "fake 1".into(),
    };
    writer.write_all(line(&hello).as_bytes()).expect("write hello");
    l.clear();
    reader.read_line(&mut l).expect("subscribe line");
    assert_eq!(
        protocol::decode::<Request>(&l).expect("subscribe"),
        Request::Subscribe
    );
    (reader, writer)
}

#[test]
fn reconnects_when_the_daemon_goes_and_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctmask.sock");
    let (tx, rx) = mpsc::channel();
    let client = Client::with_backoff(&socket, tx, fast()).expect("client");

    // No daemon yet: said plainly, with the wait before the next try.
    match rx.recv_timeout(WAIT).expect("first attempt") {
        Msg::Disconnected { reason, retry_in_ms } => {
            assert!(reason.contains("no socket"), "{reason}");
            assert_eq!(retry_in_ms, 10);
        }
        other => panic!("expected a disconnection, got {other:?}"),
    }

    let listener = UnixListener::bind(&socket).expect("bind");
    let (requests_tx, requests_rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut reader, mut writer) = greet_client(&listener);
        let event = Event {
            seq: 1,
            time_ms: 5,
            kind: EventKind::Queued,
            message: "job 1 queued".into(),
            job_id: Some(1),
            series: None,
        };
        let snapshot = Message::Snapshot(Box::new(Snapshot {
            pid: 77,
            ..Snapshot::default()
        }));
        let canned = [
            line(&Message::Event(event)),
            "this is not json\n".to_string(),
            "{\"type\":\"gpu_stats\",\"x\":1}\n".to_string(),
            line(&snapshot),
        ];
        for l in canned {
            writer.write_all(l.as_bytes()).expect("write");
        }
        let mut l = String::new();
        reader.read_line(&mut l).expect("request");
        requests_tx.send(l).expect("report request");
        // The daemon goes away: connection, listener and socket file.
        drop((reader, writer, listener));
    });

    assert!(matches!(next(&rx), Msg::Connected { generation: 1, ref server } if server.contains("fake 1")));
    assert!(matches!(next(&rx), Msg::Daemon(Message::Event(e)) if e.seq == 1));
    assert!(matches!(next(&rx), Msg::ProtocolError(e) if e.contains("malformed")));
    assert_eq!(
        next(&rx),
        Msg::Daemon(Message::Unknown),
        "a newer message type is skipped"
    );
    assert!(matches!(next(&rx), Msg::Daemon(Message::Snapshot(s)) if s.pid == 77));
    client.send(0, Request::Pause); // for a connection that no longer exists: dropped
    client.send(1, Request::Status);
    let got = requests_rx
        .recv_timeout(WAIT)
        .expect("request reached the daemon");
    assert_eq!(
        protocol::decode::<Request>(&got).expect("decode"),
        Request::Status
    );
    server.join().expect("server thread");
    std::fs::remove_file(&socket).expect("remove the socket");

    // Gone: reported, then retried until a new daemon listens.
    match rx.recv_timeout(WAIT).expect("disconnection") {
        Msg::Disconnected { reason, .. } => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("expected a disconnection, got {other:?}"),
    }
    let listener = UnixListener::bind(&socket).expect("bind again");
    let server = std::thread::spawn(move || {
        let (mut reader, _writer) = greet_client(&listener);
        let mut l = String::new();
        reader.read_line(&mut l).expect("request");
        let n = reader.read_line(&mut String::new()).expect("end");
        (l, n)
    });
    assert!(matches!(next(&rx), Msg::Connected { generation: 2, .. }));
    client.send(1, Request::Pause); // meant for the first connection
    client.send(2, Request::Resume);
    drop(client); // closes the connection
    let (l, n) = server.join().expect("server thread");
    assert_eq!(protocol::decode::<Request>(&l).expect("decode"), Request::Resume);
    assert_eq!(n, 0, "the connection ends when the client is dropped");
}

/// A fake daemon that answers the hello with `answer`; the first thing the client reports.
fn greeting_answered_with(answer: Message) -> Msg {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        reader.read_line(&mut String::new()).expect("hello");
        (&stream).write_all(line(&answer).as_bytes()).expect("write");
    });
    let (tx, rx) = mpsc::channel();
    let _client = Client::with_backoff(&socket, tx, fast()).expect("client");
    let first = rx.recv_timeout(WAIT).expect("message");
    server.join().expect("server thread");
    first
}

#[test]
fn a_refused_greeting_is_a_disconnection_with_the_reason() {
    let refusal = Message::Error {
        code: protocol::ErrorCode::Forbidden,
        message: "not allowed: ask to be added to the daemon's group".into(),
    };
    match greeting_answered_with(refusal) {
        Msg::Disconnected { reason, .. } => assert!(reason.contains("forbidden"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_daemon_of_another_protocol_version_is_a_disconnection_naming_both() {
    let hello = Message::Hello {
        version: protocol::PROTOCOL_VERSION + 1,
        server: "ctmask 9.9.9".into(),
    };
    match greeting_answered_with(hello) {
        Msg::Disconnected { reason, .. } => assert!(
            reason.contains("protocol mismatch")
                && reason.contains(&format!("version {}", protocol::PROTOCOL_VERSION + 1)),
            "{reason}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn backoff_doubles_up_to_its_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
    let waits: Vec<u128> = (0..4).map(|_| b.step().as_millis()).collect();
    assert_eq!(waits, vec![250, 500, 1000, 1000]);
    b.reset();
    assert_eq!(b.step(), Duration::from_millis(250));
}
