//! A trained classifier, loaded for prediction: the base, its head as the files describe it,
//! and the adapter or checkpoint on top.
//!
//! The head and the class names come from the files, in this order:
//! 1. `--pooling`, when given;
//! 2. the `labels.json` our runs write beside every artefact (see [`HeadRecord`]);
//! 3. the base's `config.json`: a `BertForSequenceClassification` checkpoint uses its pooler
//!    and `classifier`, with the classes its `id2label` (or `num_labels`) names;
//! 4. the defaults: `mean` for BERT, `last` for our GPT, two classes named `0` and `1`.
//!
//! A `--pooling` that contradicts a `labels.json` is an error naming both.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::Error;
use crate::data::{HeadRecord, LabelSet};
use crate::model::bert::{Bert, BertClassifier, BertConfig};
use crate::model::{Gpt, GptClassifier, Pooling};
use crate::tokenizer::{BpeTokenizer, HfTokenizer};
use crate::train::Classifier;
use crate::train::sentiment::{BERT_MAX_LEN, BaseModel, check_vocab, parse_pooling};

/// A trained classifier to load on top of a base: a LoRA adapter directory (PEFT format,
/// with the head saved in it) or a full fine-tuned checkpoint.
#[derive(Debug, Clone)]
pub enum Trained {
    /// A directory written by [`burn_lora::save_adapter`], or by PEFT's `save_pretrained`.
    Adapter(PathBuf),
    /// A `full_model.bpk` written by full fine-tuning.
    Checkpoint(PathBuf),
    /// Several adapter directories, each loaded under its name beside the others (the
    /// first is active). They must agree on the labels and the pooling, and carry no head
    /// of their own (see [`burn_lora::load_adapter_with`]).
    Adapters(Vec<(String, PathBuf)>),
}

impl Trained {
    /// The directory whose `labels.json` describes the head: the adapter directory, or the
    /// checkpoint's.
    fn record_dir(&self) -> &Path {
        match self {
            Trained::Adapter(dir) => dir,
            Trained::Checkpoint(path) => path.parent().unwrap_or(Path::new(".")),
            Trained::Adapters(named) => named.first().map_or(Path::new("."), |(_, dir)| dir),
        }
    }
}

/// The model of a [`Loaded`] classifier, with its tokenizer.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // made once per process, then matched and consumed
pub enum LoadedModel {
    /// Our GPT with its BPE tokenizer.
    Gpt(GptClassifier, BpeTokenizer),
    /// A Hugging Face BERT with its own tokenizer.
    Bert(BertClassifier, HfTokenizer),
}

/// A fine-tuned classifier ready to predict.
#[derive(Debug)]
pub struct Loaded {
    /// The model and its tokenizer.
    pub model: LoadedModel,
    /// The class names, in the order of the model's outputs.
    pub labels: LabelSet,
    /// How hidden states are pooled (as in training).
    pub pooling: Pooling,
    /// The `--pooling` value in force (`last`, `mean` or `cls`).
    pub pooling_name: String,
    /// The default input length (the GPT's context, or [`BERT_MAX_LEN`], as in training).
    pub max_len: usize,
    /// Where the head and labels came from, for the user.
    pub source: String,
}

