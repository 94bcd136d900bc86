//! `--llm`: the LLM-size cases. A decoder with the geometry of Qwen2.5-0.5B (24 layers,
//! d 896, 14 query heads, 2 key-value heads, FFN 4864, vocab 151,936, tied embedding) and
//! random weights made here, so nothing is downloaded; `scripts/peft_bench.py --llm` builds
//! the same one from transformers' `Qwen2Config`.
//!
//! Cases, each in a process of its own (its peak RSS is its own):
//! - `llm_lora_step`: one AdamW step of LoRA r 16 (alpha 32) on every linear, next-token
//!   cross-entropy on a `batch × seq` batch of random tokens, the head and the loss 128
//!   positions at a time with their gradient in the forward pass
//!   ([`linear_cross_entropy`]; `--plain-head-loss` for Burn's `CrossEntropyLoss` on the
//!   whole logits, as transformers computes it);
//! - `llm_lora_q8_step`: the same on a base whose linears are Q8 (per block of 32), each
//!   decoder layer quantized as soon as it is drawn;
//! - `llm_lora_ckpt_step`: the same with gradient checkpointing per decoder block, as
//!   transformers' `gradient_checkpointing_enable` does it, the head and loss as above
//!   (`train::recompute::backward_per_block_cross_entropy`; with `--plain-head-loss`,
//!   Burn's `CrossEntropyLoss` 64 positions at a time through
//!   `backward_per_block_chunked`; Burn's own checkpointing, per operation, saved 6 %);
//! - `llm_lora_q8_ckpt_step`: the Q8 base with the same checkpointing;
//! - `llm_lora_q8_embed_step`, `llm_lora_q8_embed_ckpt_step`: the same two with the tied
//!   embedding Q8 as well (per block of 32), the whole base quantized as GGUF's Q8_0 files
//!   have it; the lookup dequantizes the rows it reads ([`burn_lora::embedding`]) and the
//!   tied head 4 MiB of rows at a time ([`burn_lora::quantized_matmul`]). bitsandbytes keeps
//!   embeddings float, so PyTorch has no such case;
//! - `llm_full_step`: a full fine-tuning step;
//! - `llm_prefill`: one forward pass over the batch, no gradients;
//! - `llm_decode_b1`, `llm_decode_b4`: greedy decoding through the KV cache of 1 and 4
//!   prompts, prefill included, as transformers' `generate` is timed.

use std::time::Instant;

use burn::module::{Module, Quantizer};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::AdamWConfig;
use burn::optim::GradientsParams;
use burn::tensor::quantization::Calibration;
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_lora::{ALL_LINEAR, LoraConfig, apply_lora, param_report};
use burn_lora_demo::memory::release_free_memory;
use burn_lora_demo::model::CausalLm;
use burn_lora_demo::model::llama::{DecoderLayer, Llama, LlamaConfig};
use burn_lora_demo::model::{GenerateOptions, Sampling, generate_batch};
use burn_lora_demo::train::head_loss::linear_cross_entropy;
use burn_lora_demo::train::parallel::{PartGrads, on_threads, parallel_part_grads};
use burn_lora_demo::train::quantize::BaseQuant;
use burn_lora_demo::train::recompute::{
    backward_per_block_chunked, backward_per_block_cross_entropy,
};
use serde_json::{Value, json};

/// The cases, in the order they run and are written.
pub const CASES: [&str; 10] = [
    "llm_lora_step",
    "llm_lora_q8_step",
    "llm_lora_ckpt_step",
    "llm_lora_q8_ckpt_step",
    "llm_lora_q8_embed_step",
    "llm_lora_q8_embed_ckpt_step",
    "llm_full_step",
    "llm_prefill",
    "llm_decode_b1",
    "llm_decode_b4",
];

/// Positions per chunk of the head and loss in the checkpointed cases with
/// `--plain-head-loss`: the logits of 64
/// positions of 2 rows are 78 MB, of all 255 positions 310 MB.
const HEAD_CHUNK: usize = 64;

