//! Every input that made a fuzz target fail, replayed as an ordinary test. The inputs are in
//! `fuzz/regressions/`, copied from `fuzz/artifacts/` when cargo-fuzz found them.

use std::fs;
use std::path::{Path, PathBuf};

use burn_lora::parse_adapter_config;
use burn_lora_demo::data::{ReadOptions, SentimentDataset};
use burn_lora_demo::tokenizer::{BpeTokenizer, HfTokenizer};

fn input(name: &str) -> (PathBuf, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(name);
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

/// `tokenizers` 0.22 panicked ("Helper: expected `:`") on a tokenizer.json whose `decoder`
/// object was broken (an invalid UTF-8 byte in it); it is now an error naming the file.
#[test]
fn a_broken_decoder_in_tokenizer_json_is_an_error_not_a_panic() {
    let (path, bytes) = input("tokenizer_json-decoder-panic.json");
    let err = BpeTokenizer::from_bytes(&bytes, "tokenizer.json").unwrap_err();
    assert!(
        err.to_string().contains("tokenizer.json: expected"),
        "{err}"
    );
    let copy = std::env::temp_dir().join(format!("burn-lora-{}-tok.json", std::process::id()));
    fs::write(&copy, &bytes).unwrap();
    let err = HfTokenizer::load(&copy, "[PAD]").unwrap_err();
    let _ = fs::remove_file(&copy);
    assert!(err.to_string().contains("tok.json"), "{err}");
    assert!(path.is_file());
}

/// The same panic through another door: a valid-looking `decoder` with an invalid `\u`
/// escape (a lone surrogate), which a JSON check that skips strings let through.
#[test]
fn an_invalid_unicode_escape_in_tokenizer_json_is_an_error_not_a_panic() {
    let (_, bytes) = input("tokenizer_json-unicode-escape-panic.json");
    let err = BpeTokenizer::from_bytes(&bytes, "tokenizer.json").unwrap_err();
    assert!(err.to_string().contains("tokenizer.json: "), "{err}");
}

/// An adapter_config.json with `"lora_dropout": 5` gave "invalid LoRA config: dropout ..."
/// without naming the file; the message now starts with it.
#[test]
fn an_invalid_value_in_adapter_config_json_names_the_file() {
    let (_, bytes) = input("adapter_dir-dropout-unnamed.bin");
    // The fuzz target's layout: a little-endian u16 length, then the config bytes.
    let split = (usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) + 2).min(bytes.len());
    let err = parse_adapter_config(&bytes[2..split], Path::new("adapter_config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("adapter_config.json: "), "{err}");
    assert!(err.contains("dropout"), "{err}");
}

/// The CSV reader counted only `\n` as a line end, but the `csv` crate also ends a record
/// at a `\r` alone: two records on one `\n`-line were both called line 2. Lines now end
/// where the crate ends them, so the examples' lines rise.
#[test]
fn csv_records_after_a_bare_carriage_return_get_their_own_line() {
    let (_, bytes) = input("dataset_csv-bare-cr-line-numbers.csv");
    let data = SentimentDataset::parse_with(&bytes, "fuzz.csv", &ReadOptions::default()).unwrap();
    let lines: Vec<usize> = data.examples.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 3]);
}
