//! Training checkpoints: everything a fine-tuning run needs to continue exactly where it
//! stopped, written atomically every N steps, the last two kept.
//!
//! A checkpoint is a directory `step-NNNNNNNN/` holding:
//! - `trainable.safetensors`: the values of every trainable parameter, keyed by parameter id;
//! - `optimizer.bpk`: Burn's AdamW state (both moments and the step count of every
//!   parameter), keyed by the same ids;
//! - `state.json`: the step, the history so far (losses, step times, epoch accuracies), the
//!   running counts of the current epoch, the best epoch so far, and the id of every
//!   parameter in visiting order;
//! - `best.safetensors`, when the best epoch so far is kept (`--keep best`) and is not the
//!   current weights.
//!
//! The random state is not stored because it is not state: the data order of epoch `e` and
//! the dropout masks of step `s` are drawn from generators seeded from the run's seed and `e`
//! or `s` (see [`epoch_seed`] and [`step_seed`]), so a resumed run draws what the
//! uninterrupted run drew.
//!
//! Parameter ids are random per process. A resumed model is built as the first one was
//! (same code, same config), so its parameters are visited in the same order, and each gets
//! back its saved id: the optimizer state then finds its parameters.
//!
//! Size: about 380 lines of code. A checkpoint's format, its writer, its reader and the
//! seeds that make resuming exact are one concept; split, one format's reader and writer
//! would live apart.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::train::History;

/// Where and how often a run writes checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// The directory of this run's (or mode's) checkpoints.
    pub dir: PathBuf,
    /// Steps between checkpoints (at least 1).
    pub every: usize,
}

/// Which epoch's weights a run keeps at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The epoch with the best validation accuracy (the earliest of equal ones).
    #[default]
    Best,
    /// The last epoch.
    Last,
}

impl Keep {
    /// Parses `--keep`: `best` or `last`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for another value.
    pub fn parse(value: &str) -> Result<Self, Error> {
        match value {
            "best" => Ok(Keep::Best),
            "last" => Ok(Keep::Last),
            other => Err(Error::Usage(format!(
                "--keep must be best or last, got `{other}`"
            ))),
        }
    }
}

/// The best epoch so far: its number (from 1) and validation accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// The epoch, counted from 1.
    pub epoch: usize,
    /// Its validation accuracy.
    pub val_accuracy: f64,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Correct predictions so far in the current epoch.
    pub epoch_correct: usize,
    /// Examples seen so far in the current epoch.
    pub epoch_seen: usize,
    /// The history up to `step`.
    pub history: History,
    /// The best epoch so far.
    pub best: Option<BestEpoch>,
    /// Every float parameter's id, in visiting order.
    pub param_ids: Vec<u64>,
}

/// A loaded checkpoint.
pub(crate) struct Restored<M> {
    pub model: M,
    pub optim: ModuleOptimizer,
    pub state: TrainState,
    pub best_values: Option<HashMap<u64, TensorData>>,
}

/// The seed of the data order of `epoch`.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    mix(seed ^ 0x6570_6f63_6800_0000 ^ epoch as u64)
}

/// The seed the device is given before optimizer step `step` (counted from 0): every
/// dropout mask of the step comes from it.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    mix(seed ^ 0x7374_6570_0000_0000 ^ step as u64)
}

/// SplitMix64's finalizer: nearby inputs give unrelated outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every float parameter's id, in visiting order.
pub(crate) fn param_ids<M: Module>(model: &M) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id.val());
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// The values of the trainable parameters, by id.
pub(crate) fn trainable_values<M: Module>(model: &M) -> HashMap<u64, TensorData> {
    struct Values(HashMap<u64, TensorData>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            if value.is_require_grad() {
                self.0
                    .insert(param.id.val(), value.into_data().convert::<f32>());
            }
        }
    }
    let mut values = Values(HashMap::new());
    model.visit(&mut values);
    values.0
}

