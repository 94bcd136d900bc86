//! Instruction records to tokens: which ids a model reads and which it learns.

use crate::Error;
use crate::data::{SftDataset, SftRecord, SftTokens};
use crate::model::DecoderBase;
use crate::tokenizer::ChatMessage;

/// A dataset's examples as tokens, and how many were cut to fit.
#[derive(Debug, Clone)]
pub struct EncodedSft {
    /// One entry per record.
    pub rows: Vec<SftTokens>,
    /// The records longer than the length limit, whose prompts lost their first tokens.
    pub truncated: usize,
}

/// Tokenizes every record for `base`, keeping at most `max_len` tokens of each.
///
/// A prompt-completion pair is the prompt's ids (with the tokenizer's special tokens, as
/// [`DecoderBase::tokenizer`] adds them to a plain prompt), then the completion's, then the
/// first end-of-sequence id; the completion and that id are learnt. A conversation is
/// rendered by the base's chat template; the assistant turns (their text and the end
/// marker the template writes after them) are learnt.
///
/// # Errors
///
/// A conversation on a base without a chat template, or whose template does not render a
/// conversation as the prefix of its continuation, names the file and line.
pub fn encode_sft(
    data: &SftDataset,
    base: &DecoderBase,
    max_len: usize,
) -> Result<EncodedSft, Error> {
    let mut rows = Vec::with_capacity(data.len());
    let mut truncated = 0;
    for (line, record) in &data.records {
        let fail = |message: String| Error::Data {
            path: data.path.clone(),
            line: *line,
            message,
        };
        let pieces = match record {
            SftRecord::PromptCompletion { prompt, completion } => {
                vec![
                    (prompt.clone(), false, true),
                    (completion.clone(), true, false),
                ]
            }
            SftRecord::Messages(messages) => assistant_pieces(messages, base).map_err(fail)?,
        };
        let mut row = SftTokens {
            ids: Vec::new(),
            learn: Vec::new(),
        };
        for (text, learn, special) in pieces {
            let ids = base.tokenizer.encode(&text, special)?;
            row.learn.extend(ids.iter().map(|_| learn));
            row.ids.extend(ids);
        }
        if matches!(record, SftRecord::PromptCompletion { .. }) {
            row.ids.push(base.eos[0]);
            row.learn.push(true);
        }
        if row.ids.len() < 2 || !row.learn[1..].iter().any(|&l| l) {
            return Err(fail("nothing to learn after tokenizing".into()));
        }
        if row.truncate(max_len) {
            truncated += 1;
        }
        rows.push(row);
    }
    Ok(EncodedSft { rows, truncated })
}

/// A conversation as (text, learnt, add special tokens) pieces: each assistant turn is
/// the text its rendering adds after the generation prompt, as TRL's `assistant_only_loss`
/// finds it.
fn assistant_pieces(
    messages: &[ChatMessage],
    base: &DecoderBase,
) -> Result<Vec<(String, bool, bool)>, String> {
    let template = base.chat.as_ref().ok_or_else(|| {
        format!(
            "`messages` needs a chat template, and {} has none (use `prompt` and `completion`)",
            base.name
        )
    })?;
    let render = |upto: usize, prompt: bool| {
        template
            .render(&messages[..upto], prompt)
            .map_err(|e| e.to_string())
    };
    let not_prefix = || {
        "the chat template does not render a conversation as the prefix of its continuation, \
         so its assistant turns cannot be found"
            .to_string()
    };
    let mut pieces = Vec::new();
    let mut done = 0; // bytes of the rendering already in pieces
    for (i, message) in messages.iter().enumerate() {
        if message.role != "assistant" {
            continue;
        }
        let before = render(i, true)?;
        let after = render(i + 1, false)?;
        if !after.starts_with(&before) || before.len() < done {
            return Err(not_prefix());
        }
        pieces.push((before[done..].to_string(), false, false));
        pieces.push((after[before.len()..].to_string(), true, false));
        done = after.len();
    }
    let whole = render(messages.len(), false)?;
    if whole.len() < done {
        return Err(not_prefix());
    }
    pieces.push((whole[done..].to_string(), false, false));
    pieces.retain(|(text, _, _)| !text.is_empty());
    Ok(pieces)
}
