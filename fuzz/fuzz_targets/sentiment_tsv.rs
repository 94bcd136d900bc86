//! The sentiment loader on arbitrary bytes: every input is a dataset or an error that names
//! the file, never a panic.
#![no_main]

use burn_lora_demo::data::SentimentDataset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SentimentDataset::parse(data, "fuzz.tsv") {
        Ok(dataset) => {
            assert!(!dataset.is_empty());
            assert!(dataset.examples.iter().all(|e| e.label < 2 && !e.text.is_empty()));
            let _ = dataset.check_trainable();
        }
        Err(err) => assert!(err.to_string().starts_with("fuzz.tsv"), "{err}"),
    }
});
