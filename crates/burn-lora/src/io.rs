//! Writes that are never seen half done: a file or a directory is the old one, the whole
//! new one, or absent.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// The temporary name `path` is written under before it is renamed into place: the same
/// directory, so the rename is atomic.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
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
pub(crate) fn replace_dir(tmp: &Path, dir: &Path) -> Result<(), Error> {
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
pub(crate) fn fresh_temp_dir(dir: &Path) -> Result<PathBuf, Error> {
    let tmp = temp_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}
