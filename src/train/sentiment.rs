//! The main job: fine-tune one base on sentiment three ways and compare what each costs and
//! achieves.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use burn_lora::{
    LoraConfig, ParamReport, load_adapter_with, merge_lora, param_report, read_adapter_config,
    save_adapter_with, set_lora_trainable,
};

use crate::Error;
use crate::data::{Example, HeadRecord, LabelSet, ReadOptions, SentimentDataset};
use crate::io::write_atomic;
use crate::model::bert::{Bert, BertClassifier, BertConfig, BertHead};
use crate::model::{Classifier, Gpt, GptClassifier, GptConfig, Pooling};
use crate::tokenizer::{BpeTokenizer, HfTokenizer, TextEncoder};
use crate::train::baseline::NaiveBayes;
use crate::train::checkpoint::{CheckpointOptions, Keep};
use crate::train::metrics::{ClassMetrics, Classification, argmax};
use crate::train::pretrain::to_json;
use crate::train::{
    Encoded, FinetuneMode, FinetuneOptions, History, accuracy, encode_dataset, finetune, predict,
    svg_line_plot,
};

pub use crate::train::trained::{Loaded, LoadedModel, Trained, load_classifier, zero_head};

/// Everything the sentiment job needs.
#[derive(Debug, Clone)]
pub struct SentimentOptions {
    /// Dataset name for the report (`en`, `zh`, or a file name).
    pub dataset: String,
    /// Training file (TSV, CSV or JSON Lines; see [`SentimentDataset`]). Its labels are
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
    /// Training threads, each on a part of every batch (see [`FinetuneOptions::replicas`]).
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
}

/// The default base of the sentiment job and `predict`: a three-layer encoder derived from
/// all-MiniLM-L6-v2 by `scripts/derive_base.py` (see `fixtures/minilm/README.md`).
pub const DEFAULT_BASE: &str = "fixtures/minilm";

/// The default longest input, in tokens, for a BERT base: every English fixture text but 6
/// fits, and attention's cost grows with the square of the length.
pub const BERT_MAX_LEN: usize = 64;

/// The longest input a BERT base reads when `--max-len` is not given: the 95th percentile
/// of the training texts' lengths in tokens, rounded up to a multiple of 16, but at least
/// [`BERT_MAX_LEN`] and at most [`BERT_MAX_LEN_CAP`] (and the model's positions). Prints
/// the choice and the distribution it came from.
///
/// # Errors
///
/// A tokenizer failure.
pub fn choose_max_len(
    tokenizer: &impl TextEncoder,
    train: &SentimentDataset,
    positions: usize,
) -> Result<usize, Error> {
    let mut lengths: Vec<usize> = Vec::with_capacity(train.examples.len());
    for text in train.texts() {
        lengths.push(tokenizer.encode_for_classifier(text, usize::MAX)?.0.len());
    }
    lengths.sort_unstable();
    if lengths.is_empty() {
        return Ok(BERT_MAX_LEN.min(positions));
    }
    let at = |q: f64| lengths[((lengths.len() - 1) as f64 * q).round() as usize];
    let (p50, p90, p95) = (at(0.5), at(0.9), at(0.95));
    let chosen = p95
        .div_ceil(16)
        .saturating_mul(16)
        .clamp(BERT_MAX_LEN, BERT_MAX_LEN_CAP)
        .min(positions);
    let fit = lengths.iter().filter(|&&n| n <= chosen).count();
    println!(
        "max length {chosen} tokens (p95 rounded up to 16, within {BERT_MAX_LEN}..={BERT_MAX_LEN_CAP} and the base's {positions} positions; \
         --max-len overrides): {:.1} % of the {} training texts fit; their lengths: median {p50}, p90 {p90}, p95 {p95}",
        100.0 * fit as f64 / lengths.len().max(1) as f64,
        lengths.len()
    );
    Ok(chosen)
}

/// The longest input [`choose_max_len`] picks: attention's cost grows with the square of
/// the length, and the whole job must stay within minutes on two cores.
pub const BERT_MAX_LEN_CAP: usize = 128;

/// The model that is fine-tuned.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseModel {
    /// A base pre-trained by this crate (`config.json`, `model.bpk`, `tokenizer.json`).
    Gpt(PathBuf),
    /// A Hugging Face BERT checkpoint directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`), with the head to put on it.
    Bert {
        /// The checkpoint directory.
        dir: PathBuf,
        /// `[CLS]` pooler or mean pooling.
        head: BertHead,
    },
    /// Another base's architecture and tokenizer with random weights: what pre-training
    /// is worth.
    Random(Box<BaseModel>),
}

