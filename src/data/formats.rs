//! The CSV and JSON Lines readers of [`SentimentDataset`](crate::data::SentimentDataset).
//!
//! Size: about 250 lines of code and 115 of unit tests.

use std::path::Path;

use serde_json::Value;

use crate::Error;
use crate::data::sentiment::{Example, ReadOptions, example};

fn data_error(path: &Path, line: usize, message: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// A CSV file with a header row, read with the `csv` crate. Quoting is checked strictly
/// (RFC 4180) on each record's raw bytes, because the `csv` crate reads a stray quote
/// leniently: `"ab"c` would become `abc` without a word.
pub(crate) fn parse_csv(
    bytes: &[u8],
    path: &Path,
    options: &ReadOptions,
) -> Result<Vec<Example>, Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut header: Option<(usize, usize, usize)> = None; // text, label, fields
    let mut examples = Vec::new();
    // The `csv` crate's own line count lags behind line ends, so lines are counted here
    // from byte offsets.
    let mut lines = LineCounter::default();
    loop {
        let start = reader.position().byte() as usize;
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let at = e.position().map_or(start, |p| p.byte() as usize);
            data_error(
                path,
                lines.line_at(bytes, at),
                format!("not valid CSV ({e})"),
            )
        })?;
        if !more {
            break;
        }
        let end = (reader.position().byte() as usize).min(bytes.len());
        let mut begin = record
            .position()
            .map_or(start, |p| p.byte() as usize)
            .min(end);
        while begin < end && matches!(bytes[begin], b'\r' | b'\n') {
            begin += 1; // the previous record's line end, or blank lines the reader skipped
        }
        let line = lines.line_at(bytes, begin);
        check_quotes(&bytes[begin..end]).map_err(|m| data_error(path, line, m.into()))?;
        let field = |i: usize| -> Result<&str, Error> {
            std::str::from_utf8(&record[i])
                .map_err(|e| data_error(path, line, format!("invalid UTF-8 ({e})")))
        };
        let Some((text, label, fields)) = header else {
            let names: Vec<&str> = (0..record.len()).map(field).collect::<Result<_, _>>()?;
            let names: Vec<&str> = names
                .iter()
                .map(|n| n.trim_start_matches('\u{feff}').trim())
                .collect();
            let find = |want: &str| {
                names.iter().position(|n| *n == want).ok_or_else(|| {
                    data_error(
                        path,
                        line,
                        format!(
                            "the header has no column `{want}` (its columns: {})",
                            names.join(", ")
                        ),
                    )
                })
            };
            header = Some((
                find(&options.text_column)?,
                find(&options.label_column)?,
                names.len(),
            ));
            continue;
        };
        if record.len() != fields {
            return Err(data_error(
                path,
                line,
                format!("{} field(s), but the header has {fields}", record.len()),
            ));
        }
        examples.push(example(field(label)?, field(text)?, path, line)?);
    }
    if header.is_none() {
        return Ok(Vec::new());
    }
    Ok(examples)
}

/// 1-based line numbers of byte offsets, asked for in increasing order. A line ends, as
/// the `csv` crate reads it, at `\n`, `\r\n` or a `\r` alone.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: usize,
}

impl LineCounter {
    fn line_at(&mut self, bytes: &[u8], offset: usize) -> usize {
        let offset = offset.min(bytes.len());
        if offset >= self.offset {
            self.line += line_ends(bytes, self.offset, offset);
            self.offset = offset;
        }
        self.line + 1
    }
}

