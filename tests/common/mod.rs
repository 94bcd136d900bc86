//! Shared test helpers: safetensors reading, tolerances, scratch directories, and a tiny
//! base and data set for the sentiment job.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use burn_lora_demo::model::GptConfig;
use burn_lora_demo::tokenizer::{SPECIAL_TOKENS, train_tokenizer};
use safetensors::SafeTensors;

/// A tensor from a safetensors file, as Burn data.
pub fn read(st: &SafeTensors, key: &str) -> TensorData {
    let view = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("golden file lacks {key}"));
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    TensorData::new(values, view.shape().to_vec())
}

pub fn tensor<const D: usize>(st: &SafeTensors, key: &str, device: &Device) -> Tensor<D> {
    Tensor::from_data(read(st, key), device)
}

/// A Burn `Linear` from PyTorch's `{name}.weight` `[d_out, d_in]` and `{name}.bias`.
pub fn linear_from_torch(st: &SafeTensors, name: &str, device: &Device) -> Linear {
    let weight = tensor::<2>(st, &format!("{name}.weight"), device).transpose();
    let bias = st
        .tensor(&format!("{name}.bias"))
        .ok()
        .map(|_| Param::from_tensor(tensor::<1>(st, &format!("{name}.bias"), device)));
    Linear {
        weight: Param::from_tensor(weight),
        bias,
    }
}

/// Asserts `got` matches `want` element-wise within `1e-5` relative (floored at `1e-5`
/// absolute, for values near zero), naming the first mismatch.
pub fn assert_close(what: &str, got: TensorData, want: TensorData) {
    assert_close_within(what, got, want, 1e-5);
}

/// Asserts `|got - want| <= tol · max(|want|, 1)` elementwise.
#[track_caller]
pub fn assert_close_within(what: &str, got: TensorData, want: TensorData, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let got = got.try_to_vec::<f32>().unwrap();
    let want = want.try_to_vec::<f32>().unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = tol * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol:e})"
        );
    }
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// An empty directory `target/tmp/<group>/<name>` for one test's files.
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub const POSITIVE: [&str; 6] = [
    "good",
    "great fun",
    "a good film",
    "great acting",
    "good and fun",
    "fun",
];
pub const NEGATIVE: [&str; 6] = [
    "bad",
    "dull plot",
    "a bad film",
    "dull acting",
    "bad and dull",
    "awful",
];

/// Writes a tiny labelled file: `copies` rounds of the word lists.
pub fn write_tsv(path: &Path, copies: usize) {
    let mut text = String::new();
    for i in 0..copies {
        for (p, n) in POSITIVE.iter().zip(NEGATIVE) {
            text.push_str(&format!("1\t{p} {i}\n0\t{n} {i}\n"));
        }
    }
    fs::write(path, text).unwrap();
}

/// Holds Burn's random number generator for one test. Its seed and draws are the backend's,
/// shared by every thread: tests that train side by side in one binary interleave their
/// draws and change each other's runs, so a test whose assertion depends on its draws (the
/// loss falls on the tiny task) holds this, as does every test beside it that draws.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A tiny random base (config.json, model.bpk, tokenizer.json) in `dir`.
pub fn tiny_base(dir: &Path) {
    tiny_base_with(dir, 16);
}

/// A tiny random base of width `d_model` (1 block, 2 heads, context 16) in `dir`.
pub fn tiny_base_with(dir: &Path, d_model: usize) {
    let texts: Vec<String> = POSITIVE
        .iter()
        .chain(&NEGATIVE)
        .map(|s| s.to_string())
        .collect();
    let tokenizer = train_tokenizer(&texts, 280, &SPECIAL_TOKENS).unwrap();
    tokenizer.save(dir.join("tokenizer.json")).unwrap();
    let config = GptConfig::new(tokenizer.vocab_size())
        .with_d_model(d_model)
        .with_n_layers(1)
        .with_n_heads(2)
        .with_d_ff(32)
        .with_max_seq_len(16)
        .with_dropout(0.0);
    fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    // Seeded: a base drawn afresh each run made the tests that train on it (the loss falls)
    // pass or fail with the draw.
    let device = Device::default();
    device.seed(7);
    config.init(&device).save(&dir.join("model.bpk")).unwrap();
}

/// Options for the sentiment job on a tiny base and word-list data written into `dir`
/// (`train.tsv`, `test.tsv`, `extra.tsv` as an `--eval-file`), output in `dir/out`.
pub fn tiny_job(
    dir: &Path,
    modes: Vec<burn_lora_demo::train::FinetuneMode>,
) -> burn_lora_demo::train::sentiment::SentimentOptions {
    tiny_base(dir);
    write_tsv(&dir.join("train.tsv"), 4);
    write_tsv(&dir.join("test.tsv"), 1);
    write_tsv(&dir.join("extra.tsv"), 1);
    burn_lora_demo::train::sentiment::SentimentOptions {
        dataset: "tiny".into(),
        train_file: dir.join("train.tsv"),
        test_file: dir.join("test.tsv"),
        eval_files: vec![dir.join("extra.tsv")],
        base: burn_lora_demo::train::sentiment::BaseModel::Gpt(dir.to_path_buf()),
        max_len: None,
        modes,
        lr: Some(1e-2),
        epochs: 4,
        batch_size: 8,
        seed: 1,
        max_train: None,
        out: dir.join("out"),
        pooling: burn_lora_demo::model::Pooling::LastToken,
        overwrite: true,
        replicas: 2,
        read: burn_lora_demo::data::ReadOptions::default(),
        checkpoint_every: None,
        resume: false,
        init_adapter: None,
        keep: burn_lora_demo::train::checkpoint::Keep::Best,
        quantize: None,
    }
}

/// LoRA r=2, alpha=4 on the default targets, with the GPT classifier's head trained.
pub fn tiny_lora() -> burn_lora::LoraConfig {
    burn_lora::LoraConfig::new()
        .with_rank(2)
        .with_alpha(4.0)
        .with_modules_to_save(vec!["head".into()])
}

/// Every float parameter's id and values, in visiting order.
pub fn param_values<M: Module>(model: &M) -> Vec<(String, TensorData)> {
    struct Collect(Vec<(String, TensorData)>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id.to_string(), param.val().into_data()));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}
