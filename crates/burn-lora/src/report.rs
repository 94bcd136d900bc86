//! [`ParamReport`]: what is trainable, what is frozen, and what training will cost.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};
use serde::Serialize;

use crate::manage::is_factor;
use crate::path::{OnParam, PathStack, visit_params};

/// Bytes of optimizer state Adam keeps per trainable parameter: two f32 moments.
pub const ADAM_BYTES_PER_PARAM: usize = 2 * 4;

/// Parameter counts of one module (the parameters it owns directly).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamRow {
    /// The module's path, e.g. `blocks.0.attn.query`.
    pub module: String,
    /// Parameters that receive gradients.
    pub trainable: usize,
    /// Parameters that do not.
    pub frozen: usize,
}

/// Trainable and frozen parameter counts of a model, with what full fine-tuning of the same
/// base would train instead.
///
/// Counts follow Burn's gradient flags (`require_grad`), so they are read from the model as
/// it will train. [`Module::num_params`] counts everything, trainable or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamReport {
    /// Parameters that receive gradients.
    pub trainable: usize,
    /// Parameters that do not.
    pub frozen: usize,
    /// All parameters: `trainable + frozen`.
    pub total: usize,
    /// What full fine-tuning of the same model trains: every parameter except LoRA factors,
    /// which full fine-tuning does not have.
    pub full_finetune_trainable: usize,
    /// `full_finetune_trainable / trainable`: how many times fewer parameters learn.
    pub reduction: f64,
    /// Bytes of Adam state this training needs: 2 × 4 bytes × `trainable`.
    pub adam_state_bytes: usize,
    /// Bytes of Adam state full fine-tuning needs.
    pub full_finetune_adam_state_bytes: usize,
    /// Bytes the frozen parameters take at rest, by dtype (`F32`, `BF16`,
    /// `QFloat(Q8S)`, ...): for a quantized weight, the bytes its backend holds (values and
    /// scales, read from the tensor: Burn's CPU backends keep one i8 per 4-bit value);
    /// `uninitialized` for lazy parameters not created yet, counted as f32.
    pub frozen_bytes_by_dtype: BTreeMap<String, usize>,
    /// One row per module that owns parameters, in traversal order.
    pub rows: Vec<ParamRow>,
}

impl ParamReport {
    /// `100 · trainable / total`.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable as f64 / self.total.max(1) as f64
    }
}

/// Counts `module`'s trainable and frozen parameters, module by module.
///
/// Gradient flags only take effect on an autodiff device, so a model on a plain device is
/// read as it would train (`module.train()`), which is where its flags apply.
pub fn param_report<M: Module>(module: &M) -> ParamReport {
    let mut counter = Counter::default();
    visit_params(&module.clone().train(), &mut counter);
    let trainable: usize = counter.rows.values().map(|row| row.trainable).sum();
    let total = trainable + counter.rows.values().map(|row| row.frozen).sum::<usize>();
    let full_finetune_trainable = total - counter.lora_factors;
    ParamReport {
        trainable,
        frozen: total - trainable,
        total,
        full_finetune_trainable,
        reduction: full_finetune_trainable as f64 / trainable.max(1) as f64,
        adam_state_bytes: ADAM_BYTES_PER_PARAM * trainable,
        full_finetune_adam_state_bytes: ADAM_BYTES_PER_PARAM * full_finetune_trainable,
        frozen_bytes_by_dtype: counter.frozen_bytes.clone(),
        rows: counter
            .order
            .iter()
            .map(|key| counter.rows[key].clone())
            .collect(),
    }
}

#[derive(Default)]
struct Counter {
    rows: BTreeMap<String, ParamRow>,
    order: Vec<String>,
    lora_factors: usize,
    frozen_bytes: BTreeMap<String, usize>,
}

/// A frozen parameter's dtype name and bytes at rest.
fn bytes_at_rest<const D: usize>(param: &Param<Tensor<D>>, count: usize) -> (String, usize) {
    if !param.is_initialized() {
        return ("uninitialized".into(), 4 * count);
    }
    let value = param.val();
    match value.dtype() {
        DType::QFloat(scheme) => (
            format!("QFloat({:?})", scheme.value),
            value.into_data().as_bytes().len(),
        ),
        dtype => (format!("{dtype:?}"), dtype.size() * count),
    }
}

impl OnParam for Counter {
    fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
        let module = path.owning_module();
        let count = param.lazy_shape().num_elements();
        if is_factor(&path.split_last().1) {
            self.lora_factors += count;
        }
        if !self.rows.contains_key(&module) {
            self.order.push(module.clone());
        }
        let row = self.rows.entry(module.clone()).or_insert(ParamRow {
            module,
            trainable: 0,
            frozen: 0,
        });
        match param.is_require_grad() {
            true => row.trainable += count,
            false => {
                row.frozen += count;
                let (dtype, bytes) = bytes_at_rest(param, count);
                *self.frozen_bytes.entry(dtype).or_default() += bytes;
            }
        }
    }
}

impl fmt::Display for ParamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|row| row.module.len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            f,
            "{:<width$}  {:>12}  {:>12}",
            "module", "trainable", "frozen"
        )?;
        for row in &self.rows {
            let name = if row.module.is_empty() {
                "(root)"
            } else {
                &row.module
            };
            writeln!(
                f,
                "{name:<width$}  {:>12}  {:>12}",
                group(row.trainable),
                group(row.frozen)
            )?;
        }
        writeln!(
            f,
            "full fine-tuning would train {} params ({:.1}x more); Adam state {} vs {} bytes",
            group(self.full_finetune_trainable),
            self.reduction,
            group(self.adam_state_bytes),
            group(self.full_finetune_adam_state_bytes),
        )?;
        let at_rest: Vec<String> = self
            .frozen_bytes_by_dtype
            .iter()
            .map(|(dtype, bytes)| format!("{dtype} {}", group(*bytes)))
            .collect();
        writeln!(f, "frozen at rest, bytes: {}", at_rest.join(", "))?;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            group(self.trainable),
            group(self.total),
            self.trainable_percent()
        )
    }
}

/// `1234567` as `1,234,567`, as PEFT prints counts.
pub(crate) fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_inserts_thousands_separators() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
