//! Self-supervised pre-training: next-token prediction on unlabelled text.
//!
//! Size: about 400 lines: the pre-training run is one function that reads top to bottom in
//! the order things happen (corpus, tokenizer, model, schedule, report), plus the
//! evaluations its report needs.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::AdamWConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::Error;
use crate::data::{LmBatch, build_corpus, lm_batches, split_validation};
use crate::io::{to_json, write_atomic};
use crate::model::{Gpt, GptConfig, Sampling, generate};
use crate::tokenizer::{BpeTokenizer, SPECIAL_TOKENS, train_tokenizer};
use crate::train::{lr_at, optimizer_step, progress, svg_line_plot};

/// Everything `pretrain` needs to know; the defaults build the shipped base.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainOptions {
    /// Labelled datasets whose texts (labels discarded) are pre-training documents.
    pub datasets: Vec<PathBuf>,
    /// Extra plain-text files, one document per line.
    pub corpus: Vec<PathBuf>,
    /// Test sets whose texts are kept out of the corpus.
    pub test_sets: Vec<PathBuf>,
    /// Where the base model is written.
    pub out: PathBuf,
    /// BPE vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// MLP width.
    pub d_ff: usize,
    /// Tokens per training window (also the model's context length).
    pub seq_len: usize,
    /// Windows per batch.
    pub batch_size: usize,
    /// Passes over the corpus.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Dropout.
    pub dropout: f64,
    /// Seed for initialisation, shuffling and dropout.
    pub seed: u64,
    /// Stop after this many optimizer steps (for quick tries and tests).
    pub max_steps: Option<usize>,
    /// Replace the files of an existing, non-empty `out` (refused otherwise).
    pub overwrite: bool,
    /// Continue pre-training this base directory (`config.json`, `model.bpk`,
    /// `tokenizer.json`) instead of starting from scratch: its tokenizer and sizes are
    /// kept, and the size fields above are ignored. This is continued pre-training (PT on
    /// new unlabelled text before fine-tuning).
    pub init: Option<PathBuf>,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        let data = PathBuf::from("fixtures/data");
        Self {
            datasets: vec![data.join("en/train.tsv"), data.join("zh/train.tsv")],
            corpus: Vec::new(),
            test_sets: vec![data.join("en/test.tsv"), data.join("zh/test.tsv")],
            out: PathBuf::from("fixtures/base"),
            vocab_size: 4096,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            d_ff: 512,
            seq_len: 64,
            batch_size: 32,
            epochs: 3,
            lr: 2e-3,
            warmup: 200,
            weight_decay: 0.1,
            dropout: 0.1,
            seed: 42,
            max_steps: None,
            overwrite: false,
            init: None,
        }
    }
}

/// What pre-training achieved, as written to `pretrain_metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Training tokens processed.
    pub tokens_seen: usize,
    /// Mean training loss over the last 50 steps.
    pub final_train_loss: f64,
    /// Validation cross-entropy (nats per token).
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub val_perplexity: f64,
    /// Perplexity of a unigram model (token frequencies) on the same validation tokens.
    pub unigram_perplexity: f64,
    /// Wall-clock training time.
    pub wall_seconds: f64,
    /// Model parameters.
    pub parameters: usize,
    /// Training documents, validation documents, and test lines kept out.
    pub documents: [usize; 3],
    /// Validation loss after each epoch.
    pub val_loss_per_epoch: Vec<f64>,
    /// Greedy continuations before training, as `(prompt, continuation)`.
    pub samples_before: Vec<(String, String)>,
    /// Greedy continuations after training.
    pub samples_after: Vec<(String, String)>,
    /// The options used.
    pub options: PretrainOptions,
}

const PROMPTS: [&str; 3] = ["The movie is", "It's a film that", "这本书"];

fn model_config(options: &PretrainOptions, vocab_size: usize) -> GptConfig {
    GptConfig::new(vocab_size)
        .with_d_model(options.d_model)
        .with_n_layers(options.n_layers)
        .with_n_heads(options.n_heads)
        .with_d_ff(options.d_ff)
        .with_max_seq_len(options.seq_len)
        .with_dropout(options.dropout)
}

