//! The fuzz targets' seed corpus (`fuzz/seeds/`): each committed seed is a valid input, so
//! fuzzing starts from files that reach deep into the parsers. Rebuild the seeds that are
//! made by code (the adapter and the tokenizer) with
//!
//! ```sh
//! BURN_LORA_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds
//! ```

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn_lora::{LoraConfig, apply_lora, load_adapter_weights, parse_adapter_config, save_adapter};
use burn_lora_demo::data::{ReadOptions, SentimentDataset};
use burn_lora_demo::model::{GptClassifier, GptConfig, parse_config};
use burn_lora_demo::tokenizer::BpeTokenizer;

fn seeds(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn writing() -> bool {
    std::env::var_os("BURN_LORA_WRITE_FUZZ_SEEDS").is_some()
}

/// The model `fuzz/fuzz_targets/adapter_dir.rs` loads adapters into.
fn fuzz_model() -> GptClassifier {
    let device = Device::default();
    let config = GptConfig::new(12)
        .with_d_model(8)
        .with_n_layers(1)
        .with_n_heads(2)
        .with_d_ff(16)
        .with_max_seq_len(4);
    GptClassifier::new(config.init(&device), 2, &device)
}

/// Splits a seed as the fuzz target does: a little-endian u16 length, the config, the weights.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let split = (usize::from(u16::from_le_bytes([data[0], data[1]])) + 2).min(data.len());
    (&data[2..split], &data[split..])
}

#[test]
fn adapter_seed_loads_into_the_fuzz_model() {
    let path = seeds("adapter_dir").join("valid");
    if writing() {
        let config = LoraConfig::new()
            .with_rank(2)
            .with_alpha(4.0)
            .with_modules_to_save(vec!["head".into()]);
        let model = apply_lora(fuzz_model(), &config).unwrap();
        let dir = common::scratch("fuzz_seeds", "adapter");
        save_adapter(&model, &dir).unwrap();
        let json = fs::read(dir.join("adapter_config.json")).unwrap();
        let weights = fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let mut seed = u16::try_from(json.len()).unwrap().to_le_bytes().to_vec();
        seed.extend(json);
        seed.extend(weights);
        fs::write(&path, seed).unwrap();
    }
    let seed = fs::read(&path).unwrap();
    let (json, weights) = split(&seed);
    let config = parse_adapter_config(json, Path::new("adapter_config.json")).unwrap();
    assert_eq!(config.rank, 2);
    load_adapter_weights(fuzz_model(), &config, weights, &path).unwrap();
}

#[test]
fn tokenizer_seed_loads() {
    let path = seeds("tokenizer_json").join("tiny.json");
    if writing() {
        let dir = common::scratch("fuzz_seeds", "tokenizer");
        common::tiny_base(&dir);
        fs::copy(dir.join("tokenizer.json"), &path).unwrap();
    }
    let tokenizer = BpeTokenizer::from_bytes(&fs::read(&path).unwrap(), &path).unwrap();
    let ids = tokenizer.encode("good fun 7").unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), "good fun 7");
}

#[test]
fn config_and_dataset_seeds_parse() {
    for entry in fs::read_dir(seeds("model_config")).unwrap() {
        let path = entry.unwrap().path();
        parse_config(&fs::read(&path).unwrap(), &path).unwrap();
    }
    let mut datasets = 0;
    for entry in fs::read_dir(seeds("sentiment_tsv")).unwrap() {
        let path = entry.unwrap().path();
        let data = SentimentDataset::parse(&fs::read(&path).unwrap(), &path).unwrap();
        assert!(!data.is_empty());
        datasets += 1;
    }
    assert!(datasets >= 2);
    // The CSV and JSON Lines seeds, read as their extension says.
    for target in ["dataset_csv", "dataset_jsonl"] {
        let mut seen = 0;
        for entry in fs::read_dir(seeds(target)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            let data = SentimentDataset::parse_with(&bytes, &path, &ReadOptions::default())
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(data.len(), 2, "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 2, "{target}");
    }
}
