//! Atomic writes for the demonstration's own files (tokenizers, checkpoints, metrics),
//! through the library's: a file is the old one or the whole new one, never half written.

use std::path::Path;

use crate::Error;

/// Writes `bytes` to `path` through a temporary file and a rename (see
/// [`burn_lora::io::write_atomic`]).
///
/// # Errors
///
/// [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    burn_lora::io::write_atomic(path, bytes).map_err(|e| match e {
        burn_lora::Error::Io { path, source } => Error::Io { path, source },
        other => Error::Lora(other),
    })
}

pub use burn_lora::io::temp_path;
