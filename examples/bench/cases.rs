//! Whole-model step timings: full fine-tuning, LoRA, Burn's built-in `apply_lora`, and
//! inference, on one classification batch. `main.rs` prints them as a table. This module
//! belongs to the bench example: nothing in the library depends on it.

use std::time::Instant;

use burn::module::{Lora, Module, ParamGroup};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::AdamWConfig;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use burn::module::{
    Devices, ModuleMapper, ModuleVisitor, Param, Reparameterization, Reparameterizer,
};
use burn_lora::{Adapter, LoraConfig, apply_lora, merge_lora, param_report, set_lora_trainable};
use burn_lora_demo::Error;
use burn_lora_demo::train::Classifier;

use burn_lora_demo::model::{GptClassifier, GptConfig};
use burn_lora_demo::train::parallel::{PartOutput, on_threads, parallel_grads};

/// What one case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Case {
    /// Training step, every parameter trainable.
    Full,
    /// Training step, our adapters on query and value, computed factored by
    /// `burn_lora::nn::Linear`.
    LoraQv,
    /// Training step, the same adapters computed densely, as a stock `burn::nn::Linear`
    /// computes them (`x·(W + s·A·B)`; see [`DenseAdapter`]).
    LoraQvDense,
    /// Training step, our adapters on every linear of the blocks.
    LoraAll,
    /// Training step, Burn's `Module::apply_lora` on the query and value weights.
    BurnApplyLoraQv,
    /// Training step that trains only the query and value biases (and the head): the
    /// backward pass reaches every block's query and value, as any q,v adapter's must, but
    /// computes no weight gradient and has no adapter branch. Its time is the floor for a
    /// q,v adapter on this model and backend. Not in [`Case::ALL`]; `bench --floor` adds it.
    FloorQv,
    /// Forward pass of the base model.
    InferBase,
    /// Forward pass with LoRA adapters on query and value, unmerged.
    InferLoraUnmerged,
    /// Forward pass with the same adapters merged into the weights.
    InferLoraMerged,
}

impl Case {
    /// Every case, in table order.
    pub const ALL: [Case; 8] = [
        Case::Full,
        Case::LoraQv,
        Case::LoraQvDense,
        Case::LoraAll,
        Case::BurnApplyLoraQv,
        Case::InferBase,
        Case::InferLoraUnmerged,
        Case::InferLoraMerged,
    ];

    /// The case's name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Case::Full => "full",
            Case::LoraQv => "lora_qv",
            Case::LoraQvDense => "lora_qv_dense",
            Case::LoraAll => "lora_all_linear",
            Case::BurnApplyLoraQv => "burn_apply_lora_qv",
            Case::FloorQv => "floor_qv",
            Case::InferBase => "infer_base",
            Case::InferLoraUnmerged => "infer_lora_unmerged",
            Case::InferLoraMerged => "infer_lora_merged",
        }
    }

    /// The case called `name`.
    pub fn from_name(name: &str) -> Option<Case> {
        Case::ALL
            .into_iter()
            .chain([Case::FloorQv])
            .find(|c| c.name() == name)
    }
}

/// The model and batch sizes.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Vocabulary.
    pub vocab: usize,
    /// Width.
    pub d_model: usize,
    /// Blocks.
    pub layers: usize,
    /// Heads.
    pub heads: usize,
    /// MLP width.
    pub d_ff: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// LoRA rank (alpha = 2 · rank).
    pub rank: usize,
    /// Training threads, each on its part of the batch, gradients summed (see
    /// [`FinetuneOptions::replicas`](crate::train::FinetuneOptions::replicas)).
    pub replicas: usize,
}

/// One case's timings.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case.
    pub case: &'static str,
    /// Median seconds per step.
    pub median_s: f64,
    /// Fastest step.
    pub min_s: f64,
    /// Slowest step.
    pub max_s: f64,
    /// Trainable parameters (0 for inference).
    pub trainable: usize,
    /// Bytes of the saved PEFT adapter directory, for the LoRA training cases.
    pub adapter_bytes: Option<u64>,
}

