//! The job itself: load the data, then train, evaluate and save each mode in turn
//! ([`run_sentiment`]).
//!
//! Size: about 320 lines: `run_modes` is the job's script, kept whole so that it reads top
//! to bottom.

use std::fs;
use std::path::Path;

use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use burn_lora::{LoraConfig, load_adapter_with, read_adapter_config, set_lora_trainable};

use crate::Error;
use crate::data::{Example, HeadRecord, LabelSet, SentimentDataset};
use crate::io::{read_json, to_json, write_atomic};
use crate::model::bert::{Bert, BertClassifier, BertConfig};
use crate::model::{Gpt, GptClassifier};
use crate::tokenizer::{HfTokenizer, TextEncoder};
use crate::train::Classifier;
use crate::train::{Encoded, FinetuneMode, encode_dataset};

use super::base::{BaseModel, choose_max_len, load_gpt_config, pooling_name};
use super::mode::{ModeInputs, train_mode};
use super::options::SentimentOptions;
use super::report::{JobReport, Metrics, write_report};
use super::resume::{DONE_FILE, JOB_FILE, ModeResult, check_resumable, job_record};
use crate::memory::reset_peak_rss;

/// Runs every mode and writes `metrics.json`, `details.json`, curves, and each mode's
/// artefact into `options.out`. Returns the metrics and the printed summary table.
///
/// # Errors
///
/// Bad data files, a bad base, an invalid LoRA config, a non-finite loss, or a failed write.
/// `devices` are where training runs: the first holds the model; with several, burn-train's
/// `MultiDevice` strategy trains on them (see [`multi`](crate::train::multi)), without
/// `--checkpoint-every` and `--resume`, which are the one-device loop's.
pub fn run_sentiment(
    options: &SentimentOptions,
    devices: &[Device],
) -> Result<(Metrics, String), Error> {
    if devices.is_empty() {
        return Err(Error::Usage("the sentiment job needs a device".into()));
    }
    if let Some(quant) = options.quantize
        && options
            .modes
            .iter()
            .any(|m| matches!(m, FinetuneMode::Full))
    {
        return Err(Error::Usage(format!(
            "--quantize {}: full fine-tuning trains every weight, and a quantized weight cannot train; give --modes lora (or lora,head)",
            quant.name()
        )));
    }
    if devices.len() > 1 && (options.checkpoint_every.is_some() || options.resume) {
        return Err(Error::Usage(format!(
            "--device with {} devices trains through burn-train's MultiDevice strategy, which checkpoints per epoch on its own; --checkpoint-every and --resume are the one-device loop's: give one device, or drop them",
            devices.len()
        )));
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
    /// The training file (validation is cut from it).
    train: SentimentDataset,
    /// The test file.
    test: SentimentDataset,
    /// `--eval-file`s.
    evals: Vec<SentimentDataset>,
    /// The classes, from the training file.
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
        // QLoRA: the frozen base quantized first; the head (and LoRA's modules to save)
        // train, so they stay float.
        let model = match (options.quantize, mode) {
            (Some(quant), FinetuneMode::Lora(config)) => {
                let mut keep = config.modules_to_save.clone();
                keep.push(C::HEAD.to_string());
                quant.quantize(model, &keep)?
            }
            (Some(quant), FinetuneMode::HeadOnly) => {
                quant.quantize(model, &[C::HEAD.to_string()])?
            }
            _ => model,
        };
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
        let inputs = ModeInputs {
            options,
            devices,
            fit: &fit,
            val: &val,
            test: &test_enc,
            evals: &eval_enc,
            labels,
            record: &record,
            pad_id: tokenizer.padding_id(),
        };
        let done = train_mode(&inputs, mode, model, &checkpoints)?;
        if options.checkpoint_every.is_some() {
            // What a resumed run reads back instead of training this mode again.
            fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
            write_atomic(&done_path, to_json(&done).as_bytes())?;
        }
        runs.push(done.run);
        details.push(done.details);
        curves.push((mode.name(), done.history));
    }
    let report = JobReport {
        train,
        test,
        test_enc: &test_enc,
        labels,
        truncated,
        max_len,
        runs,
        details,
        curves,
    };
    write_report(options, devices, report)
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
