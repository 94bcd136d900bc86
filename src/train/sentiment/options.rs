//! The job's settings: [`SentimentOptions`] (every flag of `examples/sentiment.rs`) and
//! [`JobDefaults`] (what each base trains with when a flag is not given).

use std::path::PathBuf;

use crate::data::ReadOptions;
use crate::model::Pooling;
use crate::train::FinetuneMode;
use crate::train::checkpoint::Keep;

use super::base::BaseModel;

/// Everything the sentiment job needs.
#[derive(Debug, Clone)]
pub struct SentimentOptions {
    /// Dataset name for the report (`en`, `zh`, or a file name).
    pub dataset: String,
    /// Training file (TSV, CSV or JSON Lines; see [`SentimentDataset`](crate::data::SentimentDataset)). Its labels are
    /// the classes.
    pub train_file: PathBuf,
    /// Test file.
    pub test_file: PathBuf,
    /// Extra files evaluated after training.
    pub eval_files: Vec<PathBuf>,
    /// The base model.
    pub base: BaseModel,
    /// Longest input in tokens (default: the GPT's context; 64 for a BERT base).
    pub max_len: Option<usize>,
    /// The modes to run, in order.
    pub modes: Vec<FinetuneMode>,
    /// Learning rate for every mode; `None` uses each mode's [`JobDefaults`] rate.
    pub lr: Option<f64>,
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Seed.
    pub seed: u64,
    /// Train on a seeded random subset of `n` training examples.
    pub max_train: Option<usize>,
    /// Output directory.
    pub out: PathBuf,
    /// Pooling of hidden states.
    pub pooling: Pooling,
    /// Replace the files of an existing, non-empty `out` (refused otherwise).
    pub overwrite: bool,
    /// Training threads, each on a part of every batch (see [`FinetuneOptions::replicas`](crate::train::FinetuneOptions::replicas)).
    pub replicas: usize,
    /// How the data files are read: format and columns.
    pub read: ReadOptions,
    /// Write a training checkpoint every so many steps (see
    /// [`checkpoint`](crate::train::checkpoint)), into `out/checkpoints/<mode>/`.
    pub checkpoint_every: Option<usize>,
    /// Continue the run in `out`: modes it finished are read back, the mode it was in
    /// resumes from its latest checkpoint. The configuration must be the one `out/job.json`
    /// records.
    pub resume: bool,
    /// Start LoRA from this PEFT adapter directory (ours or PEFT's), its factors and
    /// modules to save trainable, instead of new factors.
    pub init_adapter: Option<PathBuf>,
    /// Which epoch's weights each mode keeps: the best on validation, or the last.
    pub keep: Keep,
    /// Quantize the frozen base's linears before LoRA or head-only training (QLoRA);
    /// refused with full fine-tuning.
    pub quantize: Option<crate::train::quantize::BaseQuant>,
}

/// The job's defaults on a base: what the sentiment example uses for a flag it is not
/// given. For our GPT they follow the LoRA paper (r=8, alpha=16, `query`/`value`). For a BERT
/// base they were chosen on the validation split (docs/RESULTS.md, "How the defaults were chosen"):
/// LoRA on every linear layer closes most of the gap to full fine-tuning in one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDefaults {
    /// Passes over the training set.
    pub epochs: usize,
    /// Full fine-tuning's learning rate.
    pub full_lr: f64,
    /// LoRA's learning rate (LoRA trains few parameters from `B = 0` and wants larger
    /// steps, about 10× full fine-tuning's).
    pub lora_lr: f64,
    /// Head-only's learning rate.
    pub head_lr: f64,
    /// LoRA's target modules.
    pub lora_targets: Vec<String>,
    /// LoRA's dropout.
    pub lora_dropout: f64,
}

impl JobDefaults {
    /// The defaults for `base` (a random base takes those of its architecture).
    pub fn for_base(base: &BaseModel) -> Self {
        match base.is_bert() {
            true => Self {
                epochs: 1,
                full_lr: 1e-4,
                lora_lr: 2e-3,
                head_lr: 5e-3,
                lora_targets: vec!["all-linear".into()],
                lora_dropout: 0.1,
            },
            false => Self {
                epochs: 3,
                full_lr: 3e-4,
                lora_lr: 3e-3,
                head_lr: 3e-3,
                lora_targets: vec!["query".into(), "value".into()],
                lora_dropout: 0.05,
            },
        }
    }

    /// The learning rate of `mode`.
    pub fn lr(&self, mode: &FinetuneMode) -> f64 {
        match mode {
            FinetuneMode::Full => self.full_lr,
            FinetuneMode::Lora(_) => self.lora_lr,
            FinetuneMode::HeadOnly => self.head_lr,
        }
    }
}
