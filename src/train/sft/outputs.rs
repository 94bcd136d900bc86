//! What an SFT run measures and writes at its end: the test loss and exact match, the
//! adapter or the weights, and the loss curve.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn_lora::{PeftOptions, save_adapter_with};

use crate::Error;
use crate::data::{SftTokens, sft_batch};
use crate::model::{DecoderBase, GenerateOptions, Sampling, generate_batch};
use crate::train::sft::job::{SftMode, SftOptions};
use crate::train::sft::progress::Curve;
use crate::train::sft::step::{SftModel, summed_loss};

/// Test loss per completion token, and exact match when the completions are labels.
pub(crate) fn evaluate(
    model: &SftModel,
    base: &DecoderBase,
    rows: &[SftTokens],
    options: &SftOptions,
) -> Result<(f64, Option<f64>), Error> {
    let device = model.decoder.devices()[0].clone();
    let (mut sum, mut count) = (0.0, 0usize);
    for chunk in rows.chunks(options.batch_size) {
        let refs: Vec<&SftTokens> = chunk.iter().collect();
        let (s, n) = summed_loss(&model.forward_sft(sft_batch(&refs, base.pad, &device)));
        (sum, count) = (sum + s, count + n);
    }
    let eval_loss = sum / count.max(1) as f64;
    // Prompt (before the first learnt token) and completion (the learnt tokens, EOS off).
    let split = |row: &SftTokens| {
        let at = row.learn.iter().position(|&l| l).unwrap_or(row.ids.len());
        let completion: Vec<u32> = row.ids[at..]
            .iter()
            .copied()
            .filter(|id| !base.eos.contains(id))
            .collect();
        (row.ids[..at].to_vec(), completion)
    };
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = rows
        .iter()
        .take(options.max_exact.unwrap_or(usize::MAX))
        .map(split)
        .collect();
    let longest = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    if longest > 8 || pairs.is_empty() {
        return Ok((eval_loss, None));
    }
    let generate = GenerateOptions {
        max_new_tokens: longest + 1,
        sampling: Sampling::Greedy,
        eos: base.eos.clone(),
        pad: base.pad,
        use_cache: true,
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let mut correct = 0;
    for chunk in pairs.chunks(64) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|(p, _)| p.clone()).collect();
        let generated = generate_batch(&model.decoder, &prompts, &generate, &mut rng)?;
        for ((_, want), got) in chunk.iter().zip(generated) {
            let got = base.tokenizer.decode(&got.tokens)?;
            let want = base.tokenizer.decode(want)?;
            correct += usize::from(got.trim() == want.trim());
        }
    }
    Ok((eval_loss, Some(correct as f64 / pairs.len() as f64)))
}

/// Saves the adapter (PEFT's files, `task_type: CAUSAL_LM`) or the full weights.
pub(crate) fn save(
    model: &SftModel,
    base: &DecoderBase,
    dir: &Path,
    mode: SftMode,
) -> Result<PathBuf, Error> {
    match mode {
        SftMode::Lora => {
            let path = dir.join("adapter");
            let options = PeftOptions::new()
                .with_task_type("CAUSAL_LM")
                .with_base_model_name_or_path(&base.name);
            save_adapter_with(&model.decoder, &path, &options)?;
            Ok(path)
        }
        SftMode::Full => {
            let path = dir.join("model.bpk");
            crate::io::save_module(model.decoder.clone(), &path)?;
            Ok(path)
        }
    }
}

pub(crate) fn write_curve(dir: &Path, curve: &Curve) -> Result<(), Error> {
    let per_epoch = curve.batches_per_epoch.max(1) as f64;
    let train: Vec<(f64, f64)> = curve
        .train_loss
        .iter()
        .enumerate()
        .map(|(i, &l)| ((i + 1) as f64, l))
        .collect();
    let valid: Vec<(f64, f64)> = curve
        .valid_loss
        .iter()
        .enumerate()
        .map(|(e, &l)| ((e + 1) as f64 * per_epoch, l))
        .collect();
    let svg = crate::train::svg_line_plot(
        "SFT loss (completion tokens)",
        "step",
        "loss",
        &[("train", train), ("validation", valid)],
    );
    crate::io::write_atomic(&dir.join("loss_curve.svg"), svg.as_bytes())
}
