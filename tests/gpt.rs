//! The GPT model: shapes, the causal mask, padding, learning, checkpoints.

mod common;

use common::scratch;
use std::fs;
use std::path::PathBuf;

use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_lora_demo::Error;
use burn_lora_demo::model::{Gpt, GptConfig, attention_bias};

fn config() -> GptConfig {
    GptConfig::new(50)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_d_ff(64)
        .with_max_seq_len(16)
        .with_dropout(0.0)
}

fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
    let seq = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), device)
}

fn no_padding(batch: usize, seq: usize, device: &Device) -> Tensor<2, Bool> {
    Tensor::from_data(
        TensorData::new(vec![false; batch * seq], [batch, seq]),
        device,
    )
}

fn model(device: &Device) -> Gpt {
    config().init(device)
}

#[test]
fn shapes_through_the_model() {
    let device = Device::default();
    let model = model(&device);
    let tokens = ids(&[&[1, 2, 3, 4, 5], &[6, 7, 8, 9, 10]], &device);
    let hidden = model.hidden(tokens.clone(), no_padding(2, 5, &device));
    assert_eq!(hidden.dims(), [2, 5, 32]);
    assert_eq!(
        model.forward(tokens, no_padding(2, 5, &device)).dims(),
        [2, 5, 50]
    );
}

#[test]
fn changing_a_later_token_never_changes_earlier_outputs() {
    let device = Device::default();
    let model = model(&device);
    let a = ids(&[&[3, 1, 4, 1, 5, 9, 2, 6]], &device);
    let b = ids(&[&[3, 1, 4, 1, 7, 7, 7, 7]], &device); // differs from position 4 on
    let pad = no_padding(1, 8, &device);
    let out_a = model.forward(a, pad.clone()).slice([0..1, 0..4]);
    let out_b = model.forward(b, pad).slice([0..1, 0..4]);
    assert_eq!(out_a.into_data(), out_b.into_data());
}

#[test]
fn later_outputs_do_depend_on_earlier_tokens() {
    let device = Device::default();
    let model = model(&device);
    let pad = no_padding(1, 4, &device);
    let a = model
        .forward(ids(&[&[3, 1, 4, 1]], &device), pad.clone())
        .slice([0..1, 3..4]);
    let b = model
        .forward(ids(&[&[8, 1, 4, 1]], &device), pad)
        .slice([0..1, 3..4]);
    assert!((a - b).abs().max().into_scalar::<f32>() > 1e-4);
}

#[test]
fn padding_does_not_change_real_tokens_outputs() {
    let device = Device::default();
    let model = model(&device);
    let alone = model.forward(ids(&[&[5, 6, 7]], &device), no_padding(1, 3, &device));
    let padding = Tensor::<2, Bool>::from_data(
        TensorData::new(
            vec![
                false, false, false, true, true, false, false, false, false, false,
            ],
            [2, 5],
        ),
        &device,
    );
    let batch = model.forward(ids(&[&[5, 6, 7, 0, 0], &[1, 2, 3, 4, 5]], &device), padding);
    let diff = (batch.slice([0..1, 0..3]) - alone)
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "padding changed outputs by {diff}");
}

#[test]
fn attention_bias_blocks_future_and_padding_keys() {
    let device = Device::default();
    let padding =
        Tensor::<2, Bool>::from_data(TensorData::new(vec![true, false, false], [1, 3]), &device);
    let bias = attention_bias(padding)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(bias.iter().all(|&b| b == 0.0 || b == f32::NEG_INFINITY));
    let blocked: Vec<bool> = bias.iter().map(|&b| b == f32::NEG_INFINITY).collect();
    // Rows are queries, columns keys: key 0 is padding; keys after the query are future.
    // A position always sees itself, so the padding row 0 is not all blocked (its softmax
    // would be NaN).
    #[rustfmt::skip]
    assert_eq!(blocked, [
        false, true, true,
        true, false, true,
        true, false, false,
    ]);
}

