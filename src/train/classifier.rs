//! The training loop's contract: what a model must offer to be fine-tuned, evaluated and
//! saved by [`finetune`](crate::train::finetune), [`predict`](crate::train::predict) and
//! the sentiment job. The models themselves ([`GptClassifier`], [`BertClassifier`]) live in
//! [`model`](crate::model) and know nothing of training.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Bool, Int, Tensor};
use burn_lora::PeftOptions;
use burn_lora::nn::Linear;

use crate::model::GptClassifier;
use crate::model::bert::{BertClassifier, BertHead};

/// A sequence classifier that the fine-tuning loop, [`predict`](crate::train::predict) and
/// the sentiment job can train and run: [`GptClassifier`] and [`BertClassifier`].
pub trait Classifier: Module + ModuleDisplay + Clone + core::fmt::Debug + 'static {
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
    /// [`pool_weights`](crate::model::pool_weights)); a classifier whose head pools on its
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
            BertHead::Mean => vec!["bert.pooler".into()],
            BertHead::Pooler => Vec::new(),
        }
    }

    /// Hugging Face's names: `attention.self` (our field is `self_`, `self` being a Rust
    /// keyword) and `LayerNorm`.
    fn peft_options() -> PeftOptions {
        crate::model::bert::peft_options()
    }
}
