//! Framing: one JSON object per line, with a line limit on reading.

use std::io::{BufRead, Read};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MAX_LINE_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("malformed message: {source}")]
    Decode { source: serde_json::Error },
    #[error("message longer than the line limit")]
    TooLong,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// One message as a line (JSON + `\n`).
pub fn encode<T: Serialize>(message: &T) -> Result<String, ProtocolError> {
    let mut line = serde_json::to_string(message).map_err(|source| ProtocolError::Encode {
        what: std::any::type_name::<T>(),
        source,
    })?;
    line.push('\n');
    Ok(line)
}

/// Decodes one line (with or without its `\n`).
pub fn decode<T: DeserializeOwned>(line: &str) -> Result<T, ProtocolError> {
    serde_json::from_str(line.trim_end()).map_err(|source| ProtocolError::Decode { source })
}

/// Reads the next non-empty line and decodes it; `Ok(None)` at the end of the stream.
pub fn read_message<T: DeserializeOwned, R: BufRead>(reader: &mut R) -> Result<Option<T>, ProtocolError> {
    read_message_limited(reader, MAX_LINE_BYTES)
}

/// [`read_message`] with a smaller line limit (the daemon reads requests, which are short).
pub fn read_message_limited<T: DeserializeOwned, R: BufRead>(
    reader: &mut R,
    max: usize,
) -> Result<Option<T>, ProtocolError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.by_ref().take(max as u64 + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() > max {
            return Err(ProtocolError::TooLong);
        }
        let line = String::from_utf8_lossy(&buf);
        if !line.trim().is_empty() {
            return decode(&line).map(Some);
        }
    }
}