/// Builds a base model from scratch: trains the tokenizer, then the GPT on next-token
/// prediction, and writes `config.json`, `model.bpk`, `tokenizer.json`,
/// `pretrain_metrics.json` and `loss_curve.svg` into `options.out`.
///
/// # Errors
///
/// Unreadable or malformed inputs, an empty corpus, a non-finite loss, or a failed write.
pub fn pretrain(options: &PretrainOptions, device: &Device) -> Result<PretrainReport, Error> {
    crate::train::check_output_dir(&options.out, options.overwrite)?;
    // Sizes are checked before the minutes of corpus reading and tokenizer training.
    model_config(options, options.vocab_size)
        .validate()
        .map_err(Error::Usage)?;
    let corpus = build_corpus(&options.datasets, &options.corpus, &options.test_sets)?;
    let excluded = corpus.excluded_test_lines;
    let (train_docs, val_docs) = split_validation(corpus.documents, 20);
    if train_docs.is_empty() || val_docs.is_empty() {
        return Err(Error::Usage(
            "the pre-training corpus is too small to split".into(),
        ));
    }
    println!(
        "corpus: {} training and {} validation documents ({excluded} test-set lines kept out)",
        train_docs.len(),
        val_docs.len()
    );
    let init = match &options.init {
        Some(dir) => {
            let tokenizer = BpeTokenizer::load(dir.join("tokenizer.json"))?;
            let (config, gpt) = Gpt::load(dir, "model.bpk", device)?;
            println!(
                "continuing from {}: its tokenizer ({} tokens) and model (d_model {}, {} layers, context {})",
                dir.display(),
                tokenizer.vocab_size(),
                config.d_model,
                config.n_layers,
                config.max_seq_len
            );
            Some((tokenizer, config, gpt))
        }
        None => None,
    };
    let (tokenizer, init) = match init {
        Some((tokenizer, config, gpt)) => (tokenizer, Some((config, gpt))),
        None => (
            train_tokenizer(&train_docs, options.vocab_size, &SPECIAL_TOKENS)?,
            None,
        ),
    };
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut order: Vec<usize> = (0..train_docs.len()).collect();
    order.shuffle(&mut rng);
    let train_stream = token_stream(&tokenizer, order.iter().map(|&i| train_docs[i].as_str()))?;
    let val_stream = token_stream(&tokenizer, val_docs.iter().map(String::as_str))?;
    let unigram = unigram_perplexity(&train_stream, &val_stream, tokenizer.vocab_size());
    println!(
        "tokens: {} train, {} validation; unigram perplexity {unigram:.1}",
        train_stream.len(),
        val_stream.len()
    );

    let train_device = device.clone().autodiff();
    train_device.seed(options.seed);
    let (config, mut model) = match init {
        Some((config, gpt)) => (config, gpt.train()),
        None => {
            let config = model_config(options, tokenizer.vocab_size());
            config.validate().map_err(Error::Usage)?;
            let model = config.init(&train_device);
            (config, model)
        }
    };
    let seq_len = config.max_seq_len;
    let samples_before = samples(&model.valid(), &tokenizer);

    let batches = lm_batches(&train_stream, seq_len, options.batch_size, &train_device);
    let val_batches = lm_batches(&val_stream, seq_len, options.batch_size, device);
    let planned = options.epochs * batches.len();
    let total = options.max_steps.map_or(planned, |max| max.min(planned));
    let mut optim = AdamWConfig::new()
        .with_weight_decay(options.weight_decay as f32)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    let loss_fn = CrossEntropyLoss::new(None, &train_device);
    let bar = progress(total as u64, "pretrain");
    let (start, mut step, mut tokens_seen) = (Instant::now(), 0, 0);
    let (mut losses, mut val_losses) = (Vec::new(), Vec::new());
    'epochs: for epoch in 0..options.epochs {
        let mut batch_order: Vec<usize> = (0..batches.len()).collect();
        batch_order.shuffle(&mut rng);
        for &b in &batch_order {
            if step == total {
                break 'epochs;
            }
            // A short run (--max-steps) warms up over its first fifth at most.
            let lr = lr_at(step, total, options.warmup.min(total / 5), options.lr, 0.1);
            let loss = lm_loss(&model, &batches[b], &loss_fn);
            let value;
            (model, value) = optimizer_step(model, &mut optim, loss, step, lr, &bar)?;
            losses.push(value);
            step += 1;
            tokens_seen += batches[b].inputs.dims().iter().product::<usize>();
            let rate = tokens_seen as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {value:.3} | {rate:.0} tok/s"));
            bar.inc(1);
            // About ten lines a run, so logs and pipes (where the bar is hidden) show the loss too.
            if step == 1 || step % total.div_ceil(10).max(1) == 0 {
                bar.suspend(|| {
                    println!(
                        "step {step}/{total}: loss {value:.3}, lr {lr:.2e}, {rate:.0} tokens/s"
                    )
                });
            }
        }
        let val = eval_loss(&model.valid(), &val_batches);
        val_losses.push(val);
        bar.suspend(|| {
            println!(
                "epoch {}: train loss {:.3}, validation loss {val:.3}, perplexity {:.1}",
                epoch + 1,
                mean_tail(&losses, 50),
                val.exp()
            )
        });
    }
    bar.finish_and_clear();
    let wall_seconds = start.elapsed().as_secs_f64();
    let model = model.valid();
    let val_loss = match val_losses.last() {
        Some(&v) if step % batches.len() == 0 => v,
        _ => eval_loss(&model, &val_batches),
    };
    let report = PretrainReport {
        steps: step,
        tokens_seen,
        final_train_loss: mean_tail(&losses, 50),
        val_loss,
        val_perplexity: val_loss.exp(),
        unigram_perplexity: unigram,
        wall_seconds,
        parameters: model.num_params(),
        documents: [train_docs.len(), val_docs.len(), excluded],
        val_loss_per_epoch: val_losses,
        samples_before,
        samples_after: samples(&model, &tokenizer),
        options: options.clone(),
    };
    write_outputs(&report, &config, &model, &tokenizer, &losses)?;
    Ok(report)
}

