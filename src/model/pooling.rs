//! Pooling: how a sequence's hidden states `[batch, seq, d]` become one vector per example.
//!
//! The weights are data, `[batch, seq]`, built from each text's length: a one-hot row
//! selects the last real token, a `1/len` row averages over the text. The classifiers
//! multiply them in ([`weighted_pool`]), so both kinds of pooling are one op.

use burn::tensor::{Tensor, TensorData};

use crate::data::ClassBatch;

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last non-padding token: in a causal model, the only one that has seen the whole
    /// text. The default.
    LastToken,
    /// The mean over non-padding tokens.
    Mean,
}

impl Pooling {
    /// The pooling weights `[rows, seq]` of a padded batch, on the batch's device: see
    /// [`pool_weights`].
    pub fn weights(self, batch: &ClassBatch) -> Tensor<2> {
        let [_, seq] = batch.tokens.dims();
        Tensor::from_data(
            pool_weights(&batch.lengths, seq, self),
            &batch.tokens.device(),
        )
    }
}

/// Per-position pooling weights `[rows, seq]`: one-hot at the last real token for
/// [`Pooling::LastToken`], `1/len` over the real tokens for [`Pooling::Mean`].
///
/// ```
/// use burn_lora_demo::model::{Pooling, pool_weights};
///
/// let w = pool_weights(&[2, 4], 4, Pooling::LastToken);
/// assert_eq!(w.try_to_vec::<f32>().unwrap(), [0., 1., 0., 0., 0., 0., 0., 1.]);
/// let w = pool_weights(&[2], 4, Pooling::Mean);
/// assert_eq!(w.try_to_vec::<f32>().unwrap(), [0.5, 0.5, 0., 0.]);
/// ```
pub fn pool_weights(lengths: &[usize], seq: usize, pooling: Pooling) -> TensorData {
    let mut weights = vec![0f32; lengths.len() * seq];
    for (r, &len) in lengths.iter().enumerate() {
        let row = &mut weights[r * seq..(r + 1) * seq];
        match pooling {
            Pooling::LastToken => row[len - 1] = 1.0,
            Pooling::Mean => row[..len].fill(1.0 / len as f32),
        }
    }
    TensorData::new(weights, [lengths.len(), seq])
}

/// The sum of `hidden` `[batch, seq, d]` over positions, weighted by `pool` `[batch, seq]`:
/// `[batch, d]`. One-hot rows select a token; `1/len` rows average over the text.
pub fn weighted_pool(hidden: Tensor<3>, pool: Tensor<2>) -> Tensor<2> {
    let [batch, _, width] = hidden.dims();
    (hidden * pool.unsqueeze_dim(2))
        .sum_dim(1)
        .reshape([batch, width])
}
