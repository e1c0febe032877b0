//! `StateLock`: flock on `<state>/ctmask.lock`, so a second daemon stays off the same state folder
//! (the holder's pid is written into the file and named in the error).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{QueueError, Result};

/// An exclusive lock on the state folder, held for the daemon's life.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub const FILE_NAME: &'static str = "ctmask.lock";

    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
        let io = |source| QueueError::Io {
            path: state_dir.into(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let path = state_dir.join(Self::FILE_NAME);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown pid".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(QueueError::Locked {
                    path: state_dir.into(),
                    holder,
                });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }
}
