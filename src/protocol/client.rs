//! The one client of the daemon's socket: `ctmask status`, `ctmask control`, the demo and the
//! dashboard's connection thread all connect through [`Client::connect`], which sends `hello`
//! and checks the protocol version in the daemon's answer (a daemon speaking another version is
//! refused with both versions named, before any request is sent).

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ErrorCode, Message, PROTOCOL_VERSION, ProtocolError, Request, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection (no socket, nobody listening, no permission).
    #[error("socket {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("daemon at {path}: {source}")]
    Protocol { path: PathBuf, source: ProtocolError },
    #[error("daemon at {path} answered unexpectedly: connection closed")]
    Closed { path: PathBuf },
    #[error("daemon at {path} answered unexpectedly: {code}: {message}")]
    Refused {
        path: PathBuf,
        code: ErrorCode,
        message: String,
    },
    #[error("daemon at {path} answered unexpectedly: {what}")]
    Unexpected { path: PathBuf, what: String },
    #[error(
        "daemon at {path} speaks protocol version {daemon}, this ctmask speaks {ours}: use the ctmask build that matches the daemon"
    )]
    Version { path: PathBuf, daemon: u32, ours: u32 },
}

/// A connection to the daemon's socket, greeted and of the same protocol version.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
    server: String,
}

impl Client {
    /// Connects as `ctmask` and exchanges `hello`; `timeout` bounds every read and write.
    pub fn connect(socket: &Path, timeout: Option<Duration>) -> Result<Client, ClientError> {
        Client::connect_as(socket, "ctmask", timeout)
    }

    /// [`Client::connect`] under another client name (the dashboard's).
    pub fn connect_as(socket: &Path, name: &str, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.into(),
            source,
        })?;
        let io = |source| ClientError::Io {
            path: socket.into(),
            source,
        };
        stream.set_read_timeout(timeout).map_err(io)?;
        stream.set_write_timeout(timeout).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            path: socket.into(),
            server: String::new(),
        };
        client.send(&Request::Hello {
            version: PROTOCOL_VERSION,
            client: name.into(),
        })?;
        match client.next_message()? {
            Message::Hello { version, .. } if version != PROTOCOL_VERSION => Err(ClientError::Version {
                path: client.path,
                daemon: version,
                ours: PROTOCOL_VERSION,
            }),
            Message::Hello { server, .. } => {
                client.server = server;
                Ok(client)
            }
            other => Err(client.unexpected(other)),
        }
    }

    /// The daemon's name and version from its greeting, e.g. `ctmask 0.1.0`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let line = super::encode(request).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// The next message (events included); an error at the end of the stream.
    pub fn next_message(&mut self) -> Result<Message, ClientError> {
        match super::read_message::<Message, _>(&mut self.reader) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(ClientError::Closed {
                path: self.path.clone(),
            }),
            Err(source) => Err(ClientError::Protocol {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Sends a request and returns the first reply that is not an event.
    pub fn request(&mut self, request: &Request) -> Result<Message, ClientError> {
        self.send(request)?;
        loop {
            match self.next_message()? {
                Message::Event(_) | Message::Unknown => continue,
                m @ Message::Error { .. } => return Err(self.unexpected(m)),
                m => return Ok(m),
            }
        }
    }

    /// The connection's two ends (writer, reader), for a caller that reads on another thread.
    pub fn into_parts(self) -> (UnixStream, BufReader<UnixStream>) {
        (self.writer, self.reader)
    }

    fn unexpected(&self, m: Message) -> ClientError {
        match m {
            Message::Error { code, message } => ClientError::Refused {
                path: self.path.clone(),
                code,
                message,
            },
            other => ClientError::Unexpected {
                path: self.path.clone(),
                what: format!("{other:?}").chars().take(80).collect(),
            },
        }
    }
}

/// The daemon's status snapshot (`ctmask status`).
pub fn fetch_snapshot(socket: &Path) -> Result<Snapshot, ClientError> {
    let mut client = Client::connect(socket, Some(Duration::from_secs(10)))?;
    match client.request(&Request::Status)? {
        Message::Snapshot(s) => Ok(*s),
        other => Err(client.unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A fake daemon that answers one hello with `version`.
    fn daemon_speaking(version: u32) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("ctmask.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut hello = String::new();
            BufReader::new(&stream).read_line(&mut hello).expect("hello");
            let answer = Message::Hello {
                version,
                server: "ctmask 9.9.9".into(),
            };
            (&stream)
                .write_all(super::super::encode(&answer).expect("encode").as_bytes())
                .expect("write");
            hello
        });
        (dir, socket, server)
    }

    #[test]
    fn a_daemon_of_another_protocol_version_is_refused_with_both_versions() {
        let (_dir, socket, server) = daemon_speaking(PROTOCOL_VERSION + 1);
        let err = Client::connect(&socket, Some(Duration::from_secs(5)))
            .err()
            .expect("a version mismatch");
        assert!(
            matches!(err, ClientError::Version { daemon, ours, .. } if daemon == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1))
                && text.contains("this ctmask speaks"),
            "{text}"
        );
        let hello: Request = super::super::decode(&server.join().expect("server")).expect("hello");
        assert!(matches!(
            hello,
            Request::Hello {
                version: PROTOCOL_VERSION,
                ..
            }
        ));
    }

    #[test]
    fn a_daemon_of_the_same_version_is_greeted() {
        let (_dir, socket, server) = daemon_speaking(PROTOCOL_VERSION);
        let client = Client::connect_as(&socket, "test", Some(Duration::from_secs(5))).expect("greeted");
        assert_eq!(client.server(), "ctmask 9.9.9");
        server.join().expect("server");
    }
}