/// Times `steps` steps of `case` after `warmup` untimed ones.
///
/// # Errors
///
/// Invalid sizes.
pub fn run_case(
    case: Case,
    sizes: &Sizes,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<CaseResult, Error> {
    let config = GptConfig::new(sizes.vocab)
        .with_d_model(sizes.d_model)
        .with_n_layers(sizes.layers)
        .with_n_heads(sizes.heads)
        .with_d_ff(sizes.d_ff)
        .with_max_seq_len(sizes.seq)
        .with_dropout(0.0);
    config.validate().map_err(Error::Usage)?;
    let train = !matches!(
        case,
        Case::InferBase | Case::InferLoraUnmerged | Case::InferLoraMerged
    );
    let device = if train {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    device.seed(0);
    let model = GptClassifier::new(config.init(&device), 2, &device);
    let excludes = model.lora_excludes();
    let lora = |targets: &[&str]| {
        LoraConfig::new()
            .with_exclude_modules(excludes.clone())
            .with_rank(sizes.rank)
            .with_alpha(2.0 * sizes.rank as f64)
            .with_target_modules(targets.iter().map(|t| t.to_string()).collect())
            .with_modules_to_save(vec!["head".into()])
    };
    let group = |re: &str| ParamGroup::from_regex(re).map_err(|e| Error::Usage(format!("{e:?}")));
    let model = match case {
        Case::Full | Case::InferBase => model,
        Case::FloorQv => model
            .no_grad()
            .set_require_grad_group(group(r"\.(query|value)\.bias$|^head\.")?, true),
        Case::LoraQv | Case::InferLoraUnmerged => apply_lora(model, &lora(&["query", "value"]))?,
        Case::LoraQvDense => {
            let group = group(r"\.(query|value)\.weight$")?;
            let config = lora(&["query", "value"]);
            let model = model.apply_reparameterization(DenseAdapters { group, config });
            set_lora_trainable(model, &["head".to_string()])?
        }
        Case::InferLoraMerged => merge_lora(apply_lora(model, &lora(&["query", "value"]))?)?,
        Case::LoraAll => apply_lora(model, &lora(&["all-linear"]))?,
        Case::BurnApplyLoraQv => model
            .apply_lora(
                Lora::new(sizes.rank, 2.0 * sizes.rank as f64)
                    .set_param_group(group(r"\.(query|value)\.weight$")?),
            )
            .set_require_grad_group(group(r"^head\.")?, true),
    };
    let trainable = if train {
        param_report(&model).trainable
    } else {
        0
    };
    let tokens = Tensor::<2, Int>::random(
        [sizes.batch, sizes.seq],
        Distribution::Uniform(3.0, sizes.vocab as f64),
        &device,
    );
    let padding = Tensor::<2, Bool>::from_data(
        TensorData::new(
            vec![false; sizes.batch * sizes.seq],
            [sizes.batch, sizes.seq],
        ),
        &device,
    );
    let pool = Tensor::<2>::ones([sizes.batch, sizes.seq], &device).div_scalar(sizes.seq as f64);
    let labels = Tensor::<1, Int>::random([sizes.batch], Distribution::Uniform(0.0, 2.0), &device);
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let mut optim = AdamWConfig::new().init();
    let mut model = model;
    // The batch's rows, cut into one part per replica.
    let rows = sizes.batch.div_ceil(sizes.replicas.max(1));
    let parts: Vec<_> = (0..sizes.batch)
        .step_by(rows)
        .map(|start| {
            let range = start..(start + rows).min(sizes.batch);
            (
                tokens.clone().slice(range.clone()),
                padding.clone().slice(range.clone()),
                pool.clone().slice(range.clone()),
                labels.clone().slice(range),
            )
        })
        .collect();
    let share: Vec<f64> = parts
        .iter()
        .map(|part| part.3.dims()[0] as f64 / sizes.batch as f64)
        .collect();
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let start = Instant::now();
        if train {
            let devices = vec![device.clone(); parts.len()];
            let (grads, _, _) = parallel_grads(&model, &devices, |replica, p, _| {
                let (tokens, padding, pool, labels) = parts[p].clone();
                let logits = replica.forward(tokens, padding, pool);
                PartOutput {
                    loss: loss_fn.forward(logits, labels).mul_scalar(share[p]),
                    extra: (),
                }
            });
            model = optim.step(1e-4, model, grads);
            let _ = model.head.weight.val().into_data(); // wait for the update to finish
        } else {
            // As `train::predict` runs a batch: its rows cut into one part per core, each
            // part's forward pass on a thread of its own.
            let models = vec![model.clone(); parts.len()];
            on_threads(models, |p, model| {
                let (tokens, padding, pool, _) = parts[p].clone();
                model.forward(tokens, padding, pool).into_data()
            });
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let adapter_bytes = match case {
        Case::LoraQv | Case::LoraAll => {
            let dir = std::env::temp_dir().join(format!("burn-lora-bench-{}", std::process::id()));
            burn_lora::save_adapter(&model, &dir)?;
            let bytes = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            let _ = std::fs::remove_dir_all(&dir);
            Some(bytes)
        }
        _ => None,
    };
    Ok(CaseResult {
        case: case.name(),
        median_s: crate::median(&times),
        min_s: times[0],
        max_s: times[times.len() - 1],
        trainable,
        adapter_bytes,
    })
}

/// Our [`Adapter`] behind a reparameterization of another type: `burn_lora::nn::Linear`
/// finds no `Adapter` on the weight and calls `weight.val()`, which is `W + s·A·B`, exactly
/// what a stock `burn::nn::Linear` computes with an adapter attached. The bench's dense case.
#[derive(Clone, Debug)]
pub struct DenseAdapter(Adapter);

impl Reparameterization for DenseAdapter {
    const NAME: &'static str = "lora_dense";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        self.0.apply(base)
    }
}

impl Module for DenseAdapter {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.0.collect_devices(devices)
    }
    fn fork(self, device: &Device) -> Self {
        Self(self.0.fork(device))
    }
    fn to_device(self, device: &Device) -> Self {
        Self(self.0.to_device(device))
    }
    fn train(self) -> Self {
        Self(self.0.train())
    }
    fn valid(&self) -> Self {
        Self(self.0.valid())
    }
    fn materialize(self) -> Self {
        Self(self.0.materialize())
    }
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.0.visit(visitor)
    }
    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        Self(self.0.map(mapper))
    }
}

/// Attaches a fresh [`DenseAdapter`] to every weight `group` names.
struct DenseAdapters {
    group: ParamGroup,
    config: LoraConfig,
}

impl Reparameterizer for DenseAdapters {
    type Reparam = DenseAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<DenseAdapter>) {
        if D != 2 || !self.group.matches(&param.id, Some(path)) {
            return (param, None);
        }
        let base = param.base();
        let dims = base.shape().dims::<2>();
        let adapter = Adapter::new(&base.reshape(dims), &self.config);
        (param, Some(DenseAdapter(adapter)))
    }
}
