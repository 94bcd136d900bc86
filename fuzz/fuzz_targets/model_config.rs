//! A base model's `config.json` on arbitrary bytes: a valid config or an error naming the
//! file, never a panic (nor an overflow in the size check).
#![no_main]

use std::path::Path;

use burn_lora_demo::model::{MAX_PARAMS, parse_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_config(data, Path::new("config.json")) {
        Ok(config) => {
            assert!(config.estimated_params() <= MAX_PARAMS);
            assert!(config.d_model % config.n_heads == 0);
        }
        Err(err) => assert!(err.to_string().contains("config.json"), "{err}"),
    }
});
