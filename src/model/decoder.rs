//! [`DecoderBase`]: a causal LM with everything generation needs beside its weights (the
//! tokenizer, the chat template, the end-of-sequence and padding ids), from `hf:DIR` (a
//! Hugging Face Llama, Qwen2 or Qwen3 checkpoint) or a directory the pretrain example made
//! (our GPT). [`Decoder`] puts both families behind one [`CausalLm`].

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::Error;
use crate::model::llama::{Llama, LlamaConfig};
use crate::model::{CausalLm, Gpt, KvCache, LinearHead};
use crate::tokenizer::{BpeTokenizer, ChatTemplate, HfTokenizer};

/// Either decoder family. Burn's traversal skips the variant, so module paths (and the
/// adapter files that name them) are the family's own.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one model per process: its inline size is no cost
pub enum Decoder {
    /// Our GPT (learned positions, GELU, LayerNorm).
    Gpt(Gpt),
    /// A Hugging Face Llama, Qwen2 or Qwen3.
    Llama(Llama),
}

impl CausalLm for Decoder {
    fn hidden_cached(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        bias: Tensor<4>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        match self {
            Decoder::Gpt(m) => m.hidden_cached(tokens, positions, bias, cache),
            Decoder::Llama(m) => m.hidden_cached(tokens, positions, bias, cache),
        }
    }

    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            Decoder::Gpt(m) => m.head(hidden),
            Decoder::Llama(m) => m.head(hidden),
        }
    }

    fn linear_head(&self) -> LinearHead {
        match self {
            Decoder::Gpt(m) => m.linear_head(),
            Decoder::Llama(m) => m.linear_head(),
        }
    }

    fn context_len(&self) -> Option<usize> {
        match self {
            Decoder::Gpt(m) => m.context_len(),
            Decoder::Llama(m) => m.context_len(),
        }
    }

    fn num_layers(&self) -> usize {
        match self {
            Decoder::Gpt(m) => m.num_layers(),
            Decoder::Llama(m) => m.num_layers(),
        }
    }

    fn device(&self) -> Device {
        match self {
            Decoder::Gpt(m) => CausalLm::device(m),
            Decoder::Llama(m) => CausalLm::device(m),
        }
    }
}

/// A decoder's tokenizer: ours (BPE, for our GPT) or a checkpoint's `tokenizer.json`.
#[derive(Debug, Clone)]
pub enum LmTokenizer {
    /// Our byte-level BPE.
    Bpe(BpeTokenizer),
    /// A Hugging Face tokenizer.
    Hf(HfTokenizer),
}

impl LmTokenizer {
    /// The ids of `text`; `add_special_tokens` adds what the tokenizer adds to a plain
    /// prompt (Llama 3's BOS; nothing for ours or Qwen's), and is false for a rendered
    /// chat template, which writes its own.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        match self {
            LmTokenizer::Bpe(t) => t.encode(text),
            LmTokenizer::Hf(t) => t.encode_with(text, add_special_tokens),
        }
    }

    /// The text of `ids`, special tokens left out.
    ///
    /// # Errors
    ///
    /// [`Error::Tokenizer`] if decoding fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        match self {
            LmTokenizer::Bpe(t) => t.decode(ids),
            LmTokenizer::Hf(t) => t.decode(ids, true),
        }
    }
}

/// A decoder ready to generate: the model and what surrounds it in its directory.
#[derive(Debug)]
pub struct DecoderBase {
    /// The weights.
    pub model: Decoder,
    /// Its tokenizer.
    pub tokenizer: LmTokenizer,
    /// The chat template, for checkpoints that have one.
    pub chat: Option<ChatTemplate>,
    /// Ids that end generation: `generation_config.json`'s `eos_token_id`, else
    /// `config.json`'s; `<eos>` for our GPT.
    pub eos: Vec<u32>,
    /// The padding id: `pad_token_id`, else the first end-of-sequence id.
    pub pad: u32,
    /// Where it was loaded from (PEFT's `base_model_name_or_path`).
    pub name: String,
}

impl DecoderBase {
    /// Loads `hf:DIR` (a Hugging Face decoder) or `DIR` (a base made by the pretrain
    /// example, or a Hugging Face checkpoint, told apart by `model.bpk`).
    ///
    /// # Errors
    ///
    /// A missing file or directory, an unknown architecture, a shape that disagrees with
    /// the config, or a malformed tokenizer or chat template, each named.
    pub fn load(spec: &str, device: &Device) -> Result<Self, Error> {
        let (dir, hf) = match spec.strip_prefix("hf:") {
            Some(dir) => (PathBuf::from(dir), true),
            None => (
                PathBuf::from(spec),
                !Path::new(spec).join("model.bpk").exists(),
            ),
        };
        if !dir.is_dir() {
            return Err(Error::io(
                &dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        match hf {
            true => Self::load_hf(&dir, device),
            false => Self::load_gpt(&dir, device),
        }
    }

    /// The same base with its model changed by `f` (adapters loaded, merged, ...).
    ///
    /// # Errors
    ///
    /// What `f` returns.
    pub fn map_model(
        self,
        f: impl FnOnce(Decoder) -> Result<Decoder, Error>,
    ) -> Result<Self, Error> {
        Ok(Self {
            model: f(self.model)?,
            ..self
        })
    }

    fn load_gpt(dir: &Path, device: &Device) -> Result<Self, Error> {
        let tokenizer = BpeTokenizer::load(dir.join("tokenizer.json"))?;
        let (_, model) = Gpt::load(dir, "model.bpk", device)?;
        Ok(Self {
            model: Decoder::Gpt(model),
            eos: vec![tokenizer.eos_id()],
            pad: tokenizer.pad_id(),
            tokenizer: LmTokenizer::Bpe(tokenizer),
            chat: None,
            name: dir.display().to_string(),
        })
    }

    fn load_hf(dir: &Path, device: &Device) -> Result<Self, Error> {
        let (config, model) = Llama::load(dir, device)?;
        let generation = read_generation_config(dir)?;
        let eos = match ids(&generation["eos_token_id"]) {
            ids if !ids.is_empty() => ids,
            _ => config.eos_token_ids.clone(),
        };
        let pad = ids(&generation["pad_token_id"])
            .first()
            .copied()
            .or(config.pad_token_id)
            .or(eos.first().copied())
            .unwrap_or(0);
        let tokenizer = HfTokenizer::load_with_pad_id(dir.join("tokenizer.json"), pad as usize)?;
        check_vocab(&config, &tokenizer, dir)?;
        Ok(Self {
            model: Decoder::Llama(model),
            tokenizer: LmTokenizer::Hf(tokenizer),
            chat: ChatTemplate::load(dir)?,
            eos,
            pad,
            name: dir.display().to_string(),
        })
    }
}

/// `generation_config.json`, or `null` when the checkpoint has none.
fn read_generation_config(dir: &Path) -> Result<serde_json::Value, Error> {
    let path = dir.join("generation_config.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path,
            message: e.to_string(),
        }),
        Err(_) => Ok(serde_json::Value::Null),
    }
}

/// One id or a list of them.
fn ids(value: &serde_json::Value) -> Vec<u32> {
    match value {
        serde_json::Value::Array(v) => v
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        v => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
    }
}

/// A tokenizer with more tokens than the model has embeddings would index past the table.
fn check_vocab(config: &LlamaConfig, tokenizer: &HfTokenizer, dir: &Path) -> Result<(), Error> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Tokenizer {
            path: dir.join("tokenizer.json"),
            message: format!(
                "has {} tokens, more than config.json's vocab_size {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        });
    }
    Ok(())
}