impl BaseModel {
    /// Parses a `--base` value: a directory (a Hugging Face BERT checkpoint when it holds
    /// `model.safetensors`, else a base made by the pretrain example), `hf:DIR` (always
    /// BERT), `random` (the [`DEFAULT_BASE`]'s architecture with random weights) or
    /// `random:DIR` (that base's architecture with random weights).
    pub fn parse(value: &str, head: BertHead) -> Self {
        if value == "random" {
            return BaseModel::Random(Box::new(Self::parse(DEFAULT_BASE, head)));
        }
        if let Some(base) = value.strip_prefix("random:") {
            return BaseModel::Random(Box::new(Self::parse(base, head)));
        }
        let bert = |dir: &str| BaseModel::Bert {
            dir: PathBuf::from(dir),
            head,
        };
        match value.strip_prefix("hf:") {
            Some(dir) => bert(dir),
            None if Path::new(value).join("model.safetensors").is_file() => bert(value),
            None => BaseModel::Gpt(PathBuf::from(value)),
        }
    }

    /// Whether the model is a BERT encoder (random or not).
    pub fn is_bert(&self) -> bool {
        match self {
            BaseModel::Gpt(_) => false,
            BaseModel::Bert { .. } => true,
            BaseModel::Random(base) => base.is_bert(),
        }
    }

    /// The head of a BERT base; `None` for a GPT.
    pub fn bert_head(&self) -> Option<BertHead> {
        match self {
            BaseModel::Gpt(_) => None,
            BaseModel::Bert { head, .. } => Some(*head),
            BaseModel::Random(base) => base.bert_head(),
        }
    }

    /// How `metrics.json` names it.
    pub fn describe(&self) -> String {
        match self {
            BaseModel::Gpt(dir) => dir.display().to_string(),
            BaseModel::Bert { dir, .. } => format!("hf:{}", dir.display()),
            BaseModel::Random(base) => format!("random:{}", base.describe()),
        }
    }
}

/// Reads a `--pooling` flag: for our GPT `last` (the default) or `mean`; for a BERT base
/// (`bert`) `mean` (the default) or `cls` (the `[CLS]` pooler). Returns the pooling of the
/// batches and the BERT head.
///
/// # Errors
///
/// [`Error::Usage`] for a value the base does not take.
pub fn parse_pooling(value: Option<&str>, bert: bool) -> Result<(Pooling, BertHead), Error> {
    let value = value.unwrap_or(if bert { "mean" } else { "last" });
    match (value, bert) {
        ("last", false) => Ok((Pooling::LastToken, BertHead::Mean)),
        ("mean", _) => Ok((Pooling::Mean, BertHead::Mean)),
        ("cls", true) => Ok((Pooling::Mean, BertHead::Pooler)),
        (other, _) => Err(Error::Usage(format!(
            "--pooling must be {} for this base, got `{other}`",
            if bert { "mean or cls" } else { "last or mean" }
        ))),
    }
}

/// The `--pooling` value that names `pooling` with `head` on a base: `last`, `mean` or `cls`.
pub fn pooling_name(pooling: Pooling, head: Option<BertHead>) -> &'static str {
    match (pooling, head) {
        (_, Some(BertHead::Pooler)) => "cls",
        (Pooling::LastToken, _) => "last",
        (Pooling::Mean, _) => "mean",
    }
}

/// The job's defaults on a base: what the sentiment example uses for a flag it is not
/// given. For our GPT they follow the LoRA paper (r=8, alpha=16, `query`/`value`). For a BERT
/// base they were chosen on the validation split (README, "How the defaults were chosen"):
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

/// One row of `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    /// `full`, `lora` or `head`.
    pub mode: String,
    /// Parameters that trained.
    pub trainable_params: usize,
    /// Parameters that stayed frozen.
    pub frozen_params: usize,
    /// All parameters.
    pub total_params: usize,
    /// Accuracy on the test file.
    pub test_accuracy: f64,
    /// The class names, in class order.
    pub labels: Vec<String>,
    /// The unweighted mean of the classes' F1 on the test file.
    pub macro_f1: f64,
    /// Precision, recall, F1 and support of each class on the test file.
    pub per_class: Vec<ClassMetrics>,
    /// Test-file counts: rows are the true classes, columns the predicted ones, both in
    /// the order of `labels`.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Accuracy on each `--eval-file`, by file name.
    pub eval: BTreeMap<String, f64>,
    /// Training wall time.
    pub train_seconds: f64,
    /// Median seconds per optimizer step.
    pub median_step_seconds: f64,
    /// Peak resident memory during this mode (see [`peak_rss`]).
    pub peak_rss_bytes: u64,
    /// Bytes of what this mode must store: adapter + head, head, or the full model.
    pub artifact_bytes: u64,
    /// The epoch (from 1) whose weights were kept: the best on validation, or the last
    /// with `--keep last`.
    pub kept_epoch: usize,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// The dataset.
    pub dataset: String,
    /// The base directory, or `random`.
    pub base: String,
    /// The backend trained on (`Flex`, `NdArray`, `Cube`, ...).
    pub backend: String,
    /// The devices trained on, as Burn names them.
    pub devices: Vec<String>,
    /// The class names, in class order (the training file's labels).
    pub labels: Vec<String>,
    /// One entry per mode.
    pub runs: Vec<RunMetrics>,
}

