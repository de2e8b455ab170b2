//! The library's error type. Every variant names the file, node or field at fault, and maps to one
//! of the exit codes of the command line (docs/specification.md §7).

use std::path::{Path, PathBuf};

/// Errors of the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value or a command-line argument is invalid.
    #[error("configuration: {0}")]
    Config(String),

    /// A model file cannot be read as ONNX (truncated, malformed, hostile).
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },

    /// A well-formed model that this tool cannot handle.
    #[error("unsupported model: node '{node}' ({op_type}): {message}")]
    Unsupported { node: String, op_type: String, message: String },

    /// A well-formed model whose overall shape this tool cannot handle (its inputs, its opset).
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),

    /// A model-level inconsistency that is not tied to a single node (missing input, cycle, ...).
    #[error("invalid model: {0}")]
    InvalidGraph(String),

    /// A data set or data file that cannot be used.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// An operating-system error on a named file.
    /// (The OS error is part of the message and deliberately not a `source`, so that a chain of
    /// contexts prints it once.)
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },

    /// The inference backend failed or is not available.
    #[error("backend {backend}: {message}")]
    Backend { backend: &'static str, message: String },

    /// A backend refused the model or failed to run it: a model the backend cannot execute (a
    /// hostile or malformed graph, an operator it lacks), reported as an unsupported model.
    #[error("backend {backend} cannot run the model: {message}")]
    ModelRejected { backend: &'static str, message: String },

    /// A command run under `--isolate` crashed, ran out of memory or out of time.
    #[error("isolated run: {0}")]
    Isolated(String),

    /// Training cannot go on (a non-finite loss); the message says where the last good checkpoint is.
    #[error("training: {0}")]
    Training(String),

    /// A broken invariant of the tool itself.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Exit code of the command line for this error: 2 usage or configuration, 3 unsupported or
    /// unreadable model, 4 data, 1 internal (backend failures included).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            Error::Model { .. } | Error::Unsupported { .. } | Error::UnsupportedModel(_) | Error::InvalidGraph(_) | Error::ModelRejected { .. } | Error::Isolated(_) => 3,
            Error::Data { .. } | Error::Io { .. } => 4,
            Error::Backend { .. } | Error::Training(_) | Error::Internal(_) => 1,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), cause: source }
    }

    /// A data error on `path`.
    pub fn data(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Data { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A model error on `path`.
    pub fn model(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Model { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}
