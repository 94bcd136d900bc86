//! [`SentimentDataset`]: labelled text in a documented TSV format.
//!
//! One example per line, `label<TAB>text`, UTF-8, LF or CRLF line ends:
//!
//! ```text
//! 1<TAB>A gorgeous, witty, seductive movie.
//! 0<TAB>The plot is nothing but boilerplate clichés.
//! ```
//!
//! `label` is `0` / `negative` or `1` / `positive`; the text runs to the end of the line and
//! may contain tabs. Every malformed line is an error naming the file and line number;
//! nothing is skipped.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// 0 for negative, 1 for positive.
    pub label: usize,
    /// The text.
    pub text: String,
}

/// A labelled sentiment dataset read from one file.
#[derive(Debug, Clone)]
pub struct SentimentDataset {
    /// The file it came from.
    pub path: PathBuf,
    /// Its examples, in file order.
    pub examples: Vec<Example>,
}

impl SentimentDataset {
    /// Reads a `label<TAB>text` file.
    ///
    /// # Errors
    ///
    /// A missing file or a directory; an empty file; and for any line: invalid UTF-8, no
    /// tab, an unknown label, or no text, each with the file and line number.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(dataset_error(&path, "is a directory, not a dataset file"));
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of a `label<TAB>text` file; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`SentimentDataset::load`], less the I/O.
    pub fn parse(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let mut examples = Vec::new();
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if !body.is_empty() {
            for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
                examples.push(parse_line(raw, &path, i + 1)?);
            }
        }
        if examples.is_empty() {
            return Err(dataset_error(&path, "holds no examples"));
        }
        Ok(Self { path, examples })
    }

    /// Errors unless both labels occur: a classifier cannot learn from one.
    pub fn check_trainable(&self) -> Result<(), Error> {
        let labels: HashSet<usize> = self.examples.iter().map(|e| e.label).collect();
        match labels.len() {
            2 => Ok(()),
            _ => Err(dataset_error(
                &self.path,
                "has only one label; training needs both 0 and 1",
            )),
        }
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The texts, in order.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.examples.iter().map(|e| e.text.as_str())
    }
}

fn dataset_error(path: &Path, message: &str) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn parse_line(raw: &[u8], path: &Path, line: usize) -> Result<Example, Error> {
    let fail = |message: String| Error::Data {
        path: path.to_path_buf(),
        line,
        message,
    };
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = std::str::from_utf8(raw).map_err(|e| fail(format!("invalid UTF-8 ({e})")))?;
    let (label, text) = text
        .split_once('\t')
        .ok_or_else(|| fail("expected `label<TAB>text`, found no tab".into()))?;
    let label = match label.trim() {
        "0" | "negative" => 0,
        "1" | "positive" => 1,
        other => {
            return Err(fail(format!(
                "unknown label `{other}`; expected 0, 1, negative or positive"
            )));
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(fail("the line has a label but no text".into()));
    }
    Ok(Example {
        label,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Example, Error> {
        parse_line(line.as_bytes(), Path::new("f.tsv"), 7)
    }

    #[test]
    fn parses_label_and_text_with_crlf_and_inner_tabs() {
        let example = parse("1\tgood\tfun\r").unwrap();
        assert_eq!(
            example,
            Example {
                label: 1,
                text: "good\tfun".into()
            }
        );
        assert_eq!(parse("negative\tbad").unwrap().label, 0);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = parse("2\tmeh").unwrap_err().to_string();
        assert_eq!(
            err,
            "f.tsv:7: unknown label `2`; expected 0, 1, negative or positive"
        );
        assert!(
            parse("no tab here")
                .unwrap_err()
                .to_string()
                .contains("no tab")
        );
        assert!(parse("1\t   ").unwrap_err().to_string().contains("no text"));
        let err = parse_line(b"1\t\xff\xfe", Path::new("f.tsv"), 3).unwrap_err();
        assert!(
            err.to_string().starts_with("f.tsv:3: invalid UTF-8"),
            "{err}"
        );
    }
}
