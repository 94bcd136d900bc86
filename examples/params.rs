//! Trainable vs frozen parameters: full fine-tuning against LoRA on the attention
//! query/value projections of a small Transformer-shaped model built from plain Burn layers.
//!
//! ```sh
//! cargo run --release --example params
//! cargo run --release --example params -- --rank 16 --targets all-linear
//! ```
//!
//! The model is plain Burn layers; `apply_lora` needs no code in it (see
//! `examples/custom_model.rs` for training, saving and merging such a model).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::Device;
use burn_lora::{LoraConfig, apply_lora, param_report};

/// One encoder block's weights: attention projections, an MLP, two norms.
#[derive(Module, Debug)]
struct Block {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    fc_in: Linear,
    fc_out: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

/// Token embeddings, blocks, and a two-class head.
#[derive(Module, Debug)]
struct Encoder {
    embedding: Embedding,
    blocks: Vec<Block>,
    head: Linear,
}

impl Block {
    fn new(d_model: usize, d_ff: usize, device: &Device) -> Self {
        let linear = |d_in, d_out| LinearConfig::new(d_in, d_out).init(device);
        Block {
            query: linear(d_model, d_model),
            key: linear(d_model, d_model),
            value: linear(d_model, d_model),
            out: linear(d_model, d_model),
            fc_in: linear(d_model, d_ff),
            fc_out: linear(d_ff, d_model),
            norm1: LayerNormConfig::new(d_model).init(device),
            norm2: LayerNormConfig::new(d_model).init(device),
        }
    }
}

struct Args {
    rank: usize,
    alpha: f64,
    targets: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rank: 8,
        alpha: 16.0,
        targets: vec!["query".into(), "value".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rank" => args.rank = value()?.parse().map_err(|e| format!("--rank: {e}"))?,
            "--alpha" => args.alpha = value()?.parse().map_err(|e| format!("--alpha: {e}"))?,
            "--targets" => args.targets = value()?.split(',').map(String::from).collect(),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; flags: --rank N --alpha X --targets a,b"
                ));
            }
        }
    }
    Ok(args)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let device = Device::default();
    let (vocab, d_model, d_ff, layers) = (8192, 128, 512, 4);
    let model = Encoder {
        embedding: EmbeddingConfig::new(vocab, d_model).init(&device),
        blocks: (0..layers)
            .map(|_| Block::new(d_model, d_ff, &device))
            .collect(),
        head: LinearConfig::new(d_model, 2).init(&device),
    };
    println!("model: vocab {vocab}, d_model {d_model}, {layers} blocks, d_ff {d_ff}, 2 classes\n");

    println!("== full fine-tuning: every parameter trains ==");
    println!("{}\n", param_report(&model));

    let config = LoraConfig::new()
        .with_rank(args.rank)
        .with_alpha(args.alpha)
        .with_target_modules(args.targets)
        .with_modules_to_save(vec!["head".into()]);
    let lora = apply_lora(model, &config).map_err(|e| e.to_string())?;
    println!(
        "== LoRA r={} alpha={} on {:?}, head trained ==",
        config.rank, config.alpha, config.target_modules
    );
    println!("{}", param_report(&lora));
    Ok(())
}

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(2);
    }
}
