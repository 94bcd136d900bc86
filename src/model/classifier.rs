//! A sequence classifier on top of [`Gpt`]: pool the hidden states, then a linear head.

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor};
use burn_lora::nn::{Linear, LinearConfig};

use burn_lora::PeftOptions;

use crate::model::Gpt;
use crate::model::bert::BertClassifier;

/// A sequence classifier that the fine-tuning loop, [`predict`](crate::train::predict) and
/// the sentiment job can train and run: [`GptClassifier`] and [`BertClassifier`].
pub trait Classifier: Module + Clone + core::fmt::Debug {
    /// The module path of the classification layer: what head-only training trains, and
    /// LoRA saves as a module to save.
    const HEAD: &'static str;

    /// Linears LoRA must leave alone whatever the targets say: layers the forward pass
    /// never runs (an adapter there would count trainable parameters that never get a
    /// gradient). Default none.
    fn lora_excludes(&self) -> Vec<String> {
        Vec::new()
    }

    /// How adapter files name this model's modules (see [`PeftOptions`]). Default: Burn's
    /// module paths.
    fn peft_options() -> PeftOptions {
        PeftOptions::new()
    }

    /// Class logits `[batch, classes]`. `pool` weights each position, `[batch, seq]` (see
    /// [`pool_weights`](crate::data::pool_weights)); a classifier whose head pools on its
    /// own (BERT's `[CLS]` pooler) ignores it.
    fn classify(
        &self,
        tokens: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        pool: Tensor<2>,
    ) -> Tensor<2>;

    /// The classification layer.
    fn head_layer(&self) -> &Linear;
}

impl Classifier for GptClassifier {
    const HEAD: &'static str = "head";

    fn classify(
        &self,
        tokens: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        pool: Tensor<2>,
    ) -> Tensor<2> {
        self.forward(tokens, padding, pool)
    }

    fn head_layer(&self) -> &Linear {
        &self.head
    }

    /// The language-model head never runs in classification.
    fn lora_excludes(&self) -> Vec<String> {
        vec!["gpt.lm_head".into()]
    }
}

impl Classifier for BertClassifier {
    const HEAD: &'static str = "classifier";

    fn classify(
        &self,
        tokens: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        pool: Tensor<2>,
    ) -> Tensor<2> {
        self.forward_pooled(tokens, padding, pool)
    }

    fn head_layer(&self) -> &Linear {
        &self.classifier
    }

    /// With the mean head the pooler never runs, so its `dense` is no LoRA target:
    /// `all-linear` then adapts the six linears of each encoder layer, as PEFT's runs name
    /// them.
    fn lora_excludes(&self) -> Vec<String> {
        match self.head {
            crate::model::bert::BertHead::Mean => vec!["bert.pooler".into()],
            crate::model::bert::BertHead::Pooler => Vec::new(),
        }
    }

    /// Hugging Face's names: `attention.self` (our field is `self_`, `self` being a Rust
    /// keyword) and `LayerNorm`.
    fn peft_options() -> PeftOptions {
        crate::model::bert::peft_options()
    }
}

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last non-padding token: in a causal model, the only one that has seen the whole
    /// text. The default.
    LastToken,
    /// The mean over non-padding tokens.
    Mean,
}

/// [`Gpt`] plus a classification `head` over pooled hidden states.
#[derive(Module, Debug)]
pub struct GptClassifier {
    /// The (pre-trained) decoder.
    pub gpt: Gpt,
    /// `[d_model] -> [classes]`.
    pub head: Linear,
}

impl GptClassifier {
    /// Puts a fresh head with `classes` outputs on `gpt`.
    pub fn new(gpt: Gpt, classes: usize, device: &Device) -> Self {
        let d_model = gpt.token_embedding.weight.dims()[1];
        Self {
            gpt,
            head: LinearConfig::new(d_model, classes).init(device),
        }
    }

    /// Class logits. `pool` weights each position (see
    /// [`pool_weights`](crate::data::pool_weights)): a one-hot row selects the last token,
    /// `1/len` over the text averages.
    ///
    /// # Shapes
    ///
    /// - tokens, padding, pool: `[batch, seq]`
    /// - output: `[batch, classes]`
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        pool: Tensor<2>,
    ) -> Tensor<2> {
        let hidden = self.gpt.hidden(tokens, padding); // [batch, seq, d_model]
        self.head.forward(weighted_pool(hidden, pool))
    }
}

/// The sum of `hidden` `[batch, seq, d]` over positions, weighted by `pool` `[batch, seq]`:
/// `[batch, d]`. One-hot rows select a token; `1/len` rows average over the text.
pub fn weighted_pool(hidden: Tensor<3>, pool: Tensor<2>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    (hidden * pool.unsqueeze_dim(2))
        .sum_dim(1)
        .reshape([batch, width])
}
