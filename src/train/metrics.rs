//! Classification metrics: accuracy, per-class precision / recall / F1, macro F1 and the
//! confusion matrix, with the names `metrics.json` gives them.

use serde::{Deserialize, Serialize};

/// One class's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class name.
    pub label: String,
    /// Of the examples predicted as this class, the fraction that are (0 when none is).
    pub precision: f64,
    /// Of the examples of this class, the fraction predicted as it (0 when there are none).
    pub recall: f64,
    /// The harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Examples of this class.
    pub support: usize,
}

/// How well predicted classes match the true ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The class names, in class order.
    pub labels: Vec<String>,
    /// Fraction of examples predicted right.
    pub accuracy: f64,
    /// The unweighted mean of the classes' F1 (scikit-learn's `average="macro"`).
    pub macro_f1: f64,
    /// Each class's scores, in class order.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion_matrix[true][predicted]`: rows are the true classes, columns the
    /// predicted ones, both in the order of `labels`.
    pub confusion_matrix: Vec<Vec<usize>>,
}

impl Classification {
    /// Scores `predicted` against `truth` (class indices into `labels`).
    pub fn new(labels: &[String], predicted: &[usize], truth: &[usize]) -> Self {
        let n = labels.len();
        let mut matrix = vec![vec![0usize; n]; n];
        for (&p, &t) in predicted.iter().zip(truth) {
            matrix[t][p] += 1;
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassMetrics> = (0..n)
            .map(|c| {
                let hits = matrix[c][c];
                let support: usize = matrix[c].iter().sum();
                let predicted: usize = matrix.iter().map(|row| row[c]).sum();
                let (precision, recall) = (ratio(hits, predicted), ratio(hits, support));
                let f1 = match precision + recall {
                    0.0 => 0.0,
                    sum => 2.0 * precision * recall / sum,
                };
                ClassMetrics {
                    label: labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let correct: usize = (0..n).map(|c| matrix[c][c]).sum();
        Self {
            labels: labels.to_vec(),
            accuracy: ratio(correct, truth.len()),
            macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / n.max(1) as f64,
            per_class,
            confusion_matrix: matrix,
        }
    }

    /// The confusion matrix as aligned text, true classes down, predicted across.
    pub fn matrix_table(&self) -> String {
        let width = self
            .labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(6);
        let mut out = format!("{:<w$}", "true\\pred", w = width + 2);
        for label in &self.labels {
            out.push_str(&format!(" {label:>width$}"));
        }
        out.push('\n');
        for (label, row) in self.labels.iter().zip(&self.confusion_matrix) {
            out.push_str(&format!("{label:<w$}", w = width + 2));
            for count in row {
                out.push_str(&format!(" {count:>width$}"));
            }
            out.push('\n');
        }
        out
    }
}

/// The index of the largest value (the first of equal ones).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_scikit_learn() {
        // As sklearn.metrics.classification_report(truth, predicted) gives them:
        // precision 0.3333 / 1.0 / 0.6667, recall 1.0 / 0.3333 / 0.6667, macro F1 0.5556.
        let labels: Vec<String> = ["neg", "neu", "pos"].map(String::from).to_vec();
        let truth = [0, 1, 1, 1, 2, 2, 2];
        let predicted = [0, 0, 1, 2, 2, 0, 2];
        let m = Classification::new(&labels, &predicted, &truth);
        assert_eq!(m.confusion_matrix, [[1, 0, 0], [1, 1, 1], [1, 0, 2]]);
        assert!((m.accuracy - 4.0 / 7.0).abs() < 1e-12);
        let p: Vec<f64> = m.per_class.iter().map(|c| c.precision).collect();
        let r: Vec<f64> = m.per_class.iter().map(|c| c.recall).collect();
        assert!(
            (p[0] - 1.0 / 3.0).abs() < 1e-12 && p[1] == 1.0 && (p[2] - 2.0 / 3.0).abs() < 1e-12
        );
        assert!(
            r[0] == 1.0 && (r[1] - 1.0 / 3.0).abs() < 1e-12 && (r[2] - 2.0 / 3.0).abs() < 1e-12
        );
        assert!((m.macro_f1 - (0.5 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[1].support, 3);
        // A class never predicted and never present scores 0, not NaN.
        let m = Classification::new(&labels, &[0, 0], &[0, 0]);
        assert_eq!(m.per_class[2].f1, 0.0);
        assert!(m.matrix_table().contains("true\\pred"));
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
    }
}