/// Gives the parameters `ids` (in visiting order, when given) and replaces the value of
/// every parameter whose id is in `values`, keeping whether it trains.
pub(crate) fn restore_values<M: Module>(
    model: M,
    ids: Option<&[u64]>,
    values: &HashMap<u64, TensorData>,
    path: &Path,
) -> Result<M, Error> {
    struct Restore<'a> {
        ids: Option<&'a [u64]>,
        values: &'a HashMap<u64, TensorData>,
        next: usize,
        restored: usize,
        error: Option<String>,
    }
    impl ModuleMapper for Restore<'_> {
        fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if let Some(ids) = self.ids {
                match ids.get(self.next) {
                    Some(&id) => param.id = ParamId::from(id),
                    None => self.error = Some("the model has more parameters".into()),
                }
            }
            self.next += 1;
            let Some(data) = self.values.get(&param.id.val()) else {
                return param;
            };
            let dims = param.val().dims();
            if data.shape().as_slice() != dims.as_slice() {
                self.error = Some(format!(
                    "parameter {} has shape {:?} in the checkpoint but {dims:?} in the model",
                    param.id,
                    data.shape().as_slice()
                ));
                return param;
            }
            self.restored += 1;
            param.map(|t| {
                let trains = t.is_require_grad();
                let value = Tensor::from_data(data.clone(), &t.device());
                match trains {
                    true => value.require_grad(),
                    false => value,
                }
            })
        }
    }
    let mut restore = Restore {
        ids,
        values,
        next: 0,
        restored: 0,
        error: None,
    };
    let model = model.map(&mut restore);
    let mismatch = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("{message}: it was written for another model or configuration"),
    };
    if let Some(message) = restore.error {
        return Err(mismatch(message));
    }
    if let Some(ids) = ids
        && ids.len() != restore.next
    {
        return Err(mismatch(format!(
            "{} parameters in the checkpoint, {} in the model",
            ids.len(),
            restore.next
        )));
    }
    if restore.restored != values.len() {
        return Err(mismatch(format!(
            "{} of its {} tensors match a parameter",
            restore.restored,
            values.len()
        )));
    }
    Ok(model)
}

fn write_values(path: &Path, values: &HashMap<u64, TensorData>) -> Result<(), Error> {
    let mut keys: Vec<&u64> = values.keys().collect();
    keys.sort();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = keys
        .into_iter()
        .map(|id| {
            let data = &values[id];
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                data.shape().to_vec(),
                data.as_bytes(),
            )
            .expect("a tensor's bytes match its shape");
            (id.to_string(), view)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn read_values(path: &Path) -> Result<HashMap<u64, TensorData>, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let fail = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
    let mut values = HashMap::new();
    for (name, view) in file.tensors() {
        let id: u64 = name
            .parse()
            .map_err(|_| fail(format!("tensor `{name}` is not named by a parameter id")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(fail(format!("tensor `{name}` is not f32")));
        }
        let floats: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        values.insert(id, TensorData::new(floats, view.shape().to_vec()));
    }
    Ok(values)
}

/// Writes checkpoint `step` of `model` into `options.dir` atomically (a temporary
/// directory renamed into place), then deletes all but the last two.
///
/// # Errors
///
/// A failed write.
pub(crate) fn save<M: Module>(
    options: &CheckpointOptions,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    best_values: Option<&HashMap<u64, TensorData>>,
) -> Result<PathBuf, Error> {
    fs::create_dir_all(&options.dir).map_err(|e| Error::io(&options.dir, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = options.dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_values(&tmp.join("trainable.safetensors"), &trainable_values(model))?;
    let optim_path = tmp.join("optimizer.bpk");
    optim.save(&optim_path).map_err(|e| Error::Checkpoint {
        path: optim_path.clone(),
        message: format!("{e:?}"),
    })?;
    if let Some(best) = best_values {
        write_values(&tmp.join("best.safetensors"), best)?;
    }
    let json = serde_json::to_vec(state).expect("the state serializes");
    fs::write(tmp.join("state.json"), json).map_err(|e| Error::io(&tmp, e))?;
    let target = options.dir.join(&name);
    let _ = fs::remove_dir_all(&target);
    fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    let mut all = checkpoints(&options.dir)?;
    all.pop();
    all.pop();
    for old in all {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(target)
}

/// The complete checkpoints in `dir`, oldest first (temporary directories of an
/// interrupted write are not checkpoints).
pub(crate) fn checkpoints(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("step-") && path.join("state.json").is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Loads checkpoint `dir` onto `model` (built and prepared as the run's was) and
/// `optim`.
///
/// # Errors
///
/// A missing or corrupt file, or a checkpoint of another model, naming the file.
pub(crate) fn load<M: Module>(
    dir: &Path,
    model: M,
    optim: ModuleOptimizer,
) -> Result<Restored<M>, Error> {
    let state_path = dir.join("state.json");
    let bytes = fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    let values_path = dir.join("trainable.safetensors");
    let values = read_values(&values_path)?;
    let model = restore_values(model, Some(&state.param_ids), &values, &values_path)?;
    let optim_path = dir.join("optimizer.bpk");
    let optim = optim.load(&optim_path).map_err(|e| Error::Checkpoint {
        path: optim_path.clone(),
        message: format!("{e:?}"),
    })?;
    let best_path = dir.join("best.safetensors");
    let best_values = match best_path.is_file() {
        true => Some(read_values(&best_path)?),
        false => None,
    };
    Ok(Restored {
        model,
        optim,
        state,
        best_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_step_and_epoch_and_are_stable() {
        assert_ne!(step_seed(1, 0), step_seed(1, 1));
        assert_ne!(step_seed(1, 0), step_seed(2, 0));
        assert_ne!(step_seed(1, 3), epoch_seed(1, 3));
        assert_eq!(step_seed(42, 7), step_seed(42, 7));
        assert_eq!(Keep::parse("last").unwrap(), Keep::Last);
        assert!(Keep::parse("first").is_err());
    }
}
