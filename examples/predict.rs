//! Classifies new text with a fine-tuned model: the base plus a LoRA adapter, or a full
//! fine-tuned checkpoint.
//!
//! ```sh
//! cargo run --release --example predict -- --adapter runs/sentiment/lora_adapter "A gem of a film."
//! echo "Dull and far too long." | cargo run --release --example predict -- --adapter runs/sentiment/lora_adapter --json
//! cargo run --release --example predict -- --checkpoint runs/sentiment/full_model.bpk "Loved it"
//! cargo run --release --example predict -- --base hf:PATH/bert --adapter PATH/adapter --pooling cls "Loved it"
//! ```

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use burn_lora::merge_lora;
use burn_lora_demo::Error;
use burn_lora_demo::data::{Example, SentimentDataset};
use burn_lora_demo::device::parse_one_device;
use burn_lora_demo::model::bert::BertHead;
use burn_lora_demo::model::{Classifier, Pooling};
use burn_lora_demo::tokenizer::TextEncoder;
use burn_lora_demo::train::sentiment::{
    BaseModel, DEFAULT_BASE, Loaded, Trained, load_classifier, parse_pooling,
};
use burn_lora_demo::train::{encode_dataset, predict};
use clap::Parser;

/// Sentiment of each text: label (0 negative, 1 positive) and probabilities.
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
    /// A LoRA run's PEFT-format adapter directory.
    #[arg(long, conflicts_with = "checkpoint")]
    adapter: Option<PathBuf>,
    /// A full fine-tuned checkpoint (`full_model.bpk`).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print one JSON object per text.
    #[arg(long)]
    json: bool,
    /// Merge the adapter into the base weights first (same answers, plain linears).
    #[arg(long)]
    merge: bool,
    /// Pooling the model was trained with: `last` or `mean` for our GPT (default `last`),
    /// `mean` or `cls` for BERT (default `mean`; `cls` for PEFT SEQ_CLS adapters).
    #[arg(long)]
    pooling: Option<String>,
}

fn run(args: Args) -> Result<(), Error> {
    let trained = match (args.adapter.clone(), args.checkpoint.clone()) {
        (Some(dir), None) => Trained::Adapter(dir),
        (None, Some(path)) => Trained::Checkpoint(path),
        _ => {
            return Err(Error::Usage(
                "give --adapter DIR or --checkpoint PATH".into(),
            ));
        }
    };
    let bert = BaseModel::parse(&args.base, BertHead::Mean).is_bert();
    let (pooling, head) = parse_pooling(args.pooling.as_deref(), bert)?;
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
    let base = BaseModel::parse(&args.base, head);
    match load_classifier(&base, &trained, &parse_one_device(&args.device, "predict")?)? {
        Loaded::Gpt(model, tokenizer, max_len) => {
            classify(model, &tokenizer, max_len, pooling, &texts, &args)
        }
        Loaded::Bert(model, tokenizer, max_len) => {
            classify(model, &tokenizer, max_len, pooling, &texts, &args)
        }
    }
}

fn classify<C: Classifier>(
    model: C,
    tokenizer: &impl TextEncoder,
    max_len: usize,
    pooling: Pooling,
    texts: &[String],
    args: &Args,
) -> Result<(), Error> {
    let model = if args.merge {
        merge_lora(model)?
    } else {
        model
    };
    let examples = texts
        .iter()
        .map(|t| Example {
            label: 0,
            text: t.clone(),
        })
        .collect();
    let data = SentimentDataset {
        path: "<input>".into(),
        examples,
    };
    let encoded = encode_dataset(tokenizer, &data, max_len)?;
    if encoded.truncated > 0 {
        eprintln!(
            "note: {} text(s) longer than {max_len} tokens were truncated",
            encoded.truncated
        );
    }
    let probs = predict(&model, &encoded.tokens, pooling, tokenizer.padding_id());
    for (text, p) in texts.iter().zip(probs) {
        let label = usize::from(p[1] > p[0]);
        if args.json {
            let json = serde_json::json!({"text": text, "label": label, "probs": [p[0], p[1]]});
            println!("{json}");
        } else {
            let name = ["negative", "positive"][label];
            println!("{name:<8} {:.3}  {text}", p[label]);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    burn_lora_demo::memory::retain_freed_memory(); // buffers reused, not re-mapped: faster steps
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