/// Runs every mode and writes `metrics.json`, `details.json`, curves, and each mode's
/// artefact into `options.out`. Returns the metrics and the printed summary table.
///
/// # Errors
///
/// Bad data files, a bad base, an invalid LoRA config, a non-finite loss, or a failed write.
/// `devices` are where training runs: the first holds the model; with several, each
/// trains on a part of every batch (data parallelism across devices).
pub fn run_sentiment(
    options: &SentimentOptions,
    devices: &[Device],
) -> Result<(Metrics, String), Error> {
    if devices.is_empty() {
        return Err(Error::Usage("the sentiment job needs a device".into()));
    }
    if options.resume {
        check_resumable(options, devices)?;
    } else {
        crate::train::check_output_dir(&options.out, options.overwrite)?;
    }
    let mut train = SentimentDataset::load_with(&options.train_file, &options.read)?;
    let labels = LabelSet::from_data(&train)?;
    if let Some(n) = options.max_train {
        // A seeded random subset: the files are not in random order (the English one is
        // grouped by label), so the first n lines would be a biased sample.
        let mut rng = StdRng::seed_from_u64(options.seed);
        train.examples.shuffle(&mut rng);
        train.examples.truncate(n.max(1));
    }
    let test = SentimentDataset::load_with(&options.test_file, &options.read)?;
    let evals: Vec<SentimentDataset> = options
        .eval_files
        .iter()
        .map(|path| SentimentDataset::load_with(path, &options.read))
        .collect::<Result<_, _>>()?;
    let classes = labels.len();
    let data = Data {
        train,
        test,
        evals,
        labels,
    };
    let (base, random) = match &options.base {
        BaseModel::Random(base) => (base.as_ref(), true),
        base => (base, false),
    };
    match base {
        BaseModel::Bert { dir, head } => {
            let config = BertConfig::load(&dir.join("config.json"))?;
            let tokenizer =
                HfTokenizer::load_with_pad_id(dir.join("tokenizer.json"), config.pad_token_id)?;
            let max_len = match options.max_len {
                Some(n) => n.min(config.max_position_embeddings),
                None => choose_max_len(&tokenizer, &data.train, config.max_position_embeddings)?,
            };
            let build = |device: &Device| -> Result<BertClassifier, Error> {
                if random {
                    let bert = config.init(device);
                    return Ok(BertClassifier::new(bert, &config, classes, *head, device));
                }
                let (config, bert, notes) = Bert::load(dir, device)?;
                for note in notes {
                    println!("note: {}: {note}", dir.display());
                }
                Ok(BertClassifier::new(bert, &config, classes, *head, device))
            };
            run_modes(options, &data, &tokenizer, max_len, build, devices)
        }
        BaseModel::Gpt(dir) => {
            let (config, tokenizer) = load_gpt_config(dir)?;
            let max_len = match options.max_len {
                Some(n) => n.min(config.max_seq_len),
                None => choose_max_len(&tokenizer, &data.train, config.max_seq_len)?,
            };
            let build = |device: &Device| -> Result<GptClassifier, Error> {
                let gpt = match random {
                    true => config.init(device),
                    false => Gpt::load(dir, "model.bpk", device)?.1,
                };
                Ok(GptClassifier::new(gpt, classes, device))
            };
            run_modes(options, &data, &tokenizer, max_len, build, devices)
        }
        BaseModel::Random(_) => Err(Error::Usage(
            "`random:` takes a base directory, not another `random`".into(),
        )),
    }
}

/// The loaded data files.
struct Data {
    train: SentimentDataset,
    test: SentimentDataset,
    evals: Vec<SentimentDataset>,
    labels: LabelSet,
}

