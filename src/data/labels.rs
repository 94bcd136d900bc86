//! [`LabelSet`]: the classes of a classification job, taken from its training file.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::data::SentimentDataset;
use crate::data::sentiment::dataset_error;

/// The class names of a job, in class order: class `i` is the classifier's output `i`.
///
/// Built from the training file's labels: integer names in numeric order (`0, 1, 2, 10`),
/// any other names in byte order (`negative, neutral, positive`). It is saved beside
/// every artefact of a run (`labels.json`), so a trained model is read with its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    names: Vec<String>,
}

impl LabelSet {
    /// The labels that occur in `data`, in class order.
    ///
    /// # Errors
    ///
    /// [`Error::Dataset`] when fewer than two labels occur: a classifier cannot learn from
    /// one.
    pub fn from_data(data: &SentimentDataset) -> Result<Self, Error> {
        let names: BTreeSet<&str> = data.examples.iter().map(|e| e.label.as_str()).collect();
        if names.len() < 2 {
            return Err(dataset_error(
                &data.path,
                &format!(
                    "has only one label ({}); training needs at least two",
                    names.first().unwrap_or(&"none")
                ),
            ));
        }
        let mut names: Vec<String> = names.into_iter().map(str::to_string).collect();
        if names.iter().all(|n| n.parse::<i64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
        }
        Ok(Self { names })
    }

    /// Labels given by name, in class order.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for fewer than two names, an empty one or a repeated one.
    pub fn new(names: Vec<String>) -> Result<Self, Error> {
        let unique: BTreeSet<&String> = names.iter().collect();
        if names.len() < 2 || unique.len() != names.len() || names.iter().any(|n| n.is_empty()) {
            return Err(Error::Usage(format!(
                "a label set needs two or more distinct, non-empty names, got {names:?}"
            )));
        }
        Ok(Self { names })
    }

    /// `0, 1, ...`: the names of a classifier whose labels nobody recorded.
    pub fn numbered(classes: usize) -> Self {
        Self {
            names: (0..classes.max(2)).map(|i| i.to_string()).collect(),
        }
    }

    /// The names, in class order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The number of classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a label set has at least two names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class of every example of `data`.
    ///
    /// # Errors
    ///
    /// [`Error::Data`] naming the file, line and label of the first example whose label is
    /// not in the set (a label training never saw).
    pub fn classes(&self, data: &SentimentDataset) -> Result<Vec<usize>, Error> {
        data.examples
            .iter()
            .map(|e| {
                self.names
                    .iter()
                    .position(|n| *n == e.label)
                    .ok_or_else(|| Error::Data {
                        path: data.path.clone(),
                        line: e.line,
                        message: format!(
                            "label `{}` never occurs in the training data (its labels: {})",
                            e.label,
                            self.names.join(", ")
                        ),
                    })
            })
            .collect()
    }
}

/// What a trained classifier was trained with, saved as `labels.json` beside its artefact
/// (in the adapter directory, and beside `full_model.bpk` and `head.bpk`): the class names
/// and the pooling (`last`, `mean` or `cls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// The class names, in class order.
    pub labels: Vec<String>,
    /// The `--pooling` value the classifier was trained with.
    pub pooling: String,
    /// Whether the base's classifier was all zeros under the adapter, which then learned
    /// the whole head by adapting it (the `multi_adapter` example's adapters, which carry
    /// no head of their own). Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero_head: bool,
    /// The longest input, in tokens, the classifier was trained on; `predict` reads the
    /// same. Absent in files from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

impl HeadRecord {
    /// The file name.
    pub const FILE: &'static str = "labels.json";

    /// Writes `dir/labels.json` atomically.
    ///
    /// # Errors
    ///
    /// A failed write.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(self).expect("a record serializes");
        crate::io::write_atomic(&dir.join(Self::FILE), json.as_bytes())
    }

    /// Reads `dir/labels.json`; `None` when there is none (an adapter PEFT wrote, or one
    /// from before labels were recorded).
    ///
    /// # Errors
    ///
    /// An unreadable or malformed file, or a label set [`LabelSet::new`] refuses, naming the
    /// file.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(Self::FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let record: Self = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        LabelSet::new(record.labels.clone()).map_err(|e| Error::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(record))
    }

    /// The label set.
    pub fn label_set(&self) -> LabelSet {
        LabelSet {
            names: self.labels.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Example;

    fn data(labels: &[&str]) -> SentimentDataset {
        SentimentDataset {
            path: "t.tsv".into(),
            examples: labels
                .iter()
                .enumerate()
                .map(|(i, l)| Example {
                    label: l.to_string(),
                    text: "x".into(),
                    line: i + 1,
                })
                .collect(),
        }
    }

    #[test]
    fn integer_labels_sort_numerically_and_names_by_bytes() {
        let set = LabelSet::from_data(&data(&["10", "2", "0", "2"])).unwrap();
        assert_eq!(set.names(), ["0", "2", "10"]);
        let set = LabelSet::from_data(&data(&["positive", "neutral", "negative"])).unwrap();
        assert_eq!(set.names(), ["negative", "neutral", "positive"]);
        assert_eq!(
            set.classes(&data(&["positive", "negative"])).unwrap(),
            [2, 0]
        );
    }

    #[test]
    fn an_unseen_label_names_file_line_and_label() {
        let set = LabelSet::from_data(&data(&["neg", "pos"])).unwrap();
        let err = set.classes(&data(&["neg", "meh"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.tsv:2: label `meh` never occurs in the training data (its labels: neg, pos)"
        );
        let err = LabelSet::from_data(&data(&["pos", "pos"])).unwrap_err();
        assert!(err.to_string().contains("only one label (pos)"), "{err}");
        assert!(LabelSet::new(vec!["a".into(), "a".into()]).is_err());
    }
}