/// Every document's tokens followed by `<eos>`, concatenated.
fn token_stream<'a>(
    tokenizer: &BpeTokenizer,
    docs: impl Iterator<Item = &'a str>,
) -> Result<Vec<u32>, Error> {
    let mut stream = Vec::new();
    for doc in docs {
        stream.extend(tokenizer.encode(doc)?);
        stream.push(tokenizer.eos_id());
    }
    Ok(stream)
}

/// Mean next-token cross-entropy of one batch.
fn lm_loss(model: &Gpt, batch: &LmBatch, loss_fn: &CrossEntropyLoss) -> Tensor<1> {
    let logits = model.forward(batch.inputs.clone(), batch.padding.clone()); // [batch, seq, vocab]
    let [b, t, v] = logits.dims();
    loss_fn.forward(
        logits.reshape([b * t, v]),
        batch.targets.clone().reshape([b * t]),
    )
}

/// Token-weighted mean cross-entropy over `batches`.
pub(crate) fn eval_loss(model: &Gpt, batches: &[LmBatch]) -> f64 {
    let device = model.token_embedding.weight.device();
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let (mut sum, mut count) = (0.0, 0);
    for batch in batches {
        let n = batch.inputs.dims().iter().product::<usize>();
        sum += lm_loss(model, batch, &loss_fn).into_scalar::<f64>() * n as f64;
        count += n;
    }
    sum / count.max(1) as f64
}

/// The perplexity on `eval` of a unigram model fitted to `train` with add-one smoothing:
/// the baseline a model that ignores context would reach.
pub fn unigram_perplexity(train: &[u32], eval: &[u32], vocab_size: usize) -> f64 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &t in train {
        *counts.entry(t).or_default() += 1;
    }
    let total = (train.len() + vocab_size) as f64;
    let nll: f64 = eval
        .iter()
        .map(|t| -(((counts.get(t).copied().unwrap_or(0) + 1) as f64) / total).ln())
        .sum();
    (nll / eval.len().max(1) as f64).exp()
}

fn mean_tail(values: &[f64], n: usize) -> f64 {
    let tail = &values[values.len().saturating_sub(n)..];
    tail.iter().sum::<f64>() / tail.len().max(1) as f64
}

/// Greedy continuations of the fixed prompts.
fn samples(model: &Gpt, tokenizer: &BpeTokenizer) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(0);
    PROMPTS
        .iter()
        .map(|prompt| {
            let ids = tokenizer.encode(prompt).unwrap_or_default();
            let new = generate(
                model,
                &ids,
                24,
                Some(tokenizer.eos_id()),
                Sampling::Greedy,
                &mut rng,
            );
            (
                prompt.to_string(),
                tokenizer.decode(&new).unwrap_or_default(),
            )
        })
        .collect()
}

fn write_outputs(
    report: &PretrainReport,
    config: &GptConfig,
    model: &Gpt,
    tokenizer: &BpeTokenizer,
    losses: &[f64],
) -> Result<(), Error> {
    let out = &report.options.out;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("config.json"), to_json(config).as_bytes())?;
    model.save(&out.join("model.bpk"))?;
    tokenizer.save(out.join("tokenizer.json"))?;
    write_atomic(
        &out.join("pretrain_metrics.json"),
        to_json(report).as_bytes(),
    )?;
    let train: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .map(|(i, &l)| ((i + 1) as f64, l))
        .collect();
    let per_epoch = losses.len() as f64 / report.val_loss_per_epoch.len().max(1) as f64;
    let val: Vec<(f64, f64)> = report
        .val_loss_per_epoch
        .iter()
        .enumerate()
        .map(|(i, &l)| ((i + 1) as f64 * per_epoch, l))
        .collect();
    let svg = svg_line_plot(
        "Pre-training loss",
        "step",
        "cross-entropy",
        &[("train", train), ("validation", val)],
    );
    write_atomic(&out.join("loss_curve.svg"), svg.as_bytes())
}
