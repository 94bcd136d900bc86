//! [`ChatTemplate`]: a checkpoint's Jinja chat template, rendered as transformers'
//! `apply_chat_template` renders it (Jinja2 with `trim_blocks`, `lstrip_blocks`, loop
//! controls, its `tojson`, `raise_exception` and `strftime_now`), by `minijinja` with
//! Python's string methods.
//!
//! Size: about 360 lines of code. The Jinja environment must match Jinja2's in every
//! filter and global transformers installs (`tojson`'s Python spacing, `raise_exception`,
//! `strftime_now`), and each of those is kept next to the environment it configures.
//!
//! ```
//! use std::collections::BTreeMap;
//! use burn_lora_demo::tokenizer::{ChatMessage, ChatTemplate};
//!
//! let source = "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}\
//!               {% if add_generation_prompt %}<|assistant|>{% endif %}";
//! let template = ChatTemplate::new(source, BTreeMap::new(), "inline").unwrap();
//! let text = template.render(&[ChatMessage::new("user", " Hi ")], true).unwrap();
//! assert_eq!(text, "<|user|>Hi\n<|assistant|>");
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One turn of a conversation, as transformers takes it: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (whatever the template knows).
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The special tokens transformers passes to a template (its `special_tokens_map`).
const SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A compiled-on-use Jinja chat template and the special tokens it may name.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    tokens: BTreeMap<String, String>,
    path: PathBuf,
}

impl ChatTemplate {
    /// A template from its source; `tokens` maps `bos_token`, `eos_token`, ... to their
    /// text, and `path` names where it came from in errors.
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] when the source does not compile.
    pub fn new(
        source: impl Into<String>,
        tokens: BTreeMap<String, String>,
        path: impl Into<PathBuf>,
    ) -> Result<Self, Error> {
        let template = Self {
            source: source.into(),
            tokens,
            path: path.into(),
        };
        environment()
            .template_from_str(&template.source)
            .map_err(|e| template.error(e))?;
        Ok(template)
    }

    /// The template of a checkpoint directory: `chat_template.jinja` if present, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates,
    /// of which `default` is taken). `None` when the checkpoint has none (a base model).
    ///
    /// # Errors
    ///
    /// A malformed `tokenizer_config.json` ([`Error::Json`]) or a template that does not
    /// compile ([`Error::ChatTemplate`]), naming the file.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                path: config_path.clone(),
                message: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let tokens = SPECIAL_TOKENS
            .iter()
            .filter_map(|key| {
                let value = &config[*key];
                let text = value.as_str().or(value["content"].as_str())?;
                Some((key.to_string(), text.to_string()))
            })
            .collect();
        let jinja = dir.join("chat_template.jinja");
        if let Ok(source) = std::fs::read_to_string(&jinja) {
            return Self::new(source, tokens, jinja).map(Some);
        }
        let source = match &config["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        };
        source
            .map(|s| Self::new(s, tokens, config_path))
            .transpose()
    }

    /// The conversation as the model reads it, ending with the assistant's prompt when
    /// `add_generation_prompt`.
    ///
    /// # Errors
    ///
    /// [`Error::ChatTemplate`] naming the file: the template raised an exception (a role
    /// it does not take, say) or failed to render.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let env = environment();
        let template = env
            .template_from_str(&self.source)
            .map_err(|e| self.error(e))?;
        let mut context: BTreeMap<String, Value> = self
            .tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        context.insert("messages".into(), Value::from(Serde(messages)));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        template.render(context).map_err(|e| self.error(e))
    }

    fn error(&self, e: minijinja::Error) -> Error {
        let mut message = e.to_string();
        if let Some(detail) = e.detail()
            && e.kind() == ErrorKind::InvalidOperation
        {
            message = detail.to_string();
        }
        Error::ChatTemplate {
            path: self.path.clone(),
            message,
        }
    }
}

/// Jinja as transformers sets it up for chat templates.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", |message: String| -> Result<Value, _> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_function("strftime_now", |format: String| strftime_now(&format));
    env
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers'
/// `tojson` filter writes it: `", "` and `": "` between items, or one item a line.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, indent, 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    depth: usize,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match value.as_i64() {
            Some(i) if !value.to_string().contains('.') => write!(out, "{i}").unwrap(),
            _ => out.push_str(&value.to_string()),
        },
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_json_string(out, &key.to_string());
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => write_json_string(out, &value.to_string()),
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Today's date and time (UTC) in a subset of Python's `strftime` codes: `%Y %y %m %d %b
/// %B %a %A %H %M %S %%`; others are kept as written.
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, format)
}

/// `strftime_now` at `secs` seconds after the Unix epoch.
fn strftime(secs: i64, format: &str) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => write!(out, "{year}").unwrap(),
            Some('y') => write!(out, "{:02}", year % 100).unwrap(),
            Some('m') => write!(out, "{month:02}").unwrap(),
            Some('d') => write!(out, "{day:02}").unwrap(),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('H') => write!(out, "{:02}", rem / 3600).unwrap(),
            Some('M') => write!(out, "{:02}", rem / 60 % 60).unwrap(),
            Some('S') => write!(out, "{:02}", rem % 60).unwrap(),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_python_separators_and_keeps_non_ascii() {
        let value = Value::from(Serde(serde_json::json!({"a": [1, "é\n"], "b": null})));
        let mut out = String::new();
        write_json(&mut out, &value, None, 0).unwrap();
        assert_eq!(out, r#"{"a": [1, "é\n"], "b": null}"#);
    }

    #[test]
    fn strftime_formats_known_dates() {
        assert_eq!(
            strftime(0, "%d %b %Y, %A %H:%M:%S %%"),
            "01 Jan 1970, Thursday 00:00:00 %"
        );
        // 2024-07-26 12:34:56 UTC, the date in Llama 3.1's template.
        assert_eq!(
            strftime(1_721_997_296, "%d %B %Y %a %y-%m"),
            "26 July 2024 Fri 24-07"
        );
    }
}
