//! [`generate_batch`]: several prompts decoded together as one left-padded batch, through a
//! KV cache: the prompts are read once (prefill), then each step feeds one new token per
//! row and attends to the cached keys and values of everything before it.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;

use crate::Error;
use crate::model::generate::choose;
use crate::model::{CausalLm, KvCache, Sampling, decoder_bias};

/// How [`generate_batch`] decodes.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// The most tokens to add to each prompt.
    pub max_new_tokens: usize,
    /// How each next token is chosen.
    pub sampling: Sampling,
    /// Token ids that end a row (generated, then the row stops).
    pub eos: Vec<u32>,
    /// The id fed at padding positions (never attended to).
    pub pad: u32,
    /// Keep keys and values between steps. Without the cache every step recomputes the
    /// whole sequence: the same tokens, much slower (kept to show and test the difference).
    pub use_cache: bool,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It generated an end-of-sequence token.
    Eos,
    /// It reached `max_new_tokens`.
    Length,
    /// It filled the model's context (a learned position table).
    Context,
}

impl Finish {
    /// `eos`, `length` or `context`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
            Finish::Context => "context",
        }
    }
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated ids, the end-of-sequence token included when one was generated.
    pub tokens: Vec<u32>,
    /// The log-probability of each generated token under the model (its softmax, before
    /// temperature or top-p).
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish: Finish,
}

/// Continues each prompt, all of them in one left-padded batch. Each row gets the
/// positions it would have alone (0 at its first token), and padding is never attended
/// to, so a prompt's continuation does not depend on the others (up to float rounding).
///
/// # Errors
///
/// [`Error::Usage`] for no prompt, an empty prompt, or a prompt longer than the model's
/// context.
pub fn generate_batch<M: CausalLm>(
    model: &M,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    rng: &mut impl Rng,
) -> Result<Vec<Generation>, Error> {
    let limit = model.context_len().unwrap_or(usize::MAX);
    if prompts.is_empty() {
        return Err(Error::Usage("no prompt to continue".into()));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty() || p.len() > limit) {
        return Err(Error::Usage(format!(
            "prompt {} has {} tokens; a prompt needs 1 to {limit} tokens for this model",
            i + 1,
            prompts[i].len(),
        )));
    }
    let mut batch = Batch::left_padded(prompts, options.pad);
    let mut cache = match options.use_cache {
        true => KvCache::new(model.num_layers()),
        false => KvCache::disabled(model.num_layers()),
    };
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut rows: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: Finish::Length,
        })
        .collect();
    let mut logits = batch.last_logits(model, &mut cache, batch.width());
    for _ in 0..options.max_new_tokens {
        let mut next = Vec::with_capacity(prompts.len());
        for (i, row) in rows.iter_mut().enumerate() {
            if out[i].is_some() {
                next.push(None);
                continue;
            }
            let token = choose(&logits[i], options.sampling, rng);
            row.tokens.push(token);
            row.logprobs.push(log_softmax_at(&logits[i], token));
            let finish = match () {
                _ if options.eos.contains(&token) => Some(Finish::Eos),
                _ if row.tokens.len() == options.max_new_tokens => Some(Finish::Length),
                _ if batch.lengths[i] >= limit => Some(Finish::Context),
                _ => None,
            };
            if let Some(finish) = finish {
                row.finish = finish;
                out[i] = Some(row.clone());
            }
            next.push(Some(token));
        }
        if out.iter().all(Option::is_some) {
            break;
        }
        batch.push(&next, options.pad);
        let fresh = match options.use_cache {
            true => 1,
            false => batch.width(),
        };
        logits = batch.last_logits(model, &mut cache, fresh);
    }
    Ok(out
        .into_iter()
        .zip(rows)
        .map(|(done, row)| done.unwrap_or(row))
        .collect())
}

/// `log softmax(logits)[token]`, in f64 for the sum.
fn log_softmax_at(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    (logits[token as usize] as f64 - max - sum.ln()) as f32
}

/// The token matrix of a left-padded batch, host-side.
struct Batch {
    /// `[rows][width]` ids.
    tokens: Vec<Vec<u32>>,
    /// `[rows][width]`, true at padding.
    padding: Vec<Vec<bool>>,
    /// Real tokens per row.
    lengths: Vec<usize>,
}

impl Batch {
    fn left_padded(prompts: &[Vec<u32>], pad: u32) -> Self {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let tokens = prompts
            .iter()
            .map(|p| {
                std::iter::repeat_n(pad, width - p.len())
                    .chain(p.iter().copied())
                    .collect()
            })
            .collect();
        let padding = prompts
            .iter()
            .map(|p| (0..width).map(|t| t < width - p.len()).collect())
            .collect();
        let lengths = prompts.iter().map(Vec::len).collect();
        Self {
            tokens,
            padding,
            lengths,
        }
    }

    fn width(&self) -> usize {
        self.tokens[0].len()
    }

    /// Appends one column: a row's token, or padding for a row that has stopped.
    fn push(&mut self, next: &[Option<u32>], pad: u32) {
        for (i, token) in next.iter().enumerate() {
            self.tokens[i].push(token.unwrap_or(pad));
            self.padding[i].push(token.is_none());
            self.lengths[i] += usize::from(token.is_some());
        }
    }

    /// Runs the last `fresh` columns through the model (the cache holds the others) and
    /// returns each row's logits at the last column.
    fn last_logits<M: CausalLm>(
        &self,
        model: &M,
        cache: &mut KvCache,
        fresh: usize,
    ) -> Vec<Vec<f32>> {
        let (rows, width) = (self.tokens.len(), self.width());
        let device = model.device();
        let start = width - fresh;
        let mut ids = Vec::with_capacity(rows * fresh);
        let mut positions = Vec::with_capacity(rows * fresh);
        for (tokens, padding) in self.tokens.iter().zip(&self.padding) {
            // A position counts the real tokens before it, as transformers derives
            // position_ids from the attention mask.
            let mut seen = padding[..start].iter().filter(|p| !**p).count() as i64;
            for t in start..width {
                ids.push(tokens[t] as i64);
                positions.push(seen);
                seen += i64::from(!padding[t]);
            }
        }
        let padding: Vec<bool> = self.padding.iter().flatten().copied().collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, fresh]), &device);
        let positions =
            Tensor::<2, Int>::from_data(TensorData::new(positions, [rows, fresh]), &device);
        let padding =
            Tensor::<2, Bool>::from_data(TensorData::new(padding, [rows, width]), &device);
        let hidden = model.hidden_cached(ids, positions, decoder_bias(padding, fresh), cache);
        let last = hidden.narrow(1, fresh - 1, 1); // [rows, 1, d_model]
        let logits: Vec<f32> = model
            .head(last)
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap_or_default();
        let vocab = logits.len() / rows;
        logits.chunks(vocab).map(<[f32]>::to_vec).collect()
    }
}