#[test]
fn loss_on_a_repeated_corpus_falls_close_to_zero() {
    let device = Device::default().autodiff();
    device.seed(0);
    let mut model = config().init(&device);
    let pattern: Vec<i64> = (0..8).map(|i| 10 + i).collect();
    let stream: Vec<i64> = pattern.iter().cycle().take(8 * 17 + 1).copied().collect();
    let inputs: Vec<i64> = stream[..stream.len() - 1].to_vec();
    let targets: Vec<i64> = stream[1..].to_vec();
    let rows = 8;
    let x = Tensor::<2, Int>::from_data(
        TensorData::new(inputs[..rows * 16].to_vec(), [rows, 16]),
        &device,
    );
    let y = Tensor::<1, Int>::from_data(
        TensorData::new(targets[..rows * 16].to_vec(), [rows * 16]),
        &device,
    );
    let pad = no_padding(rows, 16, &device);
    let loss_fn = CrossEntropyLoss::new(None, &device);
    let mut optim = AdamWConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..40 {
        let logits = model
            .forward(x.clone(), pad.clone())
            .reshape([rows * 16, 50]);
        let loss = loss_fn.forward(logits, y.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 3.0, "starts near ln(50) = 3.9, got {first}");
    assert!(last < 0.1, "after 40 steps the loss is {last}");
}

fn saved(name: &str, device: &Device) -> (PathBuf, Gpt) {
    let dir = scratch("gpt", name);
    let model = model(device);
    fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config()).unwrap(),
    )
    .unwrap();
    model.save(&dir.join("model.bpk")).unwrap();
    (dir, model)
}

#[test]
fn save_and_load_give_bit_identical_logits() {
    let device = Device::default();
    let (dir, model) = saved("round_trip", &device);
    let (_, loaded) = Gpt::load(&dir, "model.bpk", &device).unwrap();
    let tokens = ids(&[&[1, 2, 3, 4]], &device);
    let pad = no_padding(1, 4, &device);
    assert_eq!(
        loaded.forward(tokens.clone(), pad.clone()).into_data(),
        model.forward(tokens, pad).into_data()
    );
}

#[test]
fn corrupt_or_mismatched_config_is_a_typed_error() {
    let device = Device::default();
    let (dir, _) = saved("bad_config", &device);
    fs::write(dir.join("config.json"), "{\"vocab_size\": ").unwrap();
    let err = Gpt::load(&dir, "model.bpk", &device).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config().with_n_heads(5)).unwrap(),
    )
    .unwrap();
    let err = Gpt::load(&dir, "model.bpk", &device).unwrap_err();
    assert!(
        err.to_string().contains("not a multiple of n_heads"),
        "{err}"
    );

    fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config().with_d_model(64)).unwrap(),
    )
    .unwrap();
    let err = Gpt::load(&dir, "model.bpk", &device).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { .. }),
        "weights for another size: {err}"
    );
}

#[test]
fn corrupt_or_missing_weights_are_a_typed_error() {
    let device = Device::default();
    let (dir, _) = saved("bad_weights", &device);
    let err = Gpt::load(&dir, "missing.bpk", &device).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    let bytes = fs::read(dir.join("model.bpk")).unwrap();
    fs::write(dir.join("model.bpk"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Gpt::load(&dir, "model.bpk", &device).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("model.bpk"), "{err}");
}

#[test]
fn generation_is_autoregressive_and_top1_sampling_is_greedy() {
    use burn_lora_demo::model::{Sampling, generate};
    use rand::SeedableRng;
    let device = Device::default();
    let model = model(&device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let greedy = generate(&model, &[1, 2, 3], 20, None, Sampling::Greedy, &mut rng);
    assert_eq!(
        greedy.len(),
        20,
        "past the 16-token context it keeps the last 16"
    );
    let top1 = Sampling::TopK {
        k: 1,
        temperature: 0.7,
    };
    assert_eq!(
        generate(&model, &[1, 2, 3], 20, None, top1, &mut rng),
        greedy
    );
    // Each token is the argmax of the logits given everything before it.
    let mut context = vec![1i64, 2, 3];
    for &token in &greedy[..5] {
        let seq = context.len();
        let logits = model.forward(ids(&[&context], &device), no_padding(1, seq, &device));
        let next = logits
            .slice([0..1, seq - 1..seq])
            .argmax(2)
            .into_scalar::<i64>();
        assert_eq!(next, token as i64);
        context.push(next);
    }
    let stop = greedy[2];
    let stopped = generate(
        &model,
        &[1, 2, 3],
        20,
        Some(stop),
        Sampling::Greedy,
        &mut rng,
    );
    assert_eq!(stopped.last(), Some(&stop));
    assert!(stopped.len() <= 3);
}
