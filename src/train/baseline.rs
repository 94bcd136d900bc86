//! A classic bag-of-words baseline: multinomial naive Bayes on unigrams and bigrams.

use std::collections::HashMap;

/// Word unigrams and bigrams of lower-cased text; for scripts without spaces (Chinese),
/// every character counts as a word.
pub fn features(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_alphanumeric() && c.is_ascii() || c == '\'' {
            current.push(c);
        } else {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            if c.is_alphanumeric() {
                words.push(c.to_string());
            }
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let bigrams: Vec<String> = words
        .windows(2)
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect();
    words.extend(bigrams);
    words
}

/// Multinomial naive Bayes with add-one smoothing.
#[derive(Debug, Clone)]
pub struct NaiveBayes {
    log_prior: [f64; 2],
    counts: [HashMap<String, f64>; 2],
    totals: [f64; 2],
    vocab: f64,
}

impl NaiveBayes {
    /// Fits the model to labelled texts (labels 0 and 1).
    pub fn fit<'a>(examples: impl Iterator<Item = (&'a str, usize)>) -> Self {
        let mut counts = [HashMap::new(), HashMap::new()];
        let mut docs = [0.0f64; 2];
        for (text, label) in examples {
            docs[label] += 1.0;
            for f in features(text) {
                *counts[label].entry(f).or_insert(0.0) += 1.0;
            }
        }
        let mut vocab: std::collections::HashSet<&String> = counts[0].keys().collect();
        vocab.extend(counts[1].keys());
        let n = docs[0] + docs[1];
        Self {
            log_prior: [(docs[0] / n).ln(), (docs[1] / n).ln()],
            totals: [counts[0].values().sum(), counts[1].values().sum()],
            vocab: vocab.len() as f64,
            counts,
        }
    }

    /// The more likely label of `text`.
    pub fn predict(&self, text: &str) -> usize {
        let score = |label: usize| {
            let denominator = (self.totals[label] + self.vocab).ln();
            self.log_prior[label]
                + features(text)
                    .iter()
                    .map(|f| {
                        (self.counts[label].get(f).copied().unwrap_or(0.0) + 1.0).ln() - denominator
                    })
                    .sum::<f64>()
        };
        usize::from(score(1) > score(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_unigrams_and_bigrams() {
        assert_eq!(features("Not good!"), ["not", "good", "not good"]);
        assert_eq!(features("很好"), ["很", "好", "很 好"]);
    }

    #[test]
    fn naive_bayes_learns_word_polarity() {
        let data = [
            ("good fun", 1),
            ("great good", 1),
            ("bad dull", 0),
            ("awful bad", 0),
        ];
        let nb = NaiveBayes::fit(data.iter().map(|&(t, l)| (t, l)));
        assert_eq!(nb.predict("good"), 1);
        assert_eq!(nb.predict("bad"), 0);
    }
}