/// Positions per chunk of [`linear_cross_entropy`] in the training cases: the logits
/// of 128 positions are 78 MB, of a replica's 510 positions 310 MB. On the AMD EPYC of
/// 2026-12-04 (`llm_lora_step`, one 2-step run each, the slower step): chunks of 48, 128
/// and 510 positions took 16.4, 15.7 and 16.2 s and peaked at 6.46, 6.54 and 7.00 GB;
/// smaller chunks re-read the head's 544 MB weight more often, larger ones map more fresh
/// memory.
const LOSS_CHUNK: usize = 128;

/// Batch shape and decoding lengths of the LLM cases.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlmSizes {
    /// Training and prefill batch.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// LoRA rank (alpha = 2 · rank).
    pub rank: usize,
    /// Training threads, each with its share of the batch.
    pub replicas: usize,
    /// Prompt tokens per row when decoding.
    pub prompt: usize,
    /// Tokens generated per row when decoding.
    pub new_tokens: usize,
    /// The training cases take the loss through Burn's `CrossEntropyLoss` on the logits
    /// (whole, or 64 positions a chunk with checkpointing) instead of
    /// [`linear_cross_entropy`].
    pub plain_head_loss: bool,
}

/// The geometry `name` names: `qwen2-0.5b`, or `tiny` (the same shape of model, small
/// enough for a test).
pub fn geometry(name: &str) -> Result<LlamaConfig, String> {
    let (hidden, ffn, layers, heads, kv, vocab) = match name {
        "qwen2-0.5b" => (896, 4864, 24, 14, 2, 151_936),
        "tiny" => (64, 128, 2, 4, 2, 512),
        other => return Err(format!("--llm {other}: use qwen2-0.5b or tiny")),
    };
    // Qwen2.5-0.5B's config.json, sizes and all, as transformers reads it.
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "max_position_embeddings": 32768,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": true,
        "use_sliding_window": false,
        "vocab_size": vocab,
        "bos_token_id": 151_643,
        "eos_token_id": 151_643,
    });
    LlamaConfig::parse(config.to_string().as_bytes(), std::path::Path::new(name))
        .map_err(|e| e.to_string())
}

