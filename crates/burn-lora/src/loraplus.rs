//! LoRA+ (Hayou et al., 2024; PEFT's `create_loraplus_optimizer`): `B` learns
//! `loraplus_lr_ratio` times faster than `A`, through the parameter groups Burn's
//! optimizers and schedulers take ([`ModuleLrScheduler::with_group`]).
//!
//! The groups are PEFT's: `B` factors and every trainable 1-D parameter (biases, DoRA's
//! magnitudes, norms) take `lr · ratio`; the factors of adapters on embeddings take
//! `loraplus_lr_embedding` (PEFT's default 1e-6); everything else trainable, `A` among it,
//! takes `lr`.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
//! use burn::tensor::{Device, Tensor};
//! use burn_lora::{LoraConfig, apply_lora, loraplus_lr_scheduler};
//!
//! let device = Device::default().autodiff();
//! let layer: Linear = LinearConfig::new(8, 4).init(&device);
//! let layer = apply_lora(layer, &LoraConfig::new().with_rank(2).with_target_modules(vec!["all-linear".into()])).unwrap();
//! // A at lr 1e-3, B at 16 · 1e-3.
//! let mut lr = loraplus_lr_scheduler(&layer, 1e-3, 16.0, 1e-6).unwrap();
//! let mut optim: ModuleOptimizer = SgdConfig::new().init();
//! let loss = layer.forward(Tensor::<2>::ones([2, 8], &device)).sum();
//! let grads = GradientsParams::from_grads(loss.backward(), &layer);
//! let layer = optim.step(lr.step(), layer, grads);
//! ```

use burn::module::{Module, Param, ParamGroup, ParamId};
use burn::optim::LearningRate;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::tensor::Tensor;

use crate::Error;
use crate::apply::{LayerKind, adaptable};
use crate::path::{OnParam, PathStack, visit_params};

/// PEFT's default learning rate for the factors of adapters on embeddings.
pub const LORAPLUS_LR_EMBEDDING: f64 = 1e-6;

/// The parameter groups of LoRA+, as PEFT's `create_loraplus_optimizer` forms them from
/// the trainable parameters.
#[derive(Debug, Clone)]
pub struct LoraPlusGroups {
    /// `B` factors (not on embeddings) and every trainable 1-D parameter: `lr · ratio`.
    pub b: ParamGroup,
    /// The factors of adapters on embeddings: `loraplus_lr_embedding`.
    pub embedding: ParamGroup,
}

/// The LoRA+ groups of `model`'s trainable parameters (see [`LoraPlusGroups`]). Parameters
/// in neither group (`A` factors, 2-D modules to save) take the base learning rate.
pub fn loraplus_groups<M: Module>(model: &M) -> LoraPlusGroups {
    struct Collect {
        embeddings: std::collections::HashSet<String>,
        b: Vec<ParamId>,
        embedding: Vec<ParamId>,
    }
    impl OnParam for Collect {
        fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>) {
            if !param.is_require_grad() {
                return;
            }
            let owner = path.adapter_owner();
            let on_embedding = owner
                .as_ref()
                .is_some_and(|(layer, _)| self.embeddings.contains(layer));
            if on_embedding {
                self.embedding.push(param.id);
            } else if path.split_last().1 == "lora_b" || D == 1 {
                self.b.push(param.id);
            }
        }
    }
    let embeddings = adaptable(model)
        .into_iter()
        .filter(|site| site.kind == LayerKind::Embedding)
        .map(|site| site.path)
        .collect();
    let mut collect = Collect {
        embeddings,
        b: Vec::new(),
        embedding: Vec::new(),
    };
    // Gradient flags take effect on an autodiff device; `train` reads them as configured.
    visit_params(&model.clone().train(), &mut collect);
    LoraPlusGroups {
        b: ParamGroup::from_ids(collect.b),
        embedding: ParamGroup::from_ids(collect.embedding),
    }
}

/// A learning-rate scheduler for LoRA+ on `model`: `scheduler` for every parameter, the
/// same schedule times `loraplus_lr_ratio` for the `B` group, and the constant
/// `loraplus_lr_embedding` for adapters on embeddings (PEFT's `create_loraplus_optimizer`
/// with `lr` the scheduler's rate; PEFT's default embedding rate is
/// [`LORAPLUS_LR_EMBEDDING`]). Pass its `step()` to a Burn [`ModuleOptimizer`]'s `step`.
///
/// The groups are formed now, from the parameters that train now: call it after
/// [`apply_lora`](crate::apply_lora) (or [`set_lora_trainable`](crate::set_lora_trainable)).
///
/// # Errors
///
/// [`Error::InvalidLoraPlus`] when the ratio or the embedding rate is not finite and
/// positive.
///
/// [`ModuleOptimizer`]: burn::optim::ModuleOptimizer
pub fn loraplus_lr_scheduler<M: Module, S: LrScheduler + Clone + 'static>(
    model: &M,
    scheduler: S,
    loraplus_lr_ratio: f64,
    loraplus_lr_embedding: f64,
) -> Result<ModuleLrScheduler, Error> {
    for (name, value) in [
        ("loraplus_lr_ratio", loraplus_lr_ratio),
        ("loraplus_lr_embedding", loraplus_lr_embedding),
    ] {
        if !(value.is_finite() && value > 0.0) {
            return Err(Error::InvalidLoraPlus { name, value });
        }
    }
    let groups = loraplus_groups(model);
    let scaled = Scaled {
        inner: scheduler.clone(),
        factor: loraplus_lr_ratio,
    };
    Ok(ModuleLrScheduler::new(scheduler)
        .with_group(groups.b, scaled)
        .with_group(groups.embedding, loraplus_lr_embedding))
}

/// `inner`'s schedule times `factor`.
#[derive(Clone)]
struct Scaled<S> {
    inner: S,
    factor: f64,
}

impl<S: LrScheduler + Clone + 'static> LrScheduler for Scaled<S> {
    fn step(&mut self) -> LearningRate {
        self.inner.step() * self.factor
    }

    fn to_record(&self) -> LrSchedulerRecord {
        self.inner.to_record()
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        self.inner.load_record(record);
    }
}
