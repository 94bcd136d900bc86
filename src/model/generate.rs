//! Autoregressive generation: each new token is predicted from the tokens before it.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, RngExt};

use crate::model::CausalLm;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample among the `k` most likely tokens, from `softmax(logits / temperature)`.
    TopK {
        /// How many candidates.
        k: usize,
        /// Above 1 flattens the distribution, below 1 sharpens it.
        temperature: f64,
    },
    /// Nucleus sampling, as transformers' `top_p`: sample from `softmax(logits /
    /// temperature)` restricted to the most likely tokens whose probabilities first add up
    /// to `top_p` (at least one).
    TopP {
        /// Above 1 flattens the distribution, below 1 sharpens it.
        temperature: f64,
        /// The probability mass kept, in `(0, 1]`; 1 samples from the whole vocabulary.
        top_p: f64,
    },
}

/// Extends `prompt` by up to `max_new` tokens, one at a time with no cache, stopping early
/// at `stop`. Only the last [`context_len`](CausalLm::context_len) tokens are fed back.
/// Returns the new tokens. [`generate_batch`](crate::model::generate_batch) is the fast,
/// batched form.
pub fn generate<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    max_new: usize,
    stop: Option<u32>,
    sampling: Sampling,
    rng: &mut impl Rng,
) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for _ in 0..max_new {
        let context = &tokens[tokens.len().saturating_sub(context_len(model))..];
        let seq = context.len();
        let logits = sequence_logits(model, context).slice([0..1, seq - 1..seq]); // [1, 1, vocab]
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap_or_default();
        let next = choose(&logits, sampling, rng);
        tokens.push(next);
        if Some(next) == stop {
            break;
        }
    }
    tokens.split_off(prompt.len())
}

/// The longest context `model` takes (unbounded for rotary positions).
fn context_len<M: CausalLm>(model: &M) -> usize {
    model.context_len().unwrap_or(usize::MAX)
}

/// Picks a token id from one position's logits.
pub(crate) fn choose(logits: &[f32], sampling: Sampling, rng: &mut impl Rng) -> u32 {
    if sampling == Sampling::Greedy {
        // The first of equal maxima, as torch's argmax.
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        return best as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let (k, temperature, top_p) = match sampling {
        Sampling::Greedy => unreachable!("handled above"),
        Sampling::TopK { k, temperature } => (k.clamp(1, logits.len()), temperature, 1.0),
        Sampling::TopP { temperature, top_p } => (logits.len(), temperature, top_p),
    };
    let temperature = temperature.max(1e-6);
    let max = logits[order[0]] as f64;
    let mut weights: Vec<f64> = order[..k]
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
        .collect();
    if top_p < 1.0 {
        // Keep the smallest head whose mass reaches top_p.
        let total: f64 = weights.iter().sum();
        let mut mass = 0.0;
        let keep = weights
            .iter()
            .position(|w| {
                mass += w / total;
                mass >= top_p
            })
            .map_or(weights.len(), |i| i + 1);
        weights.truncate(keep);
    }
    let top = &order[..weights.len()];
    let mut draw = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (&i, w) in top.iter().zip(&weights) {
        if draw < *w {
            return i as u32;
        }
        draw -= w;
    }
    top[top.len() - 1] as u32
}

/// Logits `[1, seq, vocab]` for one unpadded sequence (at most the model's context).
fn sequence_logits<M: CausalLm>(model: &M, tokens: &[u32]) -> Tensor<3> {
    let device = model.device();
    let seq = tokens.len();
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, seq]), &device);
    let padding =
        Tensor::<2, Bool>::from_data(TensorData::new(vec![false; seq], [1, seq]), &device);
    model.logits(input, padding)
}

/// The `k` most likely next tokens after `context`, with their probabilities, most likely
/// first: what the model "thinks" at one step of generation. Uses the last
/// `context_len` tokens of a longer context; an empty context gives an empty answer.
pub fn top_next<M: CausalLm>(model: &M, context: &[u32], k: usize) -> Vec<(u32, f32)> {
    if context.is_empty() {
        return Vec::new();
    }
    let context = &context[context.len().saturating_sub(context_len(model))..];
    let seq = context.len();
    let logits = sequence_logits(model, context).slice([0..1, seq - 1..seq]);
    let probs: Vec<f32> = burn::tensor::activation::softmax(logits, 2)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap_or_default();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
        .into_iter()
        .take(k)
        .map(|i| (i as u32, probs[i]))
        .collect()
}

/// Mean negative log-likelihood, in nats per token, of `continuation` when it follows
/// `context`; `exp` of it is the continuation's perplexity. `context` must not be empty
/// (start it with `<eos>`, the document separator of pre-training), and the two together
/// must fit the model's context.
///
/// # Panics
///
/// If `context` is empty or the whole sequence is longer than `max_seq_len`.
pub fn continuation_nll<M: CausalLm>(model: &M, context: &[u32], continuation: &[u32]) -> f64 {
    assert!(!context.is_empty(), "the context needs at least one token");
    let tokens: Vec<u32> = context.iter().chain(continuation).copied().collect();
    assert!(
        tokens.len() <= context_len(model),
        "{} tokens do not fit a context of {}",
        tokens.len(),
        context_len(model)
    );
    let logits = sequence_logits(model, &tokens[..tokens.len() - 1]);
    let log_probs: Vec<f32> = burn::tensor::activation::log_softmax(logits, 2)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap_or_default();
    let vocab = log_probs.len() / (tokens.len() - 1);
    // Position p predicts token p + 1; score only the continuation's tokens.
    let nll: f64 = (context.len() - 1..tokens.len() - 1)
        .map(|p| -f64::from(log_probs[p * vocab + tokens[p + 1] as usize]))
        .sum();
    nll / continuation.len().max(1) as f64
}
