//! [`BertClassifier`]: a BERT encoder with a classification head, pooled Hugging Face's
//! way (the `[CLS]` pooler) or sentence-transformers' way (the mean).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::{Bert, BertConfig};
use crate::model::{dropout, weighted_pool};

/// How [`BertClassifier`] turns hidden states into one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BertHead {
    /// Hugging Face's `BertForSequenceClassification`: the pooler (`tanh(dense(h[CLS]))`),
    /// dropout, `classifier`. PEFT adapters trained with `task_type="SEQ_CLS"` use this.
    #[default]
    Pooler,
    /// The mean of the non-padding hidden states, dropout, `classifier`: the pooling
    /// sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained for.
    Mean,
}

/// A BERT encoder with a classification head.
#[derive(Module, Debug)]
pub struct BertClassifier {
    /// The encoder (Hugging Face's `bert`).
    pub bert: Bert,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `[hidden] -> [classes]`.
    pub classifier: burn_lora::nn::Linear,
    /// How hidden states become one vector.
    #[module(skip)]
    pub head: BertHead,
}

impl BertClassifier {
    /// Puts a new classifier (initialised as Hugging Face does) on `bert`.
    pub fn new(
        bert: Bert,
        config: &BertConfig,
        classes: usize,
        head: BertHead,
        device: &Device,
    ) -> Self {
        Self {
            bert,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier: config.linear(config.hidden_size, classes, device).into(),
            head,
        }
    }

    /// Logits `[batch, classes]` for `tokens` with `padding` (true at padding), with the
    /// mean head averaging over the non-padding tokens.
    pub fn forward(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<2> {
        let [batch, seq] = padding.dims();
        let keep = padding.clone().bool_not().float();
        let count = keep.clone().sum_dim(1).clamp_min(1.0); // [batch, 1]
        let pool = keep.div(count.expand([batch, seq]));
        self.forward_pooled(tokens, padding, pool)
    }

    /// Logits, with the mean head weighting positions by `pool` `[batch, seq]` (`1/len` over
    /// the text: see [`pool_weights`](crate::model::pool_weights)). The pooler head ignores
    /// `pool`.
    pub fn forward_pooled(
        &self,
        tokens: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        pool: Tensor<2>,
    ) -> Tensor<2> {
        let hidden = self.bert.forward(tokens, padding);
        let pooled = match self.head {
            BertHead::Pooler => self.bert.pool(hidden),
            BertHead::Mean => weighted_pool(hidden, pool),
        };
        self.classifier.forward(dropout(&self.dropout, pooled))
    }
}
