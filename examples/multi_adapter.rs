//! Two adapters on one base, served together: a LoRA adapter for English reviews and one
//! for Chinese reviews, trained in turn on one `fixtures/minilm` base, then one mixed batch
//! of both languages through that base, each example answered by its own adapter (PEFT's
//! `adapter_names=`).
//!
//! ```sh
//! cargo run --release --example multi_adapter
//! cargo run --release --example multi_adapter -- --train-examples 1000   # quicker
//! ```
//!
//! Each adapter also covers the classifier (a rank-2 adapter on a `[384, 2]` head is as
//! expressive as training the head), so everything task-specific lives in the adapter and
//! the base, head included, is shared and frozen.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::activation::softmax;
use burn_lora::{
    LoraConfig, add_adapter, delete_adapter, list_adapters, load_adapter_with, param_report,
    save_adapter_with, set_active_adapters, with_adapter_names,
};
use burn_lora_demo::Error;
use burn_lora_demo::data::{HeadRecord, LabelSet, SentimentDataset, class_batch};
use burn_lora_demo::memory::{peak_rss, reset_peak_rss};
use burn_lora_demo::model::Pooling;
use burn_lora_demo::model::bert::{Bert, BertClassifier, BertHead};
use burn_lora_demo::tokenizer::HfTokenizer;
use burn_lora_demo::train::Classifier;
use burn_lora_demo::train::checkpoint::Keep;
use burn_lora_demo::train::sentiment::zero_head;
use burn_lora_demo::train::{
    Encoded, FinetuneOptions, accuracy, encode_dataset, finetune, predict, replicas_for,
};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

#[path = "common/allocator.rs"]
mod allocator;

/// Train an English and a Chinese adapter on one base; serve a mixed batch.
#[derive(Parser, Debug)]
struct Args {
    /// The base: a Hugging Face BERT directory.
    #[arg(long, default_value = "fixtures/minilm")]
    base: PathBuf,
    /// Training examples per language (a seeded random subset of each training file).
    #[arg(long, default_value_t = 3000)]
    train_examples: usize,
    /// Test examples per language to report accuracy on.
    #[arg(long, default_value_t = 1000)]
    test_examples: usize,
    /// LoRA rank of the encoder's linears (the classifier's adapter has rank 2).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Seed for the subsets, the adapters' initialisation and training.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the two adapters are written, in PEFT's several-adapter layout.
    #[arg(long, default_value = "runs/multi_adapter")]
    out: PathBuf,
}

/// Tokens longer than this are cut (Chinese reviews are one token per character).
const MAX_LEN: usize = 128;