/// The line ends in `bytes[from..to]`: each `\n`, and each `\r` not followed by `\n`.
fn line_ends(bytes: &[u8], from: usize, to: usize) -> usize {
    (from..to)
        .filter(|&i| bytes[i] == b'\n' || (bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count()
}

/// Checks one raw CSV record (with its line ends) field by field: a quoted field is closed
/// and followed by a comma or the end; an unquoted one holds no quote.
fn check_quotes(raw: &[u8]) -> Result<(), &'static str> {
    let mut raw = raw;
    while let Some(rest) = raw.strip_suffix(b"\n").or_else(|| raw.strip_suffix(b"\r")) {
        raw = rest;
    }
    let mut i = 0;
    loop {
        if raw.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match raw.get(i) {
                    None => return Err("a quoted field is never closed"),
                    Some(b'"') if raw.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            match raw.get(i) {
                None => return Ok(()),
                Some(b',') => i += 1,
                Some(_) => {
                    return Err(
                        "text after a closing quote (a quote inside a quoted field is written twice: \"\")",
                    );
                }
            }
        } else {
            loop {
                match raw.get(i) {
                    None => return Ok(()),
                    Some(b',') => {
                        i += 1;
                        break;
                    }
                    Some(b'"') => {
                        return Err(
                            "a quote inside an unquoted field (quote the whole field and write the quote twice)",
                        );
                    }
                    Some(_) => i += 1,
                }
            }
        }
    }
}

/// A JSON Lines file: one object per line, the text a string, the label a string or an
/// integer. Only the file's last line end may be followed by nothing.
pub(crate) fn parse_jsonl(
    bytes: &[u8],
    path: &Path,
    options: &ReadOptions,
) -> Result<Vec<Example>, Error> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let (text_key, label_key) = (&options.text_column, &options.label_column);
    let mut examples = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let fail = |message: String| data_error(path, line, message);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|e| fail(format!("invalid UTF-8 ({e})")))?;
        if text.trim().is_empty() {
            return Err(fail(
                "an empty line; each line must hold one JSON object".into(),
            ));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON ({e})")))?;
        let Value::Object(object) = value else {
            return Err(fail(format!(
                "expected a JSON object, found {}",
                kind(&value)
            )));
        };
        let get = |key: &str| {
            object
                .get(key)
                .ok_or_else(|| fail(format!("the object has no field `{key}`")))
        };
        let text = match get(text_key)? {
            Value::String(s) => s.as_str(),
            other => {
                return Err(fail(format!(
                    "`{text_key}` must be a string, found {}",
                    kind(other)
                )));
            }
        };
        let label = match get(label_key)? {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => {
                return Err(fail(format!(
                    "`{label_key}` must be a string or an integer, found {}",
                    kind(other)
                )));
            }
        };
        examples.push(example(&label, text, path, line)?);
    }
    Ok(examples)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<Example>, Error> {
        parse_csv(text.as_bytes(), Path::new("d.csv"), &ReadOptions::default())
    }

    fn jsonl(text: &str) -> Result<Vec<Example>, Error> {
        parse_jsonl(
            text.as_bytes(),
            Path::new("d.jsonl"),
            &ReadOptions::default(),
        )
    }

    fn err(result: Result<Vec<Example>, Error>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn csv_reads_quoted_fields_any_column_order_and_crlf() {
        let data = csv("id,label,text\r\n1,pos,\"a \"\"gem\"\", with\nnewline\"\r\n2,neg,dull\r\n")
            .unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0].text, "a \"gem\", with\nnewline");
        assert_eq!((data[0].label.as_str(), data[0].line), ("pos", 2));
        assert_eq!((data[1].text.as_str(), data[1].line), ("dull", 4));
        // A `\r` alone ends a line too (old Mac files), as the `csv` crate reads it.
        let data = csv("text,label\rgood,1\rbad,0\r").unwrap();
        assert_eq!((data[1].text.as_str(), data[1].line), ("bad", 3));
        let options = ReadOptions {
            text_column: "review".into(),
            label_column: "stars".into(),
            ..ReadOptions::default()
        };
        let data = parse_csv(b"stars,review\n5,great\n", Path::new("d.csv"), &options).unwrap();
        assert_eq!(
            (data[0].label.as_str(), data[0].text.as_str()),
            ("5", "great")
        );
    }

    #[test]
    fn malformed_csv_names_file_and_line() {
        assert_eq!(
            err(csv("text,label\nok,1\n\"bad\"x,1\n")),
            "d.csv:3: text after a closing quote (a quote inside a quoted field is written twice: \"\")"
        );
        assert!(err(csv("text,label\na\"b,1\n")).starts_with("d.csv:2: a quote inside"));
        assert!(err(csv("text,label\nok,1\n\"never closed,1\n")).starts_with("d.csv:3: "));
        assert_eq!(
            err(csv("words,label\nok,1\n")),
            "d.csv:1: the header has no column `text` (its columns: words, label)"
        );
        assert_eq!(
            err(csv("text,label\nok\n")),
            "d.csv:2: 1 field(s), but the header has 2"
        );
        assert_eq!(err(csv("text,label\nok,\n")), "d.csv:2: the label is empty");
        let bad = parse_csv(
            b"text,label\n\xff,1\n",
            Path::new("d.csv"),
            &ReadOptions::default(),
        );
        assert!(err(bad).starts_with("d.csv:2: invalid UTF-8"));
        assert!(csv("text,label\n").unwrap().is_empty());
    }

    #[test]
    fn jsonl_reads_string_and_integer_labels() {
        let data = jsonl("{\"text\": \"good\", \"label\": 2}\r\n{\"label\": \"neg\", \"text\": \"bad\", \"x\": 1}\n").unwrap();
        assert_eq!(
            data[0],
            Example {
                label: "2".into(),
                text: "good".into(),
                line: 1
            }
        );
        assert_eq!((data[1].label.as_str(), data[1].line), ("neg", 2));
    }

    #[test]
    fn malformed_jsonl_names_file_and_line() {
        let ok = "{\"text\": \"a\", \"label\": 1}\n";
        let bad = |line: &str| err(jsonl(&format!("{ok}{line}\n")));
        assert_eq!(
            bad("{\"text\": 5, \"label\": 1}"),
            "d.jsonl:2: `text` must be a string, found a number"
        );
        assert_eq!(
            bad("{\"text\": \"a\"}"),
            "d.jsonl:2: the object has no field `label`"
        );
        assert_eq!(
            bad("{\"text\": \"a\", \"label\": 1.5}"),
            "d.jsonl:2: `label` must be a string or an integer, found a number"
        );
        assert_eq!(
            bad("{\"text\": \"a\", \"label\": \" \"}"),
            "d.jsonl:2: the label is empty"
        );
        assert_eq!(
            bad("[1, 2]"),
            "d.jsonl:2: expected a JSON object, found an array"
        );
        assert!(bad("{\"text\": \"a\",").starts_with("d.jsonl:2: not valid JSON"));
        assert!(bad("").starts_with("d.jsonl:2: an empty line"));
        let utf8 = parse_jsonl(
            b"{\"text\": \"\xff\", \"label\": 1}",
            Path::new("d.jsonl"),
            &ReadOptions::default(),
        );
        assert!(err(utf8).starts_with("d.jsonl:1: invalid UTF-8"));
    }
}
