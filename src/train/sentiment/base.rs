//! Choosing the base: [`BaseModel`] (a Hugging Face BERT directory, our GPT, or either with
//! random weights), its pooling and head, and the input length ([`choose_max_len`]).

use std::path::{Path, PathBuf};

use crate::Error;
use crate::data::SentimentDataset;
use crate::model::bert::BertHead;
use crate::model::{GptConfig, Pooling};
use crate::tokenizer::{BpeTokenizer, TextEncoder};

/// The default base of the sentiment job and `predict`: a three-layer encoder derived from
/// all-MiniLM-L6-v2 by `scripts/derive_base.py` (see `fixtures/minilm/README.md`).
pub const DEFAULT_BASE: &str = "fixtures/minilm";

/// The default longest input, in tokens, for a BERT base: every English fixture text but 6
/// fits, and attention's cost grows with the square of the length.
pub const BERT_MAX_LEN: usize = 64;

/// The longest input a BERT base reads when `--max-len` is not given: the 95th percentile
/// of the training texts' lengths in tokens, rounded up to a multiple of 16, but at least
/// [`BERT_MAX_LEN`] and at most [`BERT_MAX_LEN_CAP`] (and the model's positions). Prints
/// the choice and the distribution it came from.
///
/// # Errors
///
/// A tokenizer failure.
pub fn choose_max_len(
    tokenizer: &impl TextEncoder,
    train: &SentimentDataset,
    positions: usize,
) -> Result<usize, Error> {
    let mut lengths: Vec<usize> = Vec::with_capacity(train.examples.len());
    for text in train.texts() {
        lengths.push(tokenizer.encode_for_classifier(text, usize::MAX)?.0.len());
    }
    lengths.sort_unstable();
    if lengths.is_empty() {
        return Ok(BERT_MAX_LEN.min(positions));
    }
    let at = |q: f64| lengths[((lengths.len() - 1) as f64 * q).round() as usize];
    let (p50, p90, p95) = (at(0.5), at(0.9), at(0.95));
    let chosen = p95
        .div_ceil(16)
        .saturating_mul(16)
        .clamp(BERT_MAX_LEN, BERT_MAX_LEN_CAP)
        .min(positions);
    let fit = lengths.iter().filter(|&&n| n <= chosen).count();
    println!(
        "max length {chosen} tokens (p95 rounded up to 16, within {BERT_MAX_LEN}..={BERT_MAX_LEN_CAP} and the base's {positions} positions; \
         --max-len overrides): {:.1} % of the {} training texts fit; their lengths: median {p50}, p90 {p90}, p95 {p95}",
        100.0 * fit as f64 / lengths.len().max(1) as f64,
        lengths.len()
    );
    Ok(chosen)
}

/// The longest input [`choose_max_len`] picks: attention's cost grows with the square of
/// the length, and the whole job must stay within minutes on two cores.
pub const BERT_MAX_LEN_CAP: usize = 128;

/// The model that is fine-tuned.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseModel {
    /// A base pre-trained by this crate (`config.json`, `model.bpk`, `tokenizer.json`).
    Gpt(PathBuf),
    /// A Hugging Face BERT checkpoint directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`), with the head to put on it.
    Bert {
        /// The checkpoint directory.
        dir: PathBuf,
        /// `[CLS]` pooler or mean pooling.
        head: BertHead,
    },
    /// Another base's architecture and tokenizer with random weights: what pre-training
    /// is worth.
    Random(Box<BaseModel>),
}

impl BaseModel {
    /// Parses a `--base` value: a directory (a Hugging Face BERT checkpoint when it holds
    /// `model.safetensors`, else a base made by the pretrain example), `hf:DIR` (always
    /// BERT), `random` (the [`DEFAULT_BASE`]'s architecture with random weights) or
    /// `random:DIR` (that base's architecture with random weights).
    pub fn parse(value: &str, head: BertHead) -> Self {
        if value == "random" {
            return BaseModel::Random(Box::new(Self::parse(DEFAULT_BASE, head)));
        }
        if let Some(base) = value.strip_prefix("random:") {
            return BaseModel::Random(Box::new(Self::parse(base, head)));
        }
        let bert = |dir: &str| BaseModel::Bert {
            dir: PathBuf::from(dir),
            head,
        };
        match value.strip_prefix("hf:") {
            Some(dir) => bert(dir),
            None if Path::new(value).join("model.safetensors").is_file() => bert(value),
            None => BaseModel::Gpt(PathBuf::from(value)),
        }
    }

