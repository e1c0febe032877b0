//! The library's error type: one enum that keeps its sources and names the file, key or id
//! involved. The CLI wraps it with `anyhow` context at the edges.

use std::path::PathBuf;

/// Every error the ctmask library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// (The cause is part of the message, so it is not repeated as an error source.)
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("{path}: {reason}")]
    ModelFile { path: PathBuf, reason: String },
    #[error("bad input: {0}")]
    Input(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Other(String),
}

/// The library's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// A model file that cannot be used, with the reason.
    pub fn model_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::ModelFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