/// Every mode on one kind of classifier: `build` makes a fresh one (the base loaded, a new
/// head) on the device it is given.
fn run_modes<C: Classifier>(
    options: &SentimentOptions,
    data: &Data,
    tokenizer: &impl TextEncoder,
    max_len: usize,
    build: impl Fn(&Device) -> Result<C, Error>,
    devices: &[Device],
) -> Result<(Metrics, String), Error> {
    let device = &devices[0];
    let Data {
        train,
        test,
        evals,
        labels,
    } = data;
    let (fit, val) = split_train(&train.examples);
    let encode = |examples: Vec<Example>| {
        let data = SentimentDataset {
            path: train.path.clone(),
            examples,
        };
        encode_dataset(tokenizer, &data, labels, max_len)
    };
    let (fit, val) = (encode(fit)?, encode(val)?);
    let test_enc = encode_dataset(tokenizer, test, labels, max_len)?;
    let eval_enc: Vec<Encoded> = evals
        .iter()
        .map(|d| encode_dataset(tokenizer, d, labels, max_len))
        .collect::<Result<_, _>>()?;
    let truncated = fit.truncated
        + val.truncated
        + test_enc.truncated
        + eval_enc.iter().map(|e| e.truncated).sum::<usize>();
    println!(
        "data: {} train / {} validation / {} test examples; {truncated} texts longer than {max_len} tokens truncated",
        fit.labels.len(),
        val.labels.len(),
        test_enc.labels.len()
    );
    println!(
        "labels: {} ({} classes, from {})",
        labels.names().join(", "),
        labels.len(),
        train.path.display()
    );
    let record = HeadRecord {
        labels: labels.names().to_vec(),
        pooling: pooling_name(options.pooling, options.base.bert_head()).into(),
        zero_head: false,
        max_len: Some(max_len),
    };
    // `--init-adapter`: LoRA's config is the adapter's, and its labels must be the data's.
    let init = match &options.init_adapter {
        Some(dir) => Some((dir.clone(), init_adapter_config(dir, labels)?)),
        None => None,
    };
    // The LoRA head is always trained: a new classifier starts random.
    let modes: Vec<FinetuneMode> = options
        .modes
        .iter()
        .map(|mode| match (mode, &init) {
            (FinetuneMode::Lora(_), Some((_, config))) => FinetuneMode::Lora(config.clone()),
            (other, _) => other.clone(),
        })
        .map(|mode| match mode {
            FinetuneMode::Lora(config) if config.modules_to_save.is_empty() => {
                FinetuneMode::Lora(config.with_modules_to_save(vec![C::HEAD.into()]))
            }
            other => other,
        })
        .collect();
    let init_dir = init.map(|(dir, _)| dir);
    let prepare = |mode: &FinetuneMode, model: C| -> Result<C, Error> {
        match (mode, &init_dir) {
            (FinetuneMode::Lora(config), Some(dir)) => {
                let model = load_adapter_with(model, dir, &C::peft_options())?;
                Ok(set_lora_trainable(model, &config.modules_to_save)?)
            }
            _ => mode.prepare(model),
        }
    };
    // Every mode's set-up (LoRA targets, rank) is checked before any training, so a bad
    // flag fails in seconds, not after the first mode.
    // One model serves every check: building it may read a large checkpoint.
    let probe = build(device)?;
    for mode in &modes {
        prepare(mode, probe.clone())?;
    }
    drop(probe);
    fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;
    // The classes and head of everything this run writes: its checkpoints, full model and
    // head (the adapter directory gets its own copy).
    record.save(&options.out)?;
    if !options.resume {
        write_atomic(
            &options.out.join(JOB_FILE),
            to_json(&job_record(options, devices)).as_bytes(),
        )?;
    }

    let mut runs = Vec::new();
    let mut details = Vec::new();
    let mut curves = Vec::new();
    for mode in &modes {
        let checkpoints = options.out.join("checkpoints").join(mode.name());
        let done_path = checkpoints.join(DONE_FILE);
        if options.resume && done_path.is_file() {
            let done: ModeResult = read_json(&done_path)?;
            println!(
                "\n== {} finished before the interruption: read back from {} ==",
                mode.name(),
                done_path.display()
            );
            runs.push(done.run);
            details.push(done.details);
            curves.push((mode.name(), done.history));
            continue;
        }
        reset_peak_rss();
        let train_device = device.clone().autodiff();
        train_device.seed(options.seed);
        let model = prepare(mode, build(&train_device)?)?;
        let report = param_report(&model);
        let finetune_options = FinetuneOptions {
            epochs: options.epochs,
            batch_size: options.batch_size,
            lr: options
                .lr
                .unwrap_or_else(|| JobDefaults::for_base(&options.base).lr(mode)),
            weight_decay: 0.01,
            warmup_ratio: 0.06,
            seed: options.seed,
            pooling: options.pooling,
            pad_id: tokenizer.padding_id(),
            replicas: options.replicas,
            devices: match devices.len() {
                1 => Vec::new(),
                _ => devices.iter().map(|d| d.clone().autodiff()).collect(),
            },
            checkpoint: options.checkpoint_every.map(|every| CheckpointOptions {
                dir: checkpoints.clone(),
                every,
            }),
            resume: options.resume,
            keep: options.keep,
        };
        println!(
            "\n== {} ({} trainable of {} parameters, lr {:e}) ==",
            mode.name(),
            report.trainable,
            report.total,
            finetune_options.lr
        );
        let (model, history) = finetune(model, &fit, &val, &finetune_options, mode.name())?;
        println!(
            "  {}: {:.1} training examples/s ({})",
            mode.name(),
            history.examples_per_second(),
            match devices.len() {
                1 => format!("{} replicas", finetune_options.replicas.max(1)),
                n => format!("{n} devices"),
            }
        );
        let model = model.valid();
        let score = |enc: &Encoded| {
            accuracy(
                &predict(
                    &model,
                    &enc.tokens,
                    finetune_options.pooling,
                    finetune_options.pad_id,
                ),
                &enc.labels,
            )
        };
        let test_probs = predict(
            &model,
            &test_enc.tokens,
            finetune_options.pooling,
            finetune_options.pad_id,
        );
        let predicted: Vec<usize> = test_probs.iter().map(|p| argmax(p)).collect();
        let scores = Classification::new(labels.names(), &predicted, &test_enc.labels);
        let eval = options
            .eval_files
            .iter()
            .zip(&eval_enc)
            .map(|(path, enc)| (file_name(path), score(enc)))
            .collect();
        let artifact_bytes = save_artifact(mode, &model, &options.out, &record)?;
        let merge = match mode {
            FinetuneMode::Lora(_) => Some(merge_check(&model, &test_enc, &finetune_options)?),
            _ => None,
        };
        let peak_rss_bytes = peak_rss().unwrap_or(0);
        let run = RunMetrics {
            mode: mode.name().into(),
            trainable_params: report.trainable,
            frozen_params: report.frozen,
            total_params: report.total,
            test_accuracy: scores.accuracy,
            labels: scores.labels,
            macro_f1: scores.macro_f1,
            per_class: scores.per_class,
            confusion_matrix: scores.confusion_matrix,
            eval,
            train_seconds: history.train_seconds,
            median_step_seconds: median(&history.step_seconds),
            peak_rss_bytes,
            artifact_bytes,
            kept_epoch: history.kept_epoch,
        };
        let detail = mode_details(mode, &report, &history, merge, finetune_options.lr);
        if options.checkpoint_every.is_some() {
            // What a resumed run reads back instead of training this mode again.
            let done = ModeResult {
                run: run.clone(),
                details: detail.clone(),
                history: history.clone(),
            };
            fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
            write_atomic(&done_path, to_json(&done).as_bytes())?;
        }
        runs.push(run);
        details.push(detail);
        curves.push((mode.name(), history));
    }
    let train_classes = labels.classes(train)?;
    let nb = NaiveBayes::fit(
        train.texts().zip(train_classes.iter().copied()),
        labels.len(),
    );
    let nb_predicted: Vec<usize> = test.texts().map(|t| nb.predict(t)).collect();
    let baseline = Classification::new(labels.names(), &nb_predicted, &test_enc.labels);
    let metrics = Metrics {
        dataset: options.dataset.clone(),
        base: options.base.describe(),
        backend: crate::device::backend(device),
        devices: devices.iter().map(crate::device::describe).collect(),
        labels: labels.names().to_vec(),
        runs,
    };
    write_atomic(
        &options.out.join("metrics.json"),
        to_json(&metrics).as_bytes(),
    )?;
    let details = serde_json::json!({
        "baseline_naive_bayes_test_accuracy": baseline.accuracy,
        "baseline_naive_bayes_test_macro_f1": baseline.macro_f1,
        "baseline_naive_bayes_confusion_matrix": baseline.confusion_matrix,
        "truncated_texts": truncated,
        "pooling": format!("{:?}", options.pooling),
        "max_len": max_len,
        "bert_head": options.base.bert_head(),
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "replicas": options.replicas,
        "devices": metrics.devices,
        "backend": metrics.backend,
        "modes": details,
    });
    write_atomic(
        &options.out.join("details.json"),
        to_json(&details).as_bytes(),
    )?;
    write_curves(&options.out, &curves)?;
    Ok((metrics.clone(), table(&metrics, &baseline)))
}

