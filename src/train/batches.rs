//! From texts to training batches: tokenize each text as the classifier reads it
//! ([`encode_dataset`]), then cut an epoch into batches of similar lengths
//! ([`length_grouped_batches`]).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::Error;
use crate::data::{LabelSet, SentimentDataset};
use crate::tokenizer::TextEncoder;

/// Token ids of a dataset, ready for batching.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Each text's tokens, truncated, ending with `<eos>`.
    pub tokens: Vec<Vec<u32>>,
    /// The labels.
    pub labels: Vec<usize>,
    /// How many texts were longer than the context and were truncated.
    pub truncated: usize,
}

/// Tokenizes every text of `data` as the classifier reads it (see [`encode_texts`]) and
/// gives each example its class in `labels`.
///
/// # Errors
///
/// A tokenizer failure, or a label `labels` does not hold (naming file, line and label).
pub fn encode_dataset(
    tokenizer: &impl TextEncoder,
    data: &SentimentDataset,
    labels: &LabelSet,
    max_len: usize,
) -> Result<Encoded, Error> {
    let classes = labels.classes(data)?;
    let texts: Vec<&str> = data.texts().collect();
    let (tokens, truncated) = encode_texts(tokenizer, &texts, max_len)?;
    Ok(Encoded {
        tokens,
        labels: classes,
        truncated,
    })
}

/// Tokenizes every text as the classifier reads it (see [`TextEncoder`]: `text <eos>` for
/// our GPT, `[CLS] text [SEP]` for BERT), at most `max_len` tokens. Returns the ids and
/// how many texts had to be truncated.
///
/// # Errors
///
/// A tokenizer failure.
pub fn encode_texts(
    tokenizer: &impl TextEncoder,
    texts: &[&str],
    max_len: usize,
) -> Result<(Vec<Vec<u32>>, usize), Error> {
    let mut tokens = Vec::with_capacity(texts.len());
    let mut truncated = 0;
    for text in texts {
        let (ids, cut) = tokenizer.encode_for_classifier(text, max_len)?;
        truncated += usize::from(cut);
        tokens.push(ids);
    }
    Ok((tokens, truncated))
}

/// How many batches' worth of examples are sorted by length together.
const GROUP_BATCHES: usize = 50;

/// One epoch's batches of example indices: shuffled, then cut into groups of
/// 50 batches (`GROUP_BATCHES`), each group sorted by length and cut into batches, and the
/// batches shuffled again. A batch is padded to its longest sequence, so batches of similar
/// lengths waste little time on padding (46% fewer tokens than random batches of 32 on the
/// English movie snippets); the order is still random (the same idea as Hugging Face's
/// `group_by_length`). Every index appears exactly once.
pub fn length_grouped_batches(
    tokens: &[Vec<u32>],
    batch_size: usize,
    rng: &mut StdRng,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.shuffle(rng);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(tokens.len().div_ceil(batch_size));
    for group in order.chunks_mut(batch_size * GROUP_BATCHES) {
        group.sort_by_key(|&i| tokens[i].len());
        batches.extend(group.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn lengths(n: usize) -> Vec<Vec<u32>> {
        // Lengths 1..=37 in a scrambled order.
        (0..n).map(|i| vec![0; 1 + (i * 7919) % 37]).collect()
    }

    #[test]
    fn length_grouped_batches_cover_every_example_once_and_cut_padding() {
        let tokens = lengths(1000);
        let batches = length_grouped_batches(&tokens, 8, &mut StdRng::seed_from_u64(3));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert_eq!(batches.len(), 125);
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| b.len() * b.iter().map(|&i| tokens[i].len()).max().unwrap())
                .sum()
        };
        let mut random: Vec<usize> = (0..1000).collect();
        random.shuffle(&mut StdRng::seed_from_u64(3));
        let random: Vec<Vec<usize>> = random.chunks(8).map(<[usize]>::to_vec).collect();
        let real: usize = tokens.iter().map(Vec::len).sum();
        // Random batches pad towards the maximum; grouped ones stay near the real count.
        assert!(
            padded(&random) > real * 3 / 2,
            "{} vs {real}",
            padded(&random)
        );
        assert!(
            padded(&batches) < real * 11 / 10,
            "{} vs {real}",
            padded(&batches)
        );
        // Seeded: the same batches again, other ones with another seed.
        assert_eq!(
            batches,
            length_grouped_batches(&tokens, 8, &mut StdRng::seed_from_u64(3))
        );
        assert_ne!(
            batches,
            length_grouped_batches(&tokens, 8, &mut StdRng::seed_from_u64(4))
        );
        // The batch order is shuffled, not sorted by length.
        let first_len = |b: &Vec<usize>| tokens[b[0]].len();
        assert!(
            batches
                .windows(2)
                .any(|w| first_len(&w[0]) > first_len(&w[1]))
        );
    }
}
