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

/// Multinomial naive Bayes with add-one smoothing, over any number of classes.
#[derive(Debug, Clone)]
pub struct NaiveBayes {
    log_prior: Vec<f64>,
    counts: Vec<HashMap<String, f64>>,
    totals: Vec<f64>,
    vocab: f64,
}

impl NaiveBayes {
    /// Fits the model to texts labelled with classes `0..classes`.
    pub fn fit<'a>(examples: impl Iterator<Item = (&'a str, usize)>, classes: usize) -> Self {
        let mut counts = vec![HashMap::new(); classes];
        let mut docs = vec![0.0f64; classes];
        for (text, label) in examples {
            docs[label] += 1.0;
            for f in features(text) {
                *counts[label].entry(f).or_insert(0.0) += 1.0;
            }
        }
        let vocab: std::collections::HashSet<&String> =
            counts.iter().flat_map(HashMap::keys).collect();
        let n: f64 = docs.iter().sum();
        Self {
            // A class with no training text can never be predicted.
            log_prior: docs.iter().map(|d| (d / n).ln()).collect(),
            totals: counts.iter().map(|c| c.values().sum()).collect(),
            vocab: vocab.len() as f64,
            counts,
        }
    }

    /// The most likely class of `text` (the lowest of tied ones).
    pub fn predict(&self, text: &str) -> usize {
        let features = features(text);
        let score = |label: usize| {
            let denominator = (self.totals[label] + self.vocab).ln();
            self.log_prior[label]
                + features
                    .iter()
                    .map(|f| {
                        (self.counts[label].get(f).copied().unwrap_or(0.0) + 1.0).ln() - denominator
                    })
                    .sum::<f64>()
        };
        let mut best = (0, f64::NEG_INFINITY);
        for label in 0..self.counts.len() {
            let s = score(label);
            if s > best.1 {
                best = (label, s);
            }
        }
        best.0
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
        let nb = NaiveBayes::fit(data.iter().map(|&(t, l)| (t, l)), 2);
        assert_eq!(nb.predict("good"), 1);
        assert_eq!(nb.predict("bad"), 0);
        let three = [("good", 2), ("bad", 0), ("so so", 1), ("okay so", 1)];
        let nb = NaiveBayes::fit(three.iter().map(|&(t, l)| (t, l)), 3);
        assert_eq!(
            ["good fun", "so okay", "bad"].map(|t| nb.predict(t)),
            [2, 1, 0]
        );
    }
}
