//! The unlabelled text that pre-training reads, with the test sets kept out.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::data::SentimentDataset;

/// Pre-training text: documents, one per line of the sources.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    /// The documents.
    pub documents: Vec<String>,
    /// How many lines were left out because they are test-set texts.
    pub excluded_test_lines: usize,
}

/// Gathers pre-training documents: the texts of the labelled `datasets` with their labels
/// discarded, and every non-empty line of the plain UTF-8 `text_files`. Any line that is
/// also the text of an example in `test_sets` is left out and counted, so evaluation text is
/// never seen during pre-training, whichever files a user passes.
///
/// # Errors
///
/// Unreadable files, invalid UTF-8 (with the line number), or malformed datasets.
pub fn build_corpus(
    datasets: &[PathBuf],
    text_files: &[PathBuf],
    test_sets: &[PathBuf],
) -> Result<Corpus, Error> {
    let test_texts: HashSet<String> = dataset_texts(test_sets)?.into_iter().collect();
    let mut lines = dataset_texts(datasets)?;
    for path in text_files {
        lines.extend(read_lines(path)?);
    }
    let before = lines.len();
    lines.retain(|line| !test_texts.contains(line.trim()));
    Ok(Corpus {
        excluded_test_lines: before - lines.len(),
        documents: lines,
    })
}

/// The texts of every example in the labelled `paths`, labels discarded.
fn dataset_texts(paths: &[PathBuf]) -> Result<Vec<String>, Error> {
    let mut texts = Vec::new();
    for path in paths {
        texts.extend(
            SentimentDataset::load(path)?
                .examples
                .into_iter()
                .map(|e| e.text),
        );
    }
    Ok(texts)
}

fn read_lines(path: &Path) -> Result<Vec<String>, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(raw).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("invalid UTF-8 ({e})"),
        })?;
        let line = line.trim();
        if !line.is_empty() {
            lines.push(line.to_string());
        }
    }
    Ok(lines)
}

/// Splits documents into (train, validation): a document goes to validation when a stable
/// hash of its text falls in the last `1/every` of the range, so the split never depends on
/// order or on the other documents.
pub fn split_validation(documents: Vec<String>, every: u64) -> (Vec<String>, Vec<String>) {
    documents
        .into_iter()
        .partition(|doc| !fnv1a(doc.as_bytes()).is_multiple_of(every))
}

/// The 64-bit FNV-1a hash: stable across runs, platforms and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn validation_split_is_stable() {
        let docs: Vec<String> = (0..100).map(|i| format!("doc {i}")).collect();
        let (train, val) = split_validation(docs.clone(), 10);
        assert_eq!(train.len() + val.len(), 100);
        assert!(!val.is_empty());
        let (_, val_reversed) = split_validation(docs.into_iter().rev().collect(), 10);
        let mut a = val.clone();
        let mut b = val_reversed;
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
