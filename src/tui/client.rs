//! The dashboard's end of the daemon's socket, on background threads. A connection thread connects
//! and greets through `protocol::Client` (as `ctmask status` does: `hello`, the daemon's protocol
//! version checked), subscribes, reports `Connected`, writes the app's requests and, when the
//! connection ends, reports `Disconnected` and tries again with exponential backoff, forever,
//! until the client is dropped. A reader thread per connection forwards every decoded line; a line
//! that does not decode becomes `Msg::ProtocolError` and reading goes on.
//! Each connection has a generation number, and requests made for an older one are dropped, so a
//! reply never lands on a connection that did not see its request.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use super::app::Msg;
use crate::protocol::{
    self, Client as Connection, ClientError, Message, PROTOCOL_VERSION, ProtocolError, Request,
};

/// How long the greeting may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits between connection attempts: doubling from `min` up to `max`, reset on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// The wait before the next attempt; the one after it doubles.
    pub fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
    }
}

enum Control {
    Send(u64, Request),
    ReaderDone(u64),
    Stop,
}

/// Handle to the connection thread. Dropping it tells the thread to send what was asked before,
/// close the connection and stop (without waiting: a greeting may take up to its timeout).
pub struct Client {
    control: Sender<Control>,
}

impl Client {
    pub fn start(socket: &Path, events: Sender<Msg>) -> std::io::Result<Client> {
        Client::with_backoff(socket, events, Backoff::default())
    }

    pub fn with_backoff(socket: &Path, events: Sender<Msg>, backoff: Backoff) -> std::io::Result<Client> {
        let (control, control_rx) = mpsc::channel();
        let worker = Worker {
            socket: socket.to_path_buf(),
            events,
            control: control.clone(),
            control_rx,
            backoff,
        };
        std::thread::Builder::new()
            .name("ctmask-tui-client".into())
            .spawn(move || worker.run())?;
        Ok(Client { control })
    }

    /// Sends a request on connection `generation` (dropped if that connection is gone).
    pub fn send(&self, generation: u64, request: Request) {
        let _ = self.control.send(Control::Send(generation, request));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
    }
}

struct Worker {
    socket: PathBuf,
    events: Sender<Msg>,
    control: Sender<Control>,
    control_rx: Receiver<Control>,
    backoff: Backoff,
}

/// Why the connection thread ends: the client was dropped or the app is gone.
struct Stopped;

impl Worker {
    fn run(mut self) {
        let mut generation = 0u64;
        loop {
            let reason = match greet(&self.socket) {
                Ok((stream, reader, server)) => {
                    generation += 1;
                    self.backoff.reset();
                    match self.serve(generation, stream, reader, server) {
                        Ok(reason) => reason,
                        Err(Stopped) => return,
                    }
                }
                Err(reason) => reason,
            };
            let wait = self.backoff.step();
            let down = Msg::Disconnected {
                reason,
                retry_in_ms: wait.as_millis() as u64,
            };
            if self.events.send(down).is_err() || self.sleep(wait).is_err() {
                return;
            }
        }
    }

    /// One connection, until it ends; returns why it ended.
    fn serve(
        &mut self,
        generation: u64,
        stream: UnixStream,
        reader: BufReader<UnixStream>,
        server: String,
    ) -> Result<String, Stopped> {
        let (events, control) = (self.events.clone(), self.control.clone());
        let reader = std::thread::Builder::new()
            .name("ctmask-tui-reader".into())
            .spawn(move || {
                read_lines(reader, &events);
                let _ = control.send(Control::ReaderDone(generation));
            });
        if let Err(e) = reader {
            return Ok(format!("cannot start a reader thread: {e}"));
        }
        self.events
            .send(Msg::Connected { generation, server })
            .map_err(|_| Stopped)?;
        let mut writer = stream;
        let result = loop {
            match self.control_rx.recv() {
                Ok(Control::Send(g, request)) if g == generation => {
                    let written = protocol::encode(&request)
                        .map_err(|e| e.to_string())
                        .and_then(|line| writer.write_all(line.as_bytes()).map_err(|e| e.to_string()));
                    if let Err(e) = written {
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                        break Ok(format!("cannot send to the daemon: {e}"));
                    }
                }
                Ok(Control::Send(..)) => {} // meant for an older connection
                Ok(Control::ReaderDone(g)) if g == generation => {
                    break Ok("the daemon closed the connection".to_string());
                }
                Ok(Control::ReaderDone(_)) => {}
                Ok(Control::Stop) | Err(_) => break Err(Stopped),
            }
        };
        // Also ends the reader thread, blocked in a read.
        let _ = writer.shutdown(std::net::Shutdown::Both);
        result
    }

    /// Waits `wait`, dropping requests (no connection for them); `Err` when told to stop.
    fn sleep(&self, wait: Duration) -> Result<(), Stopped> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.control_rx.recv_timeout(left) {
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return Err(Stopped),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(()),
            }
        }
    }
}

/// Connects, exchanges `hello` (the protocol version checked) and subscribes; the error is a
/// sentence for the status line.
fn greet(socket: &Path) -> Result<(UnixStream, BufReader<UnixStream>, String), String> {
    let name = format!("ctmask-tui {}", env!("CARGO_PKG_VERSION"));
    let mut client = Connection::connect_as(socket, &name, Some(HELLO_TIMEOUT)).map_err(|e| sentence(&e))?;
    let server = format!("{} (protocol {PROTOCOL_VERSION})", client.server());
    client.send(&Request::Subscribe).map_err(|e| sentence(&e))?;
    let (stream, reader) = client.into_parts();
    let io = |e: std::io::Error| e.to_string();
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    Ok((stream, reader, server))
}

/// What went wrong in a greeting, for the status line.
fn sentence(e: &ClientError) -> String {
    match e {
        ClientError::Connect { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => "no socket (is the daemon running?)".to_string(),
            std::io::ErrorKind::ConnectionRefused => "connection refused (daemon not running)".into(),
            _ => source.to_string(),
        },
        ClientError::Io { source, .. } => source.to_string(),
        ClientError::Refused { code, message, .. } => format!("the daemon refused: {code}: {message}"),
        ClientError::Unexpected { what, .. } => format!("unexpected greeting: {what}"),
        ClientError::Closed { .. } => "the daemon closed the connection during the greeting".into(),
        ClientError::Protocol { source, .. } => format!("greeting failed: {source}"),
        ClientError::Version { daemon, ours, .. } => format!(
            "protocol mismatch: the daemon speaks version {daemon}, this dashboard {ours} (use matching builds)"
        ),
    }
}

/// Forwards messages until the stream ends; bad lines are reported and skipped.
fn read_lines(mut reader: BufReader<UnixStream>, events: &Sender<Msg>) {
    loop {
        let msg = match protocol::read_message::<Message, _>(&mut reader) {
            Ok(Some(m)) => Msg::Daemon(m),
            Ok(None) | Err(ProtocolError::Io(_)) => return,
            Err(e) => Msg::ProtocolError(e.to_string()),
        };
        if events.send(msg).is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
