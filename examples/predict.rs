//! Classifies new text with a fine-tuned model: the base plus a LoRA adapter, or a full
//! fine-tuned checkpoint.
//!
//! ```sh
//! cargo run --release --example predict -- --adapter runs/sentiment/lora_adapter "A gem of a film."
//! echo "Dull and far too long." | cargo run --release --example predict -- --adapter runs/sentiment/lora_adapter --json
//! cargo run --release --example predict -- --checkpoint runs/sentiment/full_model.bpk "Loved it"
//! cargo run --release --example predict -- --base hf:PATH/bert-seq-cls --adapter PATH/peft-adapter "Loved it"
//! printf 'en\tLoved it\nzh\t很好用\n' | cargo run --release --example predict -- \
//!     --adapter en=runs/multi_adapter/en --adapter zh=runs/multi_adapter/zh --json
//! ```
//!
//! With several `--adapter NAME=DIR`, each input line may start with an adapter's name and
//! a tab (`en<TAB>text`, or `__base__` for none); a line without one goes to the first
//! adapter. All lines are answered in mixed batches through one base.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::activation::softmax;
use burn_lora::merge_lora;
use burn_lora_demo::Error;
use burn_lora_demo::data::class_batch;
use burn_lora_demo::device::parse_one_device;
use burn_lora_demo::model::bert::BertHead;
use burn_lora_demo::tokenizer::TextEncoder;
use burn_lora_demo::train::Classifier;
use burn_lora_demo::train::metrics::argmax;
use burn_lora_demo::train::sentiment::{
    BaseModel, DEFAULT_BASE, Loaded, LoadedModel, Trained, load_classifier,
};
use burn_lora_demo::train::{encode_texts, predict};
use clap::Parser;

#[path = "common/allocator.rs"]
mod allocator;

/// The class of each text, by name, with its probability. The class names and the head
/// come from the files: the run's `labels.json`, or a Hugging Face sequence classifier's
/// `config.json`.
#[derive(Parser, Debug)]
struct Args {
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N]
    /// (auto: Burn's default device, which honours BURN_DEVICE).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Texts to classify; without any, one text per line is read from stdin.
    texts: Vec<String>,
    /// The base the adapter or checkpoint was trained on: a BERT checkpoint directory (the
    /// default) or a directory made by the pretrain example; `hf:DIR` forces BERT.
    #[arg(long, default_value = DEFAULT_BASE)]
    base: String,
    /// A LoRA run's PEFT-format adapter directory (ours or PEFT's); repeat as `NAME=DIR`
    /// to serve several adapters on one base.
    #[arg(long, conflicts_with = "checkpoint")]
    adapter: Vec<String>,
    /// A full fine-tuned checkpoint (`full_model.bpk`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print one JSON object per text.
    #[arg(long)]
    json: bool,
    /// Merge the adapter into the base weights first (same answers, plain linears).
    #[arg(long)]
    merge: bool,
    /// Override the pooling the files record: `last` or `mean` for our GPT, `mean` or `cls`
    /// for BERT. Contradicting a run's `labels.json` is an error.
    #[arg(long)]
    pooling: Option<String>,
}

fn run(args: Args) -> Result<(), Error> {
    let named: Vec<(String, PathBuf)> = args
        .adapter
        .iter()
        .map(|a| match a.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !name.contains('/') => {
                (name.to_string(), PathBuf::from(dir))
            }
            _ => (burn_lora::DEFAULT_ADAPTER.to_string(), PathBuf::from(a)),
        })
        .collect();
    let trained = match (named.len(), args.checkpoint.clone()) {
        (1, None) if !args.adapter[0].contains('=') => Trained::Adapter(named[0].1.clone()),
        (n, None) if n >= 1 => Trained::Adapters(named.clone()),
        (0, Some(path)) => Trained::Checkpoint(path),
        _ => {
            return Err(Error::Usage(
                "give --adapter DIR (or several --adapter NAME=DIR) or --checkpoint PATH".into(),
            ));
        }
    };
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let texts = match args.texts.is_empty() {
        false => args.texts.clone(),
        true => std::io::stdin()
            .lock()
            .lines()
            .map(|l| l.map_err(|e| Error::io("<stdin>", e)))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect(),
    };
    let base = BaseModel::parse(&args.base, BertHead::Mean);
    let device = parse_one_device(&args.device, "predict")?;
    let loaded = load_classifier(&base, &trained, args.pooling.as_deref(), &device)?;
    eprintln!(
        "classes: {} (from {}); pooling {}",
        loaded.labels.names().join(", "),
        loaded.source,
        loaded.pooling_name
    );
    match &loaded.model {
        LoadedModel::Gpt(model, tokenizer) => {
            classify(model.clone(), tokenizer, &loaded, &texts, &names, &args)
        }
        LoadedModel::Bert(model, tokenizer) => {
            classify(model.clone(), tokenizer, &loaded, &texts, &names, &args)
        }
    }
}

