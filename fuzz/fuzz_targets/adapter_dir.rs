//! An adapter directory as raw bytes: the first two bytes give the length of
//! `adapter_config.json`, the rest is `adapter_model.safetensors`. Whatever the bytes, loading
//! into a tiny model gives a model or a typed error, never a panic. When the config does not
//! parse, the weights are still tried with a valid config, so both parsers get fuzzed.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use burn::tensor::Device;
use burn_lora_demo::model::{GptClassifier, GptConfig};
use burn_lora::{LoraConfig, load_adapter_weights, parse_adapter_config};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static GptClassifier {
    static MODEL: OnceLock<GptClassifier> = OnceLock::new();
    MODEL.get_or_init(|| {
        let device = Device::default();
        let config = GptConfig::new(12)
            .with_d_model(8)
            .with_n_layers(1)
            .with_n_heads(2)
            .with_d_ff(16)
            .with_max_seq_len(4);
        GptClassifier::new(config.init(&device), 2, &device)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(u16::from_le_bytes([data[0], data[1]])) + 2).min(data.len());
    let (config_bytes, weights) = (&data[2..split], &data[split..]);
    let config = match parse_adapter_config(config_bytes, Path::new("adapter_config.json")) {
        Ok(config) => config,
        Err(err) => {
            assert!(err.to_string().contains("adapter_config.json"), "{err}");
            LoraConfig::new().with_rank(2).with_modules_to_save(vec!["head".into()])
        }
    };
    if let Err(err) = load_adapter_weights(
        model().clone(),
        &config,
        weights,
        Path::new("adapter_model.safetensors"),
    ) {
        let _ = err.to_string();
    }
});