/// Runs one case and returns its JSON: `name`, `median_seconds`, `min_seconds`,
/// `max_seconds`, `trainable_params`, `params`, and `tokens_per_second` for prefill and
/// decode.
pub fn run(
    name: &str,
    config: &LlamaConfig,
    sizes: &LlmSizes,
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<Value, String> {
    let times = |mut f: Box<dyn FnMut() + '_>| {
        let mut times = Vec::new();
        for i in 0..warmup + steps {
            let start = Instant::now();
            f();
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        times
    };
    let (times, trainable, tokens) = match name {
        "llm_lora_step"
        | "llm_lora_q8_step"
        | "llm_lora_ckpt_step"
        | "llm_lora_q8_ckpt_step"
        | "llm_lora_q8_embed_step"
        | "llm_lora_q8_embed_ckpt_step"
        | "llm_full_step" => {
            let device = device.clone().autodiff();
            device.seed(0);
            let model = match name {
                "llm_full_step" => config.init(&device),
                "llm_lora_q8_step" | "llm_lora_q8_ckpt_step" => {
                    lora(init_q8(config, false, &device)?, sizes)?
                }
                "llm_lora_q8_embed_step" | "llm_lora_q8_embed_ckpt_step" => {
                    lora(init_q8(config, true, &device)?, sizes)?
                }
                _ => lora(config.init(&device), sizes)?,
            };
            // The float weights a quantized base replaced sit in the allocator's heap
            // (the examples keep freed memory for reuse: `common/allocator.rs`); hand them
            // back, as a long job would, so the steps' peak is not the setup's leftovers.
            release_free_memory();
            let trainable = param_report(&model).trainable;
            let per_block = name.ends_with("_ckpt_step");
            let step = train_step(model, sizes, per_block, &device);
            (times(Box::new(step)), trainable, None)
        }
        "llm_prefill" => {
            device.seed(0);
            let model = config.init(device);
            let parts: Vec<_> = row_parts(sizes.batch, sizes.replicas)
                .into_iter()
                .map(|rows| random_tokens(rows, sizes.seq, config.vocab_size, device))
                .collect();
            let f = move || {
                let inputs: Vec<_> = parts.iter().map(|t| (model.clone(), t.clone())).collect();
                on_threads(inputs, |_, (model, tokens)| {
                    model.forward(tokens).into_data()
                });
            };
            (times(Box::new(f)), 0, Some(sizes.batch * sizes.seq))
        }
        "llm_decode_b1" | "llm_decode_b4" => {
            let rows = if name == "llm_decode_b1" { 1 } else { 4 };
            device.seed(0);
            let model = config.init(device);
            let prompts: Vec<Vec<u32>> = (0..rows)
                .map(|row| {
                    (0..sizes.prompt)
                        .map(|i| ((row * 7919 + i * 104_729) % (config.vocab_size - 1) + 1) as u32)
                        .collect()
                })
                .collect();
            // No end-of-sequence token: every row generates exactly `new_tokens`.
            let options = GenerateOptions {
                max_new_tokens: sizes.new_tokens,
                sampling: Sampling::Greedy,
                eos: Vec::new(),
                pad: 0,
                use_cache: true,
            };
            let f = move || {
                let mut rng = rand::rng();
                let out = generate_batch(&model, &prompts, &options, &mut rng)
                    .expect("prompts are valid");
                assert!(out.iter().all(|g| g.tokens.len() == options.max_new_tokens));
            };
            (times(Box::new(f)), 0, Some(rows * sizes.new_tokens))
        }
        other => return Err(format!("unknown case {other}")),
    };
    let median = crate::median(&times);
    let mut out = json!({
        "name": name,
        "median_seconds": median,
        "min_seconds": times[0],
        "max_seconds": times[times.len() - 1],
        "trainable_params": trainable,
        "params": config.num_params(),
    });
    if let Some(tokens) = tokens {
        out["tokens_per_second"] = json!(tokens as f64 / median);
    }
    Ok(out)
}

/// A model whose decoder layers' linears are Q8 (per block of 32), each layer quantized as
/// soon as it is made, as a loader quantizing a checkpoint layer by layer would: the f32
/// model is never whole, so the process's peak is the step's, not the f32 model's. With
/// `embedding`, the (tied) token embedding is Q8 too, quantized before the first layer is
/// drawn.
fn init_q8(config: &LlamaConfig, embedding: bool, device: &Device) -> Result<Llama, String> {
    let mut model = LlamaConfig {
        num_hidden_layers: 0,
        ..config.clone()
    }
    .init(device);
    // Parameters are drawn when first read: the embedding first, then each layer, as a
    // loader reads a checkpoint.
    let _ = model.model.embed_tokens.weight.val();
    if embedding {
        let mut quantizer = Quantizer::new(Calibration::MinMax, BaseQuant::Q8.scheme());
        // Untracked first, as `quantize_linears` does: Burn's quantizer keeps a tracked
        // weight's range computation in the autodiff graph for good (73 MiB here).
        let table = model.model.embed_tokens.no_grad();
        model.model.embed_tokens = table.quantize_weights(&mut quantizer);
        release_free_memory();
    }
    for _ in 0..config.num_hidden_layers {
        let layer = DecoderLayer::new(config, device);
        let layer = BaseQuant::Q8
            .quantize(layer, &[])
            .map_err(|e| e.to_string())?;
        model.model.layers.push(layer);
        // The layer's f32 weights, freed, sit in the allocator's heap (the examples keep
        // freed memory for reuse); hand them back before the next layer is drawn.
        release_free_memory();
    }
    Ok(model)
}

/// LoRA r `sizes.rank`, alpha 2r, on every linear (q, k, v, o, gate, up, down), as PEFT's
/// `target_modules="all-linear"` takes them on a causal LM.
fn lora(model: Llama, sizes: &LlmSizes) -> Result<Llama, String> {
    let config = LoraConfig::new()
        .with_rank(sizes.rank)
        .with_alpha(2.0 * sizes.rank as f64)
        .with_target_modules(vec![ALL_LINEAR.into()]);
    apply_lora(model, &config).map_err(|e| e.to_string())
}

/// How many rows each of `replicas` threads takes.
fn row_parts(batch: usize, replicas: usize) -> Vec<usize> {
    let per = batch.div_ceil(replicas.clamp(1, batch));
    (0..batch)
        .step_by(per)
        .map(|start| per.min(batch - start))
        .collect()
}

fn random_tokens(rows: usize, seq: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::random(
        [rows, seq],
        Distribution::Uniform(0.0, vocab as f64),
        device,
    )
}

/// One AdamW step (lr 1e-4) of next-token cross-entropy: each replica predicts tokens
/// `1..seq` of its rows from `0..seq-1`, as transformers' `labels=input_ids` does. With
/// `per_block`, each replica's backward pass recomputes one decoder block at a time.
fn train_step(model: Llama, sizes: &LlmSizes, per_block: bool, device: &Device) -> impl FnMut() {
    let fused = !sizes.plain_head_loss;
    let vocab = model.model.embed_tokens.weight.dims()[0];
    let parts: Vec<_> = row_parts(sizes.batch, sizes.replicas)
        .into_iter()
        .map(|rows| random_tokens(rows, sizes.seq, vocab, device))
        .collect();
    let (batch, seq) = (sizes.batch, sizes.seq);
    let loss_fn = CrossEntropyLoss::new(None, device);
    let devices = vec![device.clone(); parts.len()];
    let mut optim = AdamWConfig::new().init();
    let mut model = Some(model);
    move || {
        let current = model.take().expect("the model is put back after each step");
        let (grads, _, _) = parallel_part_grads(&current, &devices, |replica: &Llama, p, _| {
            let tokens = parts[p].clone();
            let rows = tokens.dims()[0];
            let inputs = tokens.clone().slice([0..rows, 0..seq - 1]);
            let targets = tokens.slice([0..rows, 1..seq]); // [rows, seq - 1]
            // The mean over the batch's tokens of positions `start..start + len`'s share.
            let loss = |logits: Tensor<3>, start: usize| {
                let len = logits.dims()[1];
                let targets = targets.clone().slice([0..rows, start..start + len]);
                loss_fn
                    .forward(
                        logits.reshape([rows * len, vocab]),
                        targets.reshape([rows * len]),
                    )
                    .mul_scalar((rows * len) as f64 / (batch * (seq - 1)) as f64)
            };
            let (loss, grads) = match per_block {
                true if fused => {
                    let padding = inputs.clone().equal_elem(-1);
                    let share = rows as f64 / batch as f64; // of the batch's tokens
                    backward_per_block_cross_entropy(
                        replica,
                        inputs,
                        padding,
                        targets.clone(),
                        share,
                        LOSS_CHUNK,
                    )
                    .expect("no dropout in the bench model")
                }
                true => {
                    let padding = inputs.clone().equal_elem(-1);
                    backward_per_block_chunked(replica, inputs, padding, HEAD_CHUNK, loss)
                        .expect("no dropout in the bench model")
                }
                false if fused => {
                    let padding = inputs.clone().equal_elem(-1);
                    let hidden = replica.hidden(inputs, padding); // [rows, seq - 1, d]
                    let [_, len, d] = hidden.dims();
                    let loss = linear_cross_entropy(
                        hidden.reshape([rows * len, d]),
                        &replica.linear_head(),
                        targets.clone().reshape([rows * len]),
                        LOSS_CHUNK,
                    )
                    .expect("the shapes agree")
                    .mul_scalar((rows * len) as f64 / (batch * (seq - 1)) as f64);
                    (
                        loss.clone(),
                        GradientsParams::from_grads(loss.backward(), replica),
                    )
                }
                false => {
                    let loss = loss(replica.forward(inputs), 0);
                    (
                        loss.clone(),
                        GradientsParams::from_grads(loss.backward(), replica),
                    )
                }
            };
            PartGrads {
                loss: loss.into_scalar::<f64>(),
                grads,
                extra: (),
            }
        });
        let next = optim.step(1e-4, current, grads);
        // Wait for the update to finish.
        let _ = next.model.norm.gamma.val().into_data();
        model = Some(next);
    }
}
