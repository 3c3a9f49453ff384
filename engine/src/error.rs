//! The engine's error type: every variant renders as one line a person can act on, naming the
//! file and the problem where there is a file.

use std::path::{Path, PathBuf};

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file (model, profile, output) is malformed or unsupported: `path: problem`.
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },

    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A knob, request field or command-line value is not acceptable.
    #[error("{0}")]
    Invalid(String),

    /// The run was cancelled by the user between steps.
    #[error("cancelled")]
    Cancelled,

    /// A device ran out of memory; `hint` names the knob that would help.
    #[error("out of memory on {device}: {hint}")]
    OutOfMemory { device: String, hint: String },

    /// An error from the tensor library.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A malformed-file error: `path: problem`.
    pub fn file(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), problem: problem.into() }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// An invalid value.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
