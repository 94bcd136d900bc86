//! Tensors from token ids: language-model windows and padded classification batches.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// Inputs and next-token targets for language modelling.
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// `[batch, seq]`
    pub inputs: Tensor<2, Int>,
    /// `[batch, seq]`: the inputs shifted left by one.
    pub targets: Tensor<2, Int>,
    /// `[batch, seq]`: all false (windows are cut from one stream, never padded).
    pub padding: Tensor<2, Bool>,
}

/// Cuts a token stream into windows of `seq + 1` tokens and groups them into batches of
/// `batch` windows (a last, smaller batch is kept). The target of each position is the next
/// token: that shift is what makes pre-training self-supervised; the text is its own label.
pub fn lm_batches(stream: &[u32], seq: usize, batch: usize, device: &Device) -> Vec<LmBatch> {
    let windows: Vec<&[u32]> = stream.windows(seq + 1).step_by(seq).collect();
    windows
        .chunks(batch)
        .map(|chunk| {
            let rows = chunk.len();
            let ids = |range: std::ops::Range<usize>| -> Tensor<2, Int> {
                let data: Vec<i64> = chunk
                    .iter()
                    .flat_map(|w| w[range.clone()].iter().map(|&t| t as i64))
                    .collect();
                Tensor::from_data(TensorData::new(data, [rows, seq]), device)
            };
            LmBatch {
                inputs: ids(0..seq),
                targets: ids(1..seq + 1), // the next token is the label
                padding: Tensor::from_data(
                    TensorData::new(vec![false; rows * seq], [rows, seq]),
                    device,
                ),
            }
        })
        .collect()
}

/// A padded batch of token sequences for classification.
#[derive(Debug, Clone)]
pub struct ClassBatch {
    /// `[batch, seq]`, right-padded with the pad id.
    pub tokens: Tensor<2, Int>,
    /// `[batch, seq]`, true at padding.
    pub padding: Tensor<2, Bool>,
    /// Each sequence's length, padding excluded: what pooling weights are built from
    /// ([`Pooling::weights`](crate::model::Pooling::weights)).
    pub lengths: Vec<usize>,
    /// `[batch]`
    pub labels: Tensor<1, Int>,
}

/// Pads `sequences` (each non-empty) to the longest and builds the masks.
pub fn class_batch(
    sequences: &[&[u32]],
    labels: &[usize],
    pad_id: u32,
    device: &Device,
) -> ClassBatch {
    let rows = sequences.len();
    let seq = sequences.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut tokens = vec![pad_id as i64; rows * seq];
    let mut padding = vec![true; rows * seq];
    for (r, s) in sequences.iter().enumerate() {
        for (c, &t) in s.iter().enumerate() {
            tokens[r * seq + c] = t as i64;
            padding[r * seq + c] = false;
        }
    }
    let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    ClassBatch {
        tokens: Tensor::from_data(TensorData::new(tokens, [rows, seq]), device),
        padding: Tensor::from_data(TensorData::new(padding, [rows, seq]), device),
        lengths,
        labels: Tensor::from_data(TensorData::new(labels, [rows]), device),
    }
}