/// Loads the base and the trained part on top of it. `pooling` is the `--pooling` flag;
/// without it the head and the class names follow the files: the run's `labels.json`
/// ([`HeadRecord`]), else the base's `config.json` (a `BertForSequenceClassification`
/// checkpoint: its pooler, its `classifier`, the classes of `id2label`), else the
/// defaults (`mean` for BERT, `last` for our GPT, classes `0` and `1`).
///
/// # Errors
///
/// A bad base directory, adapter, checkpoint or `labels.json`, naming the file; a
/// `--pooling` that the base does not take or that contradicts the record.
pub fn load_classifier(
    base: &BaseModel,
    trained: &Trained,
    pooling: Option<&str>,
    device: &Device,
) -> Result<Loaded, Error> {
    let record = HeadRecord::load(trained.record_dir())?;
    let record_path = trained.record_dir().join(HeadRecord::FILE);
    if let (Some(flag), Some(record)) = (pooling, &record)
        && flag != record.pooling
    {
        return Err(Error::Usage(format!(
            "--pooling {flag} contradicts {}, which records that this model was trained with --pooling {}",
            record_path.display(),
            record.pooling
        )));
    }
    match base {
        BaseModel::Random(_) => Err(Error::Usage(
            "a trained classifier needs the base it was trained on, not `random`".into(),
        )),
        BaseModel::Gpt(dir) => {
            let name = pooling
                .map(str::to_string)
                .or_else(|| record.as_ref().map(|r| r.pooling.clone()))
                .unwrap_or_else(|| "last".into());
            let (pooling, _) = parse_pooling(Some(&name), false)?;
            let (labels, source) = match &record {
                Some(r) => (r.label_set(), record_path.display().to_string()),
                None => (LabelSet::numbered(2), "defaults (no labels.json)".into()),
            };
            let tokenizer = BpeTokenizer::load(dir.join("tokenizer.json"))?;
            let config = crate::model::load_config(&dir.join("config.json"))?;
            check_vocab(&tokenizer, &config, dir)?;
            let (config, gpt) = Gpt::load(dir, "model.bpk", device)?;
            let model = GptClassifier::new(gpt, labels.len(), device);
            let model = on_top(model, trained, record.as_ref())?;
            Ok(Loaded {
                model: LoadedModel::Gpt(model, tokenizer),
                labels,
                pooling,
                pooling_name: name,
                max_len: record
                    .as_ref()
                    .and_then(|r| r.max_len)
                    .unwrap_or(config.max_seq_len)
                    .min(config.max_seq_len),
                source,
            })
        }
        BaseModel::Bert { dir, .. } => {
            let config_path = dir.join("config.json");
            let config = BertConfig::load(&config_path)?;
            let seq_cls = config.is_sequence_classifier();
            let config_labels = config.class_names().map_err(|message| Error::Json {
                path: config_path.clone(),
                message,
            })?;
            let name = pooling
                .map(str::to_string)
                .or_else(|| record.as_ref().map(|r| r.pooling.clone()))
                .unwrap_or_else(|| if seq_cls { "cls" } else { "mean" }.into());
            let (pooling, head) = parse_pooling(Some(&name), true)?;
            let (labels, source) = match (&record, config_labels) {
                (Some(r), _) => (r.label_set(), record_path.display().to_string()),
                (None, Some(names)) => (
                    LabelSet::new(names).map_err(|e| Error::Json {
                        path: config_path.clone(),
                        message: format!("id2label: {e}"),
                    })?,
                    config_path.display().to_string(),
                ),
                (None, None) => (LabelSet::numbered(2), "defaults (no labels.json)".into()),
            };
            let tokenizer =
                HfTokenizer::load_with_pad_id(dir.join("tokenizer.json"), config.pad_token_id)?;
            let (config, bert, _) = Bert::load(dir, device)?;
            let mut model = BertClassifier::new(bert, &config, labels.len(), head, device);
            // A sequence classifier's own head, when its classes are the ones in force; an
            // adapter with modules to save replaces it below.
            if seq_cls {
                // Hugging Face's default is two classes.
                let classes = config.class_names().ok().flatten().map_or(2, |n| n.len());
                if classes == labels.len() {
                    model = model.load_head(dir)?.0;
                }
            }
            Ok(Loaded {
                model: LoadedModel::Bert(on_top(model, trained, record.as_ref())?, tokenizer),
                labels,
                pooling,
                pooling_name: name,
                max_len: record
                    .as_ref()
                    .and_then(|r| r.max_len)
                    .unwrap_or(BERT_MAX_LEN)
                    .min(config.max_position_embeddings),
                source,
            })
        }
    }
}

fn on_top<C: Classifier>(
    model: C,
    trained: &Trained,
    record: Option<&HeadRecord>,
) -> Result<C, Error> {
    match trained {
        Trained::Adapter(dir) => {
            let model = match record.is_some_and(|r| r.zero_head) {
                true => zero_head(model),
                false => model,
            };
            Ok(burn_lora::load_adapter_with(
                model,
                dir,
                &C::peft_options(),
            )?)
        }
        Trained::Checkpoint(path) => crate::io::load_module(model, path),
        Trained::Adapters(named) => {
            let mut model = match record.is_some_and(|r| r.zero_head) {
                true => zero_head(model),
                false => model,
            };
            for (name, dir) in named {
                let other = HeadRecord::load(dir)?;
                if other.as_ref() != record {
                    return Err(Error::Usage(format!(
                        "{} and {} record different labels, pooling or head: one base serves adapters of one kind",
                        dir.display(),
                        named[0].1.display()
                    )));
                }
                let options = C::peft_options().with_adapter_name(name.clone());
                model = burn_lora::load_adapter_with(model, dir, &options)?;
            }
            Ok(model)
        }
    }
}

/// `model` with its classifier's weight and bias all zeros: the base under an adapter that
/// learned the whole head (see [`HeadRecord::zero_head`]).
pub fn zero_head<C: Classifier>(model: C) -> C {
    struct Zero {
        path: Vec<String>,
        head: &'static str,
    }
    impl burn::module::ModuleMapper for Zero {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::tensor::Tensor<D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D>> {
            match self.path.first().map(String::as_str) == Some(self.head) {
                true => param.map(|t| t.zeros_like()),
                false => param,
            }
        }
    }
    model.map(&mut Zero {
        path: Vec::new(),
        head: C::HEAD,
    })
}
