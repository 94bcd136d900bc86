//! The demonstration's file helpers, in one place for every module: atomic writes (a file
//! is the old one or the whole new one, never half written), JSON, and module weights as
//! burnpack.

use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Writes `bytes` to `path` through a temporary file ([`temp_path`]) and a rename, so
/// `path` is the old file or the whole new one, never a half-written one (the same
/// protocol as `burn-lora` writes adapter files with).
///
/// # Errors
///
/// [`Error::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    pause_before_rename();
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The test hook that lets `tests/cli.rs` prove its kills land mid-write: with
/// `BURN_LORA_DEMO_WRITE_PAUSE_MS` set, [`write_atomic`] and [`save_module`] wait that many
/// milliseconds between writing the temporary file and renaming it, so a test that sees
/// the temporary file can kill the process while the write is still open. Unset (always,
/// outside that test), it does nothing.
fn pause_before_rename() {
    if let Some(ms) = std::env::var("BURN_LORA_DEMO_WRITE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The temporary name `path` is written under before it is renamed into place: the same
/// directory, so the rename is atomic.
pub fn temp_path(path: &Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::path::PathBuf::from(tmp)
}

/// Pretty JSON of plain data.
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain data serializes")
}

/// Reads and parses a JSON file.
///
/// # Errors
///
/// [`Error::Io`] or [`Error::Json`], naming the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes any module's weights as burnpack, through a temporary file and a rename.
///
/// # Errors
///
/// [`Error::Checkpoint`] or [`Error::Io`], naming the file.
pub fn save_module<M: Module>(module: M, path: &Path) -> Result<(), Error> {
    let tmp = temp_path(path);
    module.save_file(&tmp).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    pause_before_rename();
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Loads weights saved by [`save_module`] into `module`, checking every shape: a tensor
/// the module lacks, or one the file lacks, is an error naming it.
///
/// Checkpoints written before the models used `burn_lora::nn::Linear` (this crate's 0.1,
/// such as the shipped `fixtures/base/model.bpk`) hold each linear under an enum variant
/// (`blocks.0.attn.query.Base.weight`); the variant is dropped from the key on loading.
///
/// # Errors
///
/// [`Error::Checkpoint`] naming the file and the tensor.
pub fn load_module<M: Module>(mut module: M, path: &Path) -> Result<M, Error> {
    let checkpoint = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(checkpoint("no such file".into()));
    }
    let mut store = BurnpackStore::from_file(path)
        .with_remap_pattern(r"\.Base\.", ".")
        .validate(true)
        .allow_partial(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| checkpoint(e.to_string()))?;
    if let Some(error) = result.errors.first() {
        return Err(checkpoint(error.to_string()));
    }
    if let Some((key, _)) = result.missing.first() {
        let n = result.missing.len();
        return Err(checkpoint(format!(
            "missing tensor `{key}` ({n} missing in all)"
        )));
    }
    if let Some(key) = result.unused.first() {
        return Err(checkpoint(format!(
            "tensor `{key}` matches nothing in the model"
        )));
    }
    Ok(module)
}