/// The file in `out` that records a run's configuration, for `--resume`.
pub const JOB_FILE: &str = "job.json";

/// The file in `out/checkpoints/<mode>/` that holds a finished mode's results.
const DONE_FILE: &str = "done.json";

/// A finished mode, as a resumed run reads it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModeResult {
    run: RunMetrics,
    details: serde_json::Value,
    history: History,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every setting that changes what a run computes, as `job.json` records it. Output
/// settings (`out`, `overwrite`, `resume`) are not among them.
fn job_record(options: &SentimentOptions, devices: &[Device]) -> BTreeMap<&'static str, String> {
    let paths = |p: &[PathBuf]| {
        p.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let modes: Vec<String> = options.modes.iter().map(|m| format!("{m:?}")).collect();
    BTreeMap::from([
        ("dataset", options.dataset.clone()),
        ("train_file", options.train_file.display().to_string()),
        ("test_file", options.test_file.display().to_string()),
        ("eval_files", paths(&options.eval_files)),
        ("base", options.base.describe()),
        ("max_len", format!("{:?}", options.max_len)),
        ("modes", modes.join("; ")),
        ("lr", format!("{:?}", options.lr)),
        ("epochs", options.epochs.to_string()),
        ("batch_size", options.batch_size.to_string()),
        ("seed", options.seed.to_string()),
        ("max_train", format!("{:?}", options.max_train)),
        (
            "pooling",
            pooling_name(options.pooling, options.base.bert_head()).into(),
        ),
        ("replicas", options.replicas.to_string()),
        ("read", format!("{:?}", options.read)),
        (
            "checkpoint_every",
            format!("{:?}", options.checkpoint_every),
        ),
        ("init_adapter", format!("{:?}", options.init_adapter)),
        ("keep", format!("{:?}", options.keep)),
        (
            "devices",
            devices
                .iter()
                .map(crate::device::describe)
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ])
}

/// `--resume`: `out` must hold a run started with checkpoints, and this command's
/// configuration must be the one it records.
fn check_resumable(options: &SentimentOptions, devices: &[Device]) -> Result<(), Error> {
    let path = options.out.join(JOB_FILE);
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "--resume {}: there is no {JOB_FILE} there, so no run to continue",
            options.out.display()
        )));
    }
    let recorded: BTreeMap<String, String> = read_json(&path)?;
    if recorded.get("checkpoint_every").is_none_or(|v| v == "None") {
        return Err(Error::Usage(format!(
            "--resume {}: that run was started without --checkpoint-every, so it has no checkpoints",
            options.out.display()
        )));
    }
    for (field, value) in job_record(options, devices) {
        let before = recorded.get(field).map_or("(not recorded)", String::as_str);
        if before != value {
            return Err(Error::Usage(format!(
                "--resume {}: `{field}` differs: the run was started with {before}, this command gives {value}",
                options.out.display()
            )));
        }
    }
    Ok(())
}

