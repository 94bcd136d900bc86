//! Writes that are never seen half done: a file or a directory is the old one, the whole
//! new one, or absent.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so `path` is either the old file or the whole new one, never a half-written one.
///
/// # Errors
///
/// [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The temporary name `path` is written under before it is renamed into place: the same
/// directory, so the rename is atomic.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Moves the finished directory `tmp` to `dir`. A directory cannot be renamed over a
/// non-empty one, so an existing `dir` is first moved aside and removed afterwards: at every
/// moment `dir` is the whole old directory, the whole new one, or absent.
///
/// # Errors
///
/// [`Error::Io`] naming the directory.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        return fs::rename(tmp, dir).map_err(|e| Error::io(dir, e));
    }
    let mut old = dir.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// A fresh, empty temporary directory beside `dir`, for [`replace_dir`].
///
/// # Errors
///
/// [`Error::Io`] naming the directory.
pub fn fresh_temp_dir(dir: &Path) -> Result<PathBuf, Error> {
    let tmp = temp_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}
