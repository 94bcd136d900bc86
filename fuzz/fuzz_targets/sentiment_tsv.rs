//! The TSV dataset reader on arbitrary bytes: every input is a dataset or an error that
//! names the file, never a panic.
#![no_main]

use burn_lora_demo::data::{LabelSet, SentimentDataset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SentimentDataset::parse(data, "fuzz.tsv") {
        Ok(dataset) => {
            assert!(!dataset.is_empty());
            assert!(dataset.examples.iter().all(|e| !e.label.is_empty() && !e.text.is_empty()));
            if let Ok(labels) = LabelSet::from_data(&dataset) {
                assert_eq!(labels.classes(&dataset).unwrap().len(), dataset.len());
            }
        }
        Err(err) => assert!(err.to_string().starts_with("fuzz.tsv"), "{err}"),
    }
});