/// `--init-adapter DIR`: the adapter's LoRA config, after checking that the labels it
/// records (if any) are the data's.
fn init_adapter_config(dir: &Path, labels: &LabelSet) -> Result<LoraConfig, Error> {
    let config = read_adapter_config(dir)?;
    if let Some(record) = HeadRecord::load(dir)?
        && record.labels != labels.names()
    {
        return Err(Error::Usage(format!(
            "--init-adapter {}: it was trained on the labels [{}] ({}), but the data has [{}]",
            dir.display(),
            record.labels.join(", "),
            dir.join(HeadRecord::FILE).display(),
            labels.names().join(", ")
        )));
    }
    println!(
        "LoRA starts from {}: r={}, alpha={}, targets {:?}",
        dir.display(),
        config.rank,
        config.alpha,
        config.target_modules
    );
    Ok(config)
}

/// A GPT base's config and tokenizer, checked against each other.
pub(crate) fn load_gpt_config(dir: &Path) -> Result<(GptConfig, BpeTokenizer), Error> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "is not a base-model directory".into(),
        });
    }
    let config = crate::model::load_config(&dir.join("config.json"))?;
    let tokenizer = BpeTokenizer::load(dir.join("tokenizer.json"))?;
    check_vocab(&tokenizer, &config, dir)?;
    Ok((config, tokenizer))
}

/// A tokenizer with more ids than the model has embeddings would index past the table.
pub(crate) fn check_vocab(
    tokenizer: &BpeTokenizer,
    config: &GptConfig,
    dir: &Path,
) -> Result<(), Error> {
    match tokenizer.vocab_size() <= config.vocab_size {
        true => Ok(()),
        false => Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "tokenizer.json has {} tokens but config.json's vocab_size is {}; they come from different bases",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        }),
    }
}

/// Splits off every tenth training example (by position) as validation, for choosing
/// hyper-parameters without touching the test set.
fn split_train(examples: &[Example]) -> (Vec<Example>, Vec<Example>) {
    let (val, fit): (Vec<_>, Vec<_>) = examples
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 10 == 9);
    (
        fit.into_iter().map(|(_, e)| e).collect(),
        val.into_iter().map(|(_, e)| e).collect(),
    )
}

