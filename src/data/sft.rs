//! Instruction data for generative SFT, in TRL's two JSON Lines formats, and the batches
//! that train on the completion only.
//!
//! - `{"prompt": "...", "completion": "..."}`: TRL's prompt-completion format. The loss is
//!   on the completion (and the end-of-sequence token appended to it).
//! - `{"messages": [{"role": "...", "content": "..."}, ...]}`: a conversation, rendered by
//!   the base's chat template; the loss is on the assistant turns only.
//!
//! Their batches, which train on the completion only, are in `sft_batch.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Error;
use crate::tokenizer::ChatMessage;

/// One training example as its file holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum SftRecord {
    /// A prompt and the completion to learn.
    PromptCompletion {
        /// The text the model is given.
        prompt: String,
        /// The text it learns to continue with.
        completion: String,
    },
    /// A conversation; the assistant turns are learnt.
    Messages(Vec<ChatMessage>),
}

/// An instruction dataset: its records, each with the line it came from.
#[derive(Debug, Clone)]
pub struct SftDataset {
    /// The file it was read from (errors name it).
    pub path: PathBuf,
    /// The records, in file order, with their 1-based line numbers.
    pub records: Vec<(usize, SftRecord)>,
}

impl SftDataset {
    /// Reads a JSON Lines file of either format (the two may be mixed).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read; [`Error::Data`] naming the file, the line
    /// and the field for a malformed line; [`Error::Dataset`] for a file with no examples.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses JSON Lines bytes; `path` names them in errors.
    ///
    /// # Errors
    ///
    /// As [`SftDataset::load`].
    pub fn parse(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let mut records = Vec::new();
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) && body.is_empty() {
                break;
            }
            records.push((line, parse_line(raw, &path, line)?));
        }
        if records.is_empty() {
            return Err(Error::Dataset {
                path,
                message: "no examples; each line must hold one JSON object".into(),
            });
        }
        Ok(Self { path, records })
    }

    /// A dataset of prompt-completion pairs made in code (`path` names it in errors).
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
        path: impl Into<PathBuf>,
    ) -> Self {
        let records = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (prompt, completion))| {
                (i + 1, SftRecord::PromptCompletion { prompt, completion })
            })
            .collect();
        Self {
            path: path.into(),
            records,
        }
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn parse_line(raw: &[u8], path: &Path, line: usize) -> Result<SftRecord, Error> {
    let fail = |message: String| Error::Data {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(raw).map_err(|e| fail(format!("invalid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(fail(
            "an empty line; each line must hold one JSON object".into(),
        ));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON ({e})")))?;
    let Value::Object(object) = value else {
        return Err(fail("expected a JSON object".into()));
    };
    let string = |value: Option<&Value>, field: &str| match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(fail(format!("`{field}` must be a string"))),
        None => Err(fail(format!("the object has no field `{field}`"))),
    };
    if let Some(messages) = object.get("messages") {
        let Value::Array(messages) = messages else {
            return Err(fail("`messages` must be an array".into()));
        };
        let turns = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let field = |name: &str| format!("messages[{i}].{name}");
                Ok(ChatMessage::new(
                    &string(m.get("role"), &field("role"))?,
                    &string(m.get("content"), &field("content"))?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if !turns.iter().any(|m| m.role == "assistant") {
            return Err(fail(
                "`messages` has no assistant turn, so nothing to learn".into(),
            ));
        }
        return Ok(SftRecord::Messages(turns));
    }
    if !object.contains_key("prompt") && !object.contains_key("completion") {
        return Err(fail(
            "expected `prompt` and `completion`, or `messages`".into(),
        ));
    }
    let prompt = string(object.get("prompt"), "prompt")?;
    let completion = string(object.get("completion"), "completion")?;
    if completion.is_empty() {
        return Err(fail("`completion` is empty, so nothing to learn".into()));
    }
    Ok(SftRecord::PromptCompletion { prompt, completion })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        SftDataset::parse(text.as_bytes(), "d.jsonl")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn both_formats_read_and_bad_lines_name_file_line_and_field() {
        let text = "{\"prompt\": \"a\", \"completion\": \"b\"}\n\
                    {\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n";
        let data = SftDataset::parse(text.as_bytes(), "d.jsonl").unwrap();
        assert_eq!(data.len(), 2);
        assert!(matches!(data.records[1].1, SftRecord::Messages(ref m) if m.len() == 2));
        let ok = "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
        assert_eq!(
            err(&format!("{ok}{{\"prompt\": \"a\"}}")),
            "d.jsonl:2: the object has no field `completion`"
        );
        assert_eq!(
            err("{\"prompt\": 1, \"completion\": \"b\"}"),
            "d.jsonl:1: `prompt` must be a string"
        );
        assert_eq!(
            err("{\"messages\": [{\"role\": \"user\"}]}"),
            "d.jsonl:1: the object has no field `messages[0].content`"
        );
        assert_eq!(
            err("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}"),
            "d.jsonl:1: `messages` has no assistant turn, so nothing to learn"
        );
        assert_eq!(
            err("{\"text\": \"x\"}"),
            "d.jsonl:1: expected `prompt` and `completion`, or `messages`"
        );
        assert!(err("{oops").starts_with("d.jsonl:1: not valid JSON"));
        assert_eq!(
            err(""),
            "d.jsonl: no examples; each line must hold one JSON object"
        );
    }
}
