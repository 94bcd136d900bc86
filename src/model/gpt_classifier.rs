//! A sequence classifier on top of [`Gpt`]: pool the hidden states, then a linear head.

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor};
use burn_lora::nn::{Linear, LinearConfig};

use crate::model::{Gpt, weighted_pool};

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
    /// [`pool_weights`](crate::model::pool_weights)): a one-hot row selects the last token,
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