/// Saves what the mode must keep and returns its size in bytes.
/// Saves what the mode must keep, with the labels and pooling it was trained with
/// (`labels.json` in the adapter directory, or beside the `.bpk`), and returns the size of
/// the artefact in bytes.
fn save_artifact<C: Classifier>(
    mode: &FinetuneMode,
    model: &C,
    out: &Path,
    record: &HeadRecord,
) -> Result<u64, Error> {
    match mode {
        FinetuneMode::Lora(_) => {
            let dir = out.join("lora_adapter");
            save_adapter_with(model, &dir, &C::peft_options())?;
            record.save(&dir)?;
            dir_bytes(&dir)
        }
        FinetuneMode::HeadOnly => {
            let path = out.join("head.bpk");
            crate::model::save_module(model.head_layer().clone(), &path)?;
            file_bytes(&path)
        }
        FinetuneMode::Full => {
            let path = out.join("full_model.bpk");
            crate::model::save_module(model.clone(), &path)?;
            file_bytes(&path)
        }
    }
}

fn file_bytes(path: &Path) -> Result<u64, Error> {
    Ok(fs::metadata(path).map_err(|e| Error::io(path, e))?.len())
}

fn dir_bytes(dir: &Path) -> Result<u64, Error> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        total += file_bytes(&entry.map_err(|e| Error::io(dir, e))?.path())?;
    }
    Ok(total)
}

/// What merging the adapter changed: prediction agreement and inference times.
#[derive(Debug, Clone, Serialize)]
pub struct MergeCheck {
    /// Test predictions that differ between the merged and unmerged model.
    pub differing_predictions: usize,
    /// Largest difference in any class probability.
    pub max_probability_difference: f32,
    /// Seconds to classify the test set with the adapter unmerged.
    pub unmerged_seconds: f64,
    /// Seconds with the adapter merged.
    pub merged_seconds: f64,
}

fn merge_check<C: Classifier>(
    model: &C,
    test: &Encoded,
    options: &FinetuneOptions,
) -> Result<MergeCheck, Error> {
    let start = Instant::now();
    let unmerged = predict(model, &test.tokens, options.pooling, options.pad_id);
    let unmerged_seconds = start.elapsed().as_secs_f64();
    let merged_model = merge_lora(model.clone())?;
    let start = Instant::now();
    let merged = predict(&merged_model, &test.tokens, options.pooling, options.pad_id);
    let merged_seconds = start.elapsed().as_secs_f64();
    let check = MergeCheck {
        differing_predictions: unmerged
            .iter()
            .zip(&merged)
            .filter(|(a, b)| argmax(a) != argmax(b))
            .count(),
        max_probability_difference: unmerged
            .iter()
            .zip(&merged)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f32::max),
        unmerged_seconds,
        merged_seconds,
    };
    println!(
        "  merged adapter: {} of {} test predictions differ (max |Δp| {:.2e}); inference {:.2} s unmerged, {:.2} s merged",
        check.differing_predictions,
        test.labels.len(),
        check.max_probability_difference,
        unmerged_seconds,
        merged_seconds
    );
    Ok(check)
}

fn mode_details(
    mode: &FinetuneMode,
    report: &ParamReport,
    history: &History,
    merge: Option<MergeCheck>,
    lr: f64,
) -> serde_json::Value {
    let lora = match mode {
        FinetuneMode::Lora(c) => serde_json::json!({
            "rank": c.rank, "alpha": c.alpha, "dropout": c.dropout, "target_modules": c.target_modules,
        }),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "mode": mode.name(),
        "lr": lr,
        "lora": lora,
        "reduction_vs_full": report.reduction,
        "adam_state_bytes": report.adam_state_bytes,
        "epoch_train_accuracy": history.epoch_train_accuracy,
        "epoch_validation_accuracy": history.epoch_val_accuracy,
        "train_examples_per_second": history.examples_per_second(),
        "merge_check": merge,
    })
}

fn write_curves(out: &Path, curves: &[(&str, History)]) -> Result<(), Error> {
    let mut csv = String::from("mode,step,loss\n");
    let mut acc = String::from("mode,epoch,train_accuracy,validation_accuracy\n");
    let mut series = Vec::new();
    for (mode, history) in curves {
        for (i, loss) in history.step_loss.iter().enumerate() {
            csv.push_str(&format!("{mode},{},{loss}\n", i + 1));
        }
        for (i, (t, v)) in history
            .epoch_train_accuracy
            .iter()
            .zip(&history.epoch_val_accuracy)
            .enumerate()
        {
            acc.push_str(&format!("{mode},{},{t},{v}\n", i + 1));
        }
        // A moving average of 20 steps, so the plot shows the trend rather than the noise.
        let smooth: Vec<(f64, f64)> = history
            .step_loss
            .windows(20.min(history.step_loss.len()).max(1))
            .enumerate()
            .map(|(i, w)| ((i + w.len()) as f64, w.iter().sum::<f64>() / w.len() as f64))
            .collect();
        series.push((*mode, smooth));
    }
    write_atomic(&out.join("loss.csv"), csv.as_bytes())?;
    write_atomic(&out.join("accuracy.csv"), acc.as_bytes())?;
    let svg = svg_line_plot(
        "Fine-tuning loss (20-step mean)",
        "step",
        "cross-entropy",
        &series,
    );
    write_atomic(&out.join("loss.svg"), svg.as_bytes())
}