fn classify<C: Classifier>(
    model: C,
    tokenizer: &impl TextEncoder,
    loaded: &Loaded,
    texts: &[String],
    adapters: &[String],
    args: &Args,
) -> Result<(), Error> {
    if adapters.len() > 1 {
        if args.merge {
            return Err(Error::Usage(
                "--merge folds one adapter into the base; with several, each is served unmerged"
                    .into(),
            ));
        }
        return classify_mixed(model, tokenizer, loaded, texts, adapters, args);
    }
    let model = if args.merge {
        merge_lora(model)?
    } else {
        model
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = encode(tokenizer, &refs, loaded.max_len)?;
    let probs = predict(&model, &tokens, loaded.pooling, tokenizer.padding_id());
    for (text, p) in texts.iter().zip(probs) {
        answer(text, None, loaded.labels.names(), &p, args.json);
    }
    Ok(())
}

/// The ids of `texts` as the classifier reads them; notes on stderr how many were cut.
fn encode(
    tokenizer: &impl TextEncoder,
    texts: &[&str],
    max_len: usize,
) -> Result<Vec<Vec<u32>>, Error> {
    let (tokens, truncated) = encode_texts(tokenizer, texts, max_len)?;
    if truncated > 0 {
        eprintln!("note: {truncated} text(s) longer than {max_len} tokens were truncated");
    }
    Ok(tokens)
}

/// Prints one text's answer: its most likely class by name and that probability, or with
/// `json` one object (`text`, `label`, `class`, `probs`, and `adapter` when one was named).
fn answer(text: &str, adapter: Option<&str>, names: &[String], p: &[f32], json: bool) {
    let class = argmax(p);
    match (json, adapter) {
        (true, _) => {
            let mut line = serde_json::json!({
                "text": text, "label": names[class], "class": class, "probs": p,
            });
            if let Some(adapter) = adapter {
                line["adapter"] = adapter.into();
            }
            println!("{line}");
        }
        (false, Some(adapter)) => {
            println!("{adapter:<8} {:<8} {:.3}  {text}", names[class], p[class])
        }
        (false, None) => println!("{:<8} {:.3}  {text}", names[class], p[class]),
    }
}

/// Several adapters on one base: each line's adapter is the name before its tab, or the
/// first adapter; lines are answered in mixed batches of 32 (PEFT's `adapter_names`).
fn classify_mixed<C: Classifier>(
    model: C,
    tokenizer: &impl TextEncoder,
    loaded: &Loaded,
    lines: &[String],
    adapters: &[String],
    args: &Args,
) -> Result<(), Error> {
    let mut routed: Vec<(&str, &str)> = Vec::new();
    for line in lines {
        let (name, text) = match line.split_once('\t') {
            Some((name, text))
                if adapters.iter().any(|a| a == name) || name == burn_lora::BASE_ADAPTER =>
            {
                (name, text)
            }
            _ => (adapters[0].as_str(), line.as_str()),
        };
        routed.push((name, text));
    }
    let texts: Vec<&str> = routed.iter().map(|(_, t)| *t).collect();
    let tokens = encode(tokenizer, &texts, loaded.max_len)?;
    let device = model.head_layer().weight.device();
    let names = loaded.labels.names();
    for (chunk, pairs) in tokens.chunks(32).zip(routed.chunks(32)) {
        let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let batch = class_batch(&seqs, &vec![0; seqs.len()], tokenizer.padding_id(), &device);
        let pool = loaded.pooling.weights(&batch);
        let batch_names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        let logits = burn_lora::with_adapter_names(&model, &batch_names, || {
            model.classify(batch.tokens.clone(), batch.padding.clone(), pool.clone())
        })?;
        let probs = softmax(logits, 1).into_data().convert::<f32>();
        let probs = probs.try_to_vec::<f32>().unwrap_or_default();
        let classes = names.len();
        for (row, (adapter, text)) in pairs.iter().enumerate() {
            let p = &probs[row * classes..(row + 1) * classes];
            answer(text, Some(adapter), names, p, args.json);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    allocator::retain_freed_memory(); // buffers reused, not re-mapped: faster steps
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