fn main() -> ExitCode {
    allocator::retain_freed_memory();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One language's data, encoded.
struct Task {
    name: &'static str,
    fit: Encoded,
    val: Encoded,
    test: Encoded,
    test_texts: Vec<String>,
    labels: LabelSet,
}

fn task(name: &'static str, tokenizer: &HfTokenizer, args: &Args) -> Result<Task, Error> {
    let dir = Path::new("fixtures/data").join(name);
    let mut train = SentimentDataset::load(dir.join("train.tsv"))?;
    let mut test = SentimentDataset::load(dir.join("test.tsv"))?;
    let labels = LabelSet::from_data(&train)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    train.examples.shuffle(&mut rng);
    train.examples.truncate(args.train_examples);
    test.examples.shuffle(&mut rng);
    test.examples.truncate(args.test_examples);
    let val_len = train.examples.len() / 10;
    let mut val = train.clone();
    val.examples = train.examples.split_off(train.examples.len() - val_len);
    let test_texts = test.texts().map(str::to_string).collect();
    Ok(Task {
        name,
        fit: encode_dataset(tokenizer, &train, &labels, MAX_LEN)?,
        val: encode_dataset(tokenizer, &val, &labels, MAX_LEN)?,
        test: encode_dataset(tokenizer, &test, &labels, MAX_LEN)?,
        test_texts,
        labels,
    })
}

fn run(args: Args) -> Result<(), Error> {
    let device = Device::default();
    device.seed(args.seed);
    let (config, bert, _) = Bert::load(&args.base, &device)?;
    let tokenizer =
        HfTokenizer::load_with_pad_id(args.base.join("tokenizer.json"), config.pad_token_id)?;
    let tasks = [
        task("en", &tokenizer, &args)?,
        task("zh", &tokenizer, &args)?,
    ];
    let pad_id = config.pad_token_id as u32;
    // The base, head included, is shared: its head is all zeros and frozen, and each
    // adapter learns its own classifier through a rank-2 adapter on it (a fresh base
    // rebuilds that head exactly, where a random one would differ).
    let base = zero_head(BertClassifier::new(
        bert,
        &config,
        2,
        BertHead::Mean,
        &device,
    ));
    let lora = LoraConfig::new()
        .with_rank(args.rank)
        .with_alpha(2.0 * args.rank as f64)
        .with_dropout(0.1)
        .with_target_modules(vec!["all-linear".into()])
        .with_exclude_modules(base.lora_excludes())
        .with_rank_pattern(vec![("classifier".into(), 2)]);
    let options = FinetuneOptions {
        epochs: 1,
        batch_size: 32,
        lr: args.lr,
        weight_decay: 0.01,
        warmup_ratio: 0.06,
        seed: args.seed,
        pooling: Pooling::Mean,
        pad_id,
        replicas: replicas_for(&device),
        devices: Vec::new(),
        checkpoint: None,
        resume: false,
        keep: Keep::Last,
    };
    let mut model = base.clone();
    for task in &tasks {
        model = add_adapter(model, task.name, &lora)?;
        model = set_active_adapters(model, &[task.name])?;
        let report = param_report(&model);
        println!(
            "training adapter `{}` on {} {} reviews: {} trainable of {} parameters",
            task.name,
            task.fit.labels.len(),
            task.name,
            report.trainable,
            report.total
        );
        // `train` puts the parameters on the autodiff device, keeping their flags.
        let model_ad = model.train();
        let (trained, history) = finetune(model_ad, &task.fit, &task.val, &options, task.name)?;
        println!(
            "  {:.0} s, validation accuracy {:.2} %",
            history.train_seconds,
            100.0 * history.epoch_val_accuracy.last().copied().unwrap_or(0.0)
        );
        model = trained.valid();
    }
    let model = model.valid();
    save_adapter_with(&model, &args.out, &BertClassifier::peft_options())?;
    for task in &tasks {
        let record = HeadRecord {
            labels: task.labels.names().to_vec(),
            pooling: "mean".into(),
            zero_head: true,
            max_len: Some(MAX_LEN),
        };
        record.save(&args.out.join(task.name))?;
    }
    println!(
        "saved both adapters to {0}/en and {0}/zh; serve them with\n  \
         cargo run --release --example predict -- --adapter en={0}/en --adapter zh={0}/zh",
        args.out.display()
    );

    // Each adapter on its own test set, and on the other language's.
    println!("test accuracy ({} reviews each):", args.test_examples);
    for adapter in ["en", "zh"] {
        let active = set_active_adapters(model.clone(), &[adapter])?;
        let scores: Vec<String> = tasks
            .iter()
            .map(|t| {
                let probs = predict(&active, &t.test.tokens, Pooling::Mean, pad_id);
                format!(
                    "{} {:.2} %",
                    t.name,
                    100.0 * accuracy(&probs, &t.test.labels)
                )
            })
            .collect();
        println!("  adapter {adapter}: {}", scores.join(", "));
    }

    // One mixed batch through one base: English and Chinese reviews interleaved, each
    // answered by its language's adapter, plus one answered by the bare base.
    let mut rows: Vec<(&str, &Task, usize)> = Vec::new();
    for i in 0..4 {
        rows.push(("en", &tasks[0], i));
        rows.push(("zh", &tasks[1], i));
    }
    rows.push(("__base__", &tasks[0], 4));
    let seqs: Vec<&[u32]> = rows
        .iter()
        .map(|(_, t, i)| t.test.tokens[*i].as_slice())
        .collect();
    let names: Vec<&str> = rows.iter().map(|(n, _, _)| *n).collect();
    let batch = class_batch(&seqs, &vec![0; seqs.len()], pad_id, &device);
    let pool = Pooling::Mean.weights(&batch);
    let logits = with_adapter_names(&model, &names, || {
        model.classify(batch.tokens.clone(), batch.padding.clone(), pool.clone())
    })?;
    let probs = softmax(logits.clone(), 1)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    // Each row again with its adapter alone, for the largest difference.
    let mut worst = 0f32;
    for (row, name) in names.iter().enumerate() {
        let alone = match *name {
            "__base__" => burn_lora::set_adapters_enabled(model.clone(), false),
            name => set_active_adapters(model.clone(), &[name])?,
        };
        let one = class_batch(&seqs[row..row + 1], &[0], pad_id, &device);
        let pool = Pooling::Mean.weights(&one);
        let solo = alone.classify(one.tokens, one.padding, pool);
        let diff = (logits.clone().narrow(0, row, 1) - solo)
            .abs()
            .max()
            .into_scalar::<f32>();
        worst = worst.max(diff);
    }
    println!("mixed batch of {} reviews through one base:", names.len());
    for (row, (name, task, i)) in rows.iter().enumerate() {
        let p = &probs[2 * row..2 * row + 2];
        let class = usize::from(p[1] > p[0]);
        let text: String = task.test_texts[*i].chars().take(48).collect();
        println!(
            "  {name:<8} -> {:<8} ({:.2})  true {:<8}  {text}",
            task.labels.names()[class],
            p[class],
            task.labels.names()[task.test.labels[*i]],
        );
    }
    println!("largest |mixed - alone| logit difference: {worst:.2e}");

    // Memory: the base alone, with one adapter loaded, with two; then 20 loads and deletes.
    drop(model);
    let fresh = || -> Result<BertClassifier, Error> {
        let (_, bert, _) = Bert::load(&args.base, &device)?;
        Ok(zero_head(BertClassifier::new(
            bert,
            &config,
            2,
            BertHead::Mean,
            &device,
        )))
    };
    let load = |model: BertClassifier, name: &str| {
        let options = BertClassifier::peft_options().with_adapter_name(name);
        load_adapter_with(model, args.out.join(name), &options)
    };
    let mb = |bytes: Option<u64>| bytes.map_or(f64::NAN, |b| b as f64 / 1e6);
    reset_peak_rss();
    let served = fresh()?;
    let rss_base = mb(peak_rss());
    let served = load(served, "en")?;
    let rss_one = mb(peak_rss());
    let served = load(served, "zh")?;
    let rss_two = mb(peak_rss());
    let bytes = |m: &BertClassifier| 4 * param_report(m).total;
    println!(
        "memory: base {rss_base:.1} MB RSS; with 1 adapter {rss_one:.1} MB; with 2 adapters {rss_two:.1} MB \
         (each adapter holds {:.2} MB of factors)",
        (bytes(&served) - 4 * param_report(&fresh()?).total) as f64 / 2e6
    );
    let mut served = delete_adapter(served, "zh")?;
    let mut peaks = Vec::new();
    for i in 0..20 {
        let name = format!("swap{i}");
        let options = BertClassifier::peft_options().with_adapter_name(&name);
        served = load_adapter_with(served, args.out.join("zh"), &options)?;
        served = delete_adapter(served, &name)?;
        peaks.push(mb(peak_rss()));
    }
    println!(
        "hot swap: 20 loads and deletes of `zh` beside `en`: peak RSS {:.1} MB after the first, {:.1} MB after the last; adapters left: {:?}",
        peaks[0],
        peaks[19],
        list_adapters(&served)
    );
    Ok(())
}
