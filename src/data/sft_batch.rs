//! Batches for generative SFT that train on the completion only.
//!
//! A batch is right-padded. Position `j` of a row predicts token `j + 1`, and it counts in
//! the loss only when that token belongs to a completion ([`completion_mask`]): prompt and
//! padding positions are masked, as TRL's `completion_only_loss` masks them.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// One tokenized example: its ids, and for each id whether it is learnt (a completion or
/// assistant token, which the position before it is trained to predict).
#[derive(Debug, Clone, PartialEq)]
pub struct SftTokens {
    /// The token ids.
    pub ids: Vec<u32>,
    /// `learn[j]`: token `j` is a completion token.
    pub learn: Vec<bool>,
}

impl SftTokens {
    /// Keeps at most `max_len` tokens, dropping the prompt's first ones (TRL's `keep_end`),
    /// so that the completion and the end of the prompt before it stay. Returns whether
    /// anything was cut.
    pub fn truncate(&mut self, max_len: usize) -> bool {
        let cut = self.ids.len().saturating_sub(max_len);
        self.ids.drain(..cut);
        self.learn.drain(..cut);
        cut > 0
    }
}

/// For each row, the positions `0..width` whose next token is learnt: position `j` is
/// trained on predicting token `j + 1`. Prompt positions and the padding after a row are
/// `false`.
pub fn completion_mask(rows: &[&SftTokens], width: usize) -> Vec<Vec<bool>> {
    rows.iter()
        .map(|row| {
            (0..width)
                .map(|j| row.learn.get(j + 1).copied().unwrap_or(false))
                .collect()
        })
        .collect()
}

/// A right-padded batch for next-token training on completions.
#[derive(Debug, Clone)]
pub struct SftBatch {
    /// `[batch, width]`: each row's ids but its last, then padding.
    pub inputs: Tensor<2, Int>,
    /// `[batch, width]`, true at padding.
    pub padding: Tensor<2, Bool>,
    /// `[learnt]`: the flat indices (`row · width + j`) of the learnt positions.
    pub positions: Tensor<1, Int>,
    /// `[learnt]`: the token each learnt position must predict.
    pub targets: Tensor<1, Int>,
}

/// The batch of `rows`, padded on the right with `pad` to the longest row less one.
///
/// # Panics
///
/// When no position of the batch is learnt (every row's completion was cut away); the
/// job's truncation keeps every completion.
pub fn sft_batch(rows: &[&SftTokens], pad: u32, device: &Device) -> SftBatch {
    let width = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(2) - 1;
    let mask = completion_mask(rows, width);
    let (mut inputs, mut padding, mut positions, mut targets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, (row, learnt)) in rows.iter().zip(&mask).enumerate() {
        for (j, &learnt) in learnt.iter().enumerate() {
            let real = j + 1 < row.ids.len();
            inputs.push(if real { row.ids[j] as i64 } else { pad as i64 });
            padding.push(!real);
            if learnt {
                positions.push((r * width + j) as i64);
                targets.push(row.ids[j + 1] as i64);
            }
        }
    }
    assert!(!positions.is_empty(), "a batch with no completion token");
    let n = positions.len();
    SftBatch {
        inputs: Tensor::from_data(TensorData::new(inputs, [rows.len(), width]), device),
        padding: Tensor::from_data(TensorData::new(padding, [rows.len(), width]), device),
        positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n]), device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(prompt: &[u32], completion: &[u32]) -> SftTokens {
        SftTokens {
            ids: prompt.iter().chain(completion).copied().collect(),
            learn: prompt
                .iter()
                .map(|_| false)
                .chain(completion.iter().map(|_| true))
                .collect(),
        }
    }

    #[test]
    fn exactly_the_prompt_and_padding_positions_are_masked() {
        // Row 0: prompt 3 tokens, completion 2 (the last one EOS); row 1: prompt 1, completion 1.
        let a = tokens(&[10, 11, 12], &[20, 2]);
        let b = tokens(&[13], &[21]);
        let batch = sft_batch(&[&a, &b], 0, &Device::default());
        let mask = completion_mask(&[&a, &b], 4);
        // Row 0 predicts 11, 12, 20, 2: the last two are learnt. Row 1 predicts 21, then pads.
        assert_eq!(mask[0], [false, false, true, true]);
        assert_eq!(mask[1], [true, false, false, false]);
        assert_eq!(batch.inputs.dims(), [2, 4]);
        let inputs: Vec<i64> = batch
            .inputs
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(inputs, [10, 11, 12, 20, 13, 0, 0, 0]);
        let padding: Vec<bool> = batch.padding.into_data().try_to_vec::<bool>().unwrap();
        assert_eq!(
            padding,
            [false, false, false, false, false, true, true, true]
        );
        let positions: Vec<i64> = batch
            .positions
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(positions, [2, 3, 4]);
        let targets: Vec<i64> = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(targets, [20, 2, 21]);
    }

    #[test]
    fn truncation_keeps_the_completion_and_the_prompt_end() {
        let mut t = tokens(&[1, 2, 3, 4], &[5, 6]);
        assert!(t.truncate(4));
        assert_eq!(t.ids, [3, 4, 5, 6]);
        assert_eq!(t.learn, [false, false, true, true]);
        assert!(!t.truncate(4));
    }
}
