//! LoRA in your own model, with no code changes to it: a model built only from stock
//! `burn::nn` layers (a `TransformerEncoder` and a `Linear` head) gets adapters on its
//! attention's query and value, trains on a small made-up task, and round-trips through
//! PEFT-format files.
//!
//! ```sh
//! cargo run --release --example custom_model
//! ```

use burn::module::Module;
use burn::nn::loss::CrossEntropyLoss;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_lora::{LoraConfig, apply_lora, load_adapter, merge_lora, param_report, save_adapter};

/// Tokens in, two classes out: embeddings, a stock Transformer encoder, mean pooling and a
/// `head`. Nothing here knows about LoRA.
#[derive(Module, Debug)]
struct Model {
    embedding: Embedding,
    encoder: TransformerEncoder,
    head: Linear,
}

const VOCAB: usize = 16;
const SEQ: usize = 8;
const D_MODEL: usize = 32;

impl Model {
    fn new(device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            encoder: TransformerEncoderConfig::new(D_MODEL, 64, 4, 2)
                .with_dropout(0.0)
                .init(device),
            head: LinearConfig::new(D_MODEL, 2).init(device),
        }
    }

    /// # Shapes
    ///
    /// - tokens: `[batch, seq]`
    /// - output: `[batch, 2]`
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        let x = self.embedding.forward(tokens); // [batch, seq, d_model]
        let h = self.encoder.forward(TransformerEncoderInput::new(x));
        let [batch, _, d] = h.dims();
        self.head.forward(h.mean_dim(1).reshape([batch, d]))
    }
}

/// The made-up task: is token 1 more frequent than token 2 in the sequence? Deterministic
/// pseudo-random sequences from `seed`.
fn batch(seed: u64, n: usize, device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut tokens = Vec::with_capacity(n * SEQ);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<i64> = (0..SEQ).map(|_| (next() % VOCAB) as i64).collect();
        let count = |t| row.iter().filter(|&&x| x == t).count();
        labels.push(i64::from(count(1) > count(2)));
        tokens.extend(row);
    }
    (
        Tensor::from_data(TensorData::new(tokens, [n, SEQ]), device),
        Tensor::from_data(TensorData::new(labels, [n]), device),
    )
}

fn main() -> Result<(), burn_lora::Error> {
    let device = Device::default().autodiff();
    device.seed(7);
    let base = Model::new(&device);

    // 1. Adapters on every layer's attention query and value; the head trains in full.
    let config = LoraConfig::new()
        .with_rank(4)
        .with_alpha(8.0)
        .with_target_modules(vec!["query".into(), "value".into()])
        .with_modules_to_save(vec!["head".into()]);
    let mut model = apply_lora(base.clone(), &config)?;

    // 2. What trains, what does not.
    let report = param_report(&model);
    println!("{report}\n");

    // 3. A few hundred steps: the loss falls.
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let steps = 300;
    let mut first = None;
    let mut last = 0.0;
    for step in 0..steps {
        let (tokens, labels) = batch(step as u64, 32, &device);
        let loss = loss_fn.forward(model.forward(tokens), labels);
        let value = loss.clone().into_scalar::<f64>();
        first.get_or_insert(value);
        last = value;
        if step % 50 == 0 || step + 1 == steps {
            println!("step {step:>3}: loss {value:.4}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let (tokens, labels) = batch(10_000, 512, &device);
    let model = model.valid();
    let accuracy = model
        .forward(tokens.clone().inner())
        .argmax(1)
        .reshape([512])
        .equal(labels.inner())
        .int()
        .sum()
        .into_scalar::<i64>() as f64
        / 512.0;
    println!(
        "loss {:.4} -> {last:.4}; held-out accuracy {accuracy:.3}\n",
        first.unwrap_or(0.0)
    );

    // 4. Save in PEFT's format, load onto a freshly built base: identical outputs.
    let dir = std::env::temp_dir().join(format!("burn-lora-custom-{}", std::process::id()));
    save_adapter(&model, &dir)?;
    let fresh = load_adapter(base.valid(), &dir)?;
    let tokens = tokens.inner();
    let trained = model.forward(tokens.clone());
    let reloaded = fresh.forward(tokens.clone());
    let diff = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
    println!(
        "saved and reloaded: max |Δ| = {:.2e}",
        diff(reloaded, trained.clone())
    );
    let _ = std::fs::remove_dir_all(&dir);

    // 5. Merge: plain weights, no adapters left, the same outputs.
    let merged = merge_lora(model)?;
    println!(
        "merged: max |Δ| = {:.2e}, {} adapters left",
        diff(merged.forward(tokens), trained),
        burn_lora::adapters(&merged).len()
    );
    Ok(())
}
