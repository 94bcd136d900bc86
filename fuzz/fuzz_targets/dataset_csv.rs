//! The CSV dataset reader on arbitrary bytes: every input is a dataset whose examples
//! have a label, a text and ascending line numbers, or an error that names the file; never
//! a panic.
#![no_main]

use burn_lora_demo::data::{LabelSet, ReadOptions, SentimentDataset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SentimentDataset::parse_with(data, "fuzz.csv", &ReadOptions::default()) {
        Ok(dataset) => {
            assert!(!dataset.is_empty());
            // Lines end at \n, \r\n or a \r alone, as the csv crate reads them.
            let lines = (0..data.len())
                .filter(|&i| data[i] == b'\n' || (data[i] == b'\r' && data.get(i + 1) != Some(&b'\n')))
                .count()
                + 1;
            for (i, e) in dataset.examples.iter().enumerate() {
                assert!(!e.label.is_empty() && !e.text.is_empty());
                assert_eq!(e.label.trim(), e.label);
                assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
                if i > 0 {
                    assert!(e.line > dataset.examples[i - 1].line);
                }
            }
            if let Ok(labels) = LabelSet::from_data(&dataset) {
                assert_eq!(labels.classes(&dataset).unwrap().len(), dataset.len());
            }
        }
        Err(err) => assert!(err.to_string().starts_with("fuzz.csv"), "{err}"),
    }
});