    /// Whether the model is a BERT encoder (random or not).
    pub fn is_bert(&self) -> bool {
        match self {
            BaseModel::Gpt(_) => false,
            BaseModel::Bert { .. } => true,
            BaseModel::Random(base) => base.is_bert(),
        }
    }

    /// The head of a BERT base; `None` for a GPT.
    pub fn bert_head(&self) -> Option<BertHead> {
        match self {
            BaseModel::Gpt(_) => None,
            BaseModel::Bert { head, .. } => Some(*head),
            BaseModel::Random(base) => base.bert_head(),
        }
    }

    /// How `metrics.json` names it.
    pub fn describe(&self) -> String {
        match self {
            BaseModel::Gpt(dir) => dir.display().to_string(),
            BaseModel::Bert { dir, .. } => format!("hf:{}", dir.display()),
            BaseModel::Random(base) => format!("random:{}", base.describe()),
        }
    }
}

/// Reads a `--pooling` flag: for our GPT `last` (the default) or `mean`; for a BERT base
/// (`bert`) `mean` (the default) or `cls` (the `[CLS]` pooler). Returns the pooling of the
/// batches and the BERT head.
///
/// # Errors
///
/// [`Error::Usage`] for a value the base does not take.
pub fn parse_pooling(value: Option<&str>, bert: bool) -> Result<(Pooling, BertHead), Error> {
    let value = value.unwrap_or(if bert { "mean" } else { "last" });
    match (value, bert) {
        ("last", false) => Ok((Pooling::LastToken, BertHead::Mean)),
        ("mean", _) => Ok((Pooling::Mean, BertHead::Mean)),
        ("cls", true) => Ok((Pooling::Mean, BertHead::Pooler)),
        (other, _) => Err(Error::Usage(format!(
            "--pooling must be {} for this base, got `{other}`",
            if bert { "mean or cls" } else { "last or mean" }
        ))),
    }
}

/// The `--pooling` value that names `pooling` with `head` on a base: `last`, `mean` or `cls`.
pub fn pooling_name(pooling: Pooling, head: Option<BertHead>) -> &'static str {
    match (pooling, head) {
        (_, Some(BertHead::Pooler)) => "cls",
        (Pooling::LastToken, _) => "last",
        (Pooling::Mean, _) => "mean",
    }
}

/// A GPT base's config and tokenizer, checked against each other.
pub(crate) fn load_gpt_config(dir: &Path) -> Result<(GptConfig, BpeTokenizer), Error> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "is not a base-model directory".into(),
        });
    }
    let config = crate::model::load_config(&dir.join("config.json"))?;
    let tokenizer = BpeTokenizer::load(dir.join("tokenizer.json"))?;
    check_vocab(&tokenizer, &config, dir)?;
    Ok((config, tokenizer))
}

/// A tokenizer with more ids than the model has embeddings would index past the table.
pub(crate) fn check_vocab(
    tokenizer: &BpeTokenizer,
    config: &GptConfig,
    dir: &Path,
) -> Result<(), Error> {
    match tokenizer.vocab_size() <= config.vocab_size {
        true => Ok(()),
        false => Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "tokenizer.json has {} tokens but config.json's vocab_size is {}; they come from different bases",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Example;

    /// One token per character.
    struct Chars;
    impl TextEncoder for Chars {
        fn encode_for_classifier(
            &self,
            text: &str,
            max_len: usize,
        ) -> Result<(Vec<u32>, bool), Error> {
            let n = text.chars().count();
            Ok((vec![1; n.min(max_len)], n > max_len))
        }
        fn padding_id(&self) -> u32 {
            0
        }
    }

    fn texts(lengths: impl Iterator<Item = usize>) -> SentimentDataset {
        let examples = lengths
            .enumerate()
            .map(|(i, n)| Example {
                label: "a".into(),
                text: "x".repeat(n),
                line: i + 1,
            })
            .collect();
        SentimentDataset {
            path: "t.tsv".into(),
            examples,
        }
    }

    #[test]
    fn the_chosen_length_covers_95_percent_within_the_bounds() {
        // 1..=100 tokens: p95 is 95, rounded up to 96.
        assert_eq!(choose_max_len(&Chars, &texts(1..=100), 512).unwrap(), 96);
        // Short texts keep the default, long ones stop at the cap and at the positions.
        assert_eq!(
            choose_max_len(&Chars, &texts(1..=20), 512).unwrap(),
            BERT_MAX_LEN
        );
        assert_eq!(
            choose_max_len(&Chars, &texts(100..=400), 512).unwrap(),
            BERT_MAX_LEN_CAP
        );
        assert_eq!(choose_max_len(&Chars, &texts(100..=400), 80).unwrap(), 80);
    }
}
