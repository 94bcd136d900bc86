//! [`SentimentDataset`]: labelled texts read from a TSV, CSV or JSON Lines file.
//!
//! - **TSV** (`.tsv`): one example per line, `label<TAB>text`; the text runs to the end of
//!   the line and may contain tabs.
//! - **CSV** (`.csv`): a header row, then one record per example, RFC 4180 quoting; the
//!   columns are found by name (`text` and `label` unless told otherwise).
//! - **JSON Lines** (`.jsonl`): one object per line, `{"text": "…", "label": …}`; a label
//!   may be a string or an integer.
//!
//! ```text
//! positive<TAB>A gorgeous, witty, seductive movie.
//! negative<TAB>The plot is nothing but boilerplate clichés.
//! ```
//!
//! UTF-8, LF or CRLF line ends. A label is any non-empty name: `0`, `positive`, `neutral`.
//! The classes are the labels of the training file (see [`LabelSet`](crate::data::LabelSet)).
//! Every malformed line is an error naming the file and line number; nothing is skipped.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::data::formats::{parse_csv, parse_jsonl};

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The label's name, as written in the file (trimmed).
    pub label: String,
    /// The text.
    pub text: String,
    /// The 1-based line of the file it starts on.
    pub line: usize,
}

/// A file format of labelled text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `label<TAB>text` lines.
    #[default]
    Tsv,
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// Parses a `--format` value: `tsv`, `csv` or `jsonl`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for another value.
    pub fn parse(value: &str) -> Result<Self, Error> {
        match value {
            "tsv" => Ok(Format::Tsv),
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            other => Err(Error::Usage(format!(
                "--format must be tsv, csv or jsonl, got `{other}`"
            ))),
        }
    }

    /// The format a file's extension names: `.csv`, `.jsonl`, else TSV.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("jsonl") => Format::Jsonl,
            _ => Format::Tsv,
        }
    }
}

/// How to read a dataset file: its format (`None`: from the extension) and the names of
/// the text and label fields of a CSV or JSON Lines file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// The format, or `None` to follow the file's extension.
    pub format: Option<Format>,
    /// The text field (default `text`).
    pub text_column: String,
    /// The label field (default `label`).
    pub label_column: String,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            format: None,
            text_column: "text".into(),
            label_column: "label".into(),
        }
    }
}

/// A labelled dataset read from one file.
#[derive(Debug, Clone)]
pub struct SentimentDataset {
    /// The file it came from.
    pub path: PathBuf,
    /// Its examples, in file order.
    pub examples: Vec<Example>,
}

impl SentimentDataset {
    /// Reads a file in the format its extension names (TSV for any other), with the default
    /// columns.
    ///
    /// # Errors
    ///
    /// As [`SentimentDataset::load_with`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_with(path, &ReadOptions::default())
    }

    /// Reads a file as `options` say.
    ///
    /// # Errors
    ///
    /// A missing file or a directory; an empty file; and for any line: invalid UTF-8, a
    /// missing field or column, a bad quote, a text that is not a string, an empty label or
    /// text, each with the file and line number.
    pub fn load_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(dataset_error(&path, "is a directory, not a dataset file"));
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse_with(&bytes, path, options)
    }

    /// Parses the bytes of a `label<TAB>text` file; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`SentimentDataset::load`], less the I/O.
    pub fn parse(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Self, Error> {
        let options = ReadOptions {
            format: Some(Format::Tsv),
            ..ReadOptions::default()
        };
        Self::parse_with(bytes, path, &options)
    }

    /// Parses the bytes of a dataset file as `options` say; `path` names it in errors and,
    /// when `options.format` is `None`, gives the format by its extension.
    ///
    /// # Errors
    ///
    /// As [`SentimentDataset::load_with`], less the I/O.
    pub fn parse_with(
        bytes: &[u8],
        path: impl Into<PathBuf>,
        options: &ReadOptions,
    ) -> Result<Self, Error> {
        let path = path.into();
        let examples = match options.format.unwrap_or_else(|| Format::from_path(&path)) {
            Format::Tsv => parse_tsv(bytes, &path)?,
            Format::Csv => parse_csv(bytes, &path, options)?,
            Format::Jsonl => parse_jsonl(bytes, &path, options)?,
        };
        if examples.is_empty() {
            return Err(dataset_error(&path, "holds no examples"));
        }
        Ok(Self { path, examples })
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

pub(crate) fn dataset_error(path: &Path, message: &str) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Checks a label and text read from line `line` and makes the example: both trimmed, both
/// non-empty.
pub(crate) fn example(label: &str, text: &str, path: &Path, line: usize) -> Result<Example, Error> {
    let fail = |message: &str| Error::Data {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    };
    let (label, text) = (label.trim(), text.trim());
    if label.is_empty() {
        return Err(fail("the label is empty"));
    }
    if text.is_empty() {
        return Err(fail("the line has a label but no text"));
    }
    Ok(Example {
        label: label.to_string(),
        text: text.to_string(),
        line,
    })
}

fn parse_tsv(bytes: &[u8], path: &Path) -> Result<Vec<Example>, Error> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| parse_tsv_line(raw, path, i + 1))
        .collect()
}

fn parse_tsv_line(raw: &[u8], path: &Path, line: usize) -> Result<Example, Error> {
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
    example(label, text, path, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Example, Error> {
        parse_tsv_line(line.as_bytes(), Path::new("f.tsv"), 7)
    }

    #[test]
    fn parses_label_and_text_with_crlf_and_inner_tabs() {
        let example = parse("positive\tgood\tfun\r").unwrap();
        assert_eq!(
            example,
            Example {
                label: "positive".into(),
                text: "good\tfun".into(),
                line: 7
            }
        );
        assert_eq!(parse(" 2 \tmeh").unwrap().label, "2");
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        assert_eq!(
            parse("\tmeh").unwrap_err().to_string(),
            "f.tsv:7: the label is empty"
        );
        let err = parse("no tab here").unwrap_err().to_string();
        assert!(
            err.starts_with("f.tsv:7: ") && err.contains("no tab"),
            "{err}"
        );
        assert!(parse("1\t   ").unwrap_err().to_string().contains("no text"));
        let err = parse_tsv_line(b"1\t\xff\xfe", Path::new("f.tsv"), 3).unwrap_err();
        assert!(
            err.to_string().starts_with("f.tsv:3: invalid UTF-8"),
            "{err}"
        );
        let err = SentimentDataset::parse(b"1\ta\n\n0\tb\n", "f.tsv").unwrap_err();
        assert!(err.to_string().starts_with("f.tsv:2: "), "{err}");
    }

    #[test]
    fn the_extension_picks_the_format_and_the_flag_overrides_it() {
        assert_eq!(Format::from_path(Path::new("a/b.csv")), Format::Csv);
        assert_eq!(Format::from_path(Path::new("b.jsonl")), Format::Jsonl);
        assert_eq!(Format::from_path(Path::new("b.txt")), Format::Tsv);
        let csv = b"text,label\n\"a, b\",pos\n";
        let data = SentimentDataset::parse_with(csv, "x.csv", &ReadOptions::default()).unwrap();
        assert_eq!(data.examples[0].text, "a, b");
        let tsv = ReadOptions {
            format: Some(Format::Tsv),
            ..ReadOptions::default()
        };
        let err = SentimentDataset::parse_with(csv, "x.csv", &tsv).unwrap_err();
        assert!(err.to_string().contains("no tab"), "{err}");
        assert!(Format::parse("xml").is_err());
    }
}