fn table(metrics: &Metrics, baseline: &Classification) -> String {
    let mut s = format!(
        "{:<9} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>12}\n",
        "mode",
        "trainable",
        "frozen",
        "total",
        "train%",
        "test acc",
        "macro F1",
        "train s",
        "s/step",
        "peak MB",
        "artifact"
    );
    for r in &metrics.runs {
        s.push_str(&format!(
            "{:<9} {:>10} {:>10} {:>10} {:>7.2}% {:>9.4} {:>9.4} {:>9.1} {:>10.4} {:>9.0} {:>12}\n",
            r.mode,
            r.trainable_params,
            r.frozen_params,
            r.total_params,
            100.0 * r.trainable_params as f64 / r.total_params as f64,
            r.test_accuracy,
            r.macro_f1,
            r.train_seconds,
            r.median_step_seconds,
            r.peak_rss_bytes as f64 / 1e6,
            format!("{} B", r.artifact_bytes),
        ));
    }
    s.push_str(&format!(
        "{:<9} {:>54.4} {:>9.4}   (multinomial naive Bayes, unigrams + bigrams)\n",
        "baseline", baseline.accuracy, baseline.macro_f1
    ));
    // Head-only trailing is expected; the transformer's best mode trailing is the lesson.
    let best = metrics
        .runs
        .iter()
        .filter(|r| r.mode != "head")
        .map(|r| r.test_accuracy)
        .fold(f64::NAN, f64::max);
    if best < baseline.accuracy {
        s.push_str(&format!(
            "note: the transformer ({:.2} % at best) trails the bag-of-words baseline ({:.2} %): a base not pre-trained on text like this data cannot beat it (README, \"Chinese reviews\")\n",
            100.0 * best,
            100.0 * baseline.accuracy
        ));
    }
    if metrics.labels.len() > 2 {
        for r in &metrics.runs {
            let scores = Classification {
                labels: r.labels.clone(),
                accuracy: r.test_accuracy,
                macro_f1: r.macro_f1,
                per_class: r.per_class.clone(),
                confusion_matrix: r.confusion_matrix.clone(),
            };
            s.push_str(&format!(
                "\n{} confusion matrix (test):\n{}",
                r.mode,
                scores.matrix_table()
            ));
        }
    }
    s
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), on Linux.
pub fn peak_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux: writing `5` to `/proc/self/clear_refs`),
/// so that [`peak_rss`] measures each mode on its own within one process. Memory the
/// allocator holds for reuse (see [`retain_freed_memory`](crate::memory::retain_freed_memory))
/// is handed back first, so the previous mode's buffers do not count toward the next.
pub fn reset_peak_rss() {
    crate::memory::release_free_memory();
    let _ = fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per character.
    struct Chars;
    impl TextEncoder for Chars {
        fn encode_for_classifier(
            &self,
            text: &str,
            max_len: usize,
        ) -> Result<(Vec<u32>, bool), Error> {
            let n = text.chars().count();
            Ok((vec![1; n.min(max_len)], n > max_len))
        }
        fn padding_id(&self) -> u32 {
            0
        }
    }

    fn texts(lengths: impl Iterator<Item = usize>) -> SentimentDataset {
        let examples = lengths
            .enumerate()
            .map(|(i, n)| Example {
                label: "a".into(),
                text: "x".repeat(n),
                line: i + 1,
            })
            .collect();
        SentimentDataset {
            path: "t.tsv".into(),
            examples,
        }
    }

    #[test]
    fn the_chosen_length_covers_95_percent_within_the_bounds() {
        // 1..=100 tokens: p95 is 95, rounded up to 96.
        assert_eq!(choose_max_len(&Chars, &texts(1..=100), 512).unwrap(), 96);
        // Short texts keep the default, long ones stop at the cap and at the positions.
        assert_eq!(
            choose_max_len(&Chars, &texts(1..=20), 512).unwrap(),
            BERT_MAX_LEN
        );
        assert_eq!(
            choose_max_len(&Chars, &texts(100..=400), 512).unwrap(),
            BERT_MAX_LEN_CAP
        );
        assert_eq!(choose_max_len(&Chars, &texts(100..=400), 80).unwrap(), 80);
    }
}
