//! [`SftModel`]: a decoder as burn-train's `Learner` trains it. One step is next-token
//! cross-entropy on the completion positions of an [`SftBatch`], the mean over those
//! tokens, as TRL's `SFTTrainer` computes it with `completion_only_loss`.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::train::{InferenceStep, SequenceOutput, TrainOutput, TrainStep};

use burn::tensor::{Int, Tensor};

use crate::data::SftBatch;
use crate::model::{CausalLm, Decoder};
use crate::train::recompute::backward_per_block;

/// The decoder being fine-tuned. Its module paths are the decoder's own (`model.` is
/// not added), so adapters saved from it name Hugging Face's modules.
#[derive(Module, Debug)]
pub struct SftModel {
    /// The decoder, with or without LoRA.
    pub decoder: Decoder,
    /// The weight of this step's loss in the gradient: `1 / devices`, so that the
    /// gradients burn-train's `MultiDevice` sums are the whole step's mean; 1 on one device.
    #[module(skip)]
    pub share: f64,
    /// Gradient checkpointing per block
    /// ([`backward_per_block`](crate::train::recompute::backward_per_block)): the
    /// backward pass recomputes one block at a time instead of keeping every activation.
    #[module(skip)]
    pub per_block: bool,
}

impl SftModel {
    /// The loss and the logits and targets of the learnt positions, as burn-train's
    /// metrics read them: `logits [1, learnt, vocab]`, `targets [1, learnt]`.
    pub fn forward_sft(&self, batch: SftBatch) -> SequenceOutput {
        let logits = self.decoder.logits(batch.inputs, batch.padding);
        sft_output(logits, batch.positions, batch.targets)
    }
}

/// The loss and the learnt positions' logits and targets, from the logits of every
/// position: `logits [batch, seq, vocab]`, `positions [n]` (flattened), `targets [n]`.
fn sft_output(
    logits: Tensor<3>,
    positions: Tensor<1, Int>,
    targets: Tensor<1, Int>,
) -> SequenceOutput {
    let [b, s, v] = logits.dims();
    let learnt = logits.reshape([b * s, v]).select(0, positions); // [n, vocab]
    let n = learnt.dims()[0];
    let loss = CrossEntropyLossConfig::new()
        .init(&learnt.device())
        .forward(learnt.clone(), targets.clone());
    SequenceOutput::new(
        loss,
        learnt.reshape([1, n, v]),
        None,
        targets.reshape([1, n]),
    )
}

impl TrainStep for SftModel {
    type Input = SftBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: SftBatch) -> TrainOutput<SequenceOutput> {
        if self.per_block {
            // The loss's backward pass runs block by block; the metrics get the output
            // with its graph cut.
            let mut output = None;
            let (_, grads) = backward_per_block(&self.decoder, batch.inputs, batch.padding, |l| {
                let out = sft_output(l, batch.positions, batch.targets);
                let loss = out.loss.clone().mul_scalar(self.share);
                output = Some(out);
                loss
            })
            .expect("train_sft checks the device and dropout before training");
            let out = output.expect("the loss ran");
            let item =
                SequenceOutput::new(out.loss.detach(), out.logits.detach(), None, out.targets);
            return TrainOutput { grads, item };
        }
        let output = self.forward_sft(batch);
        let grads = output.loss.clone().mul_scalar(self.share).backward();
        TrainOutput::new(self, grads, output)
    }
}

impl InferenceStep for SftModel {
    type Input = SftBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: SftBatch) -> SequenceOutput {
        self.forward_sft(batch)
    }
}

/// The mean loss of a step, for callers that read it outside burn-train.
pub fn loss_value(output: &SequenceOutput) -> f64 {
    output.loss.clone().into_scalar::<f64>()
}

/// `[n]` token losses summed, for a token-weighted mean across batches.
pub(crate) fn summed_loss(output: &SequenceOutput) -> (f64, usize) {
    let n = output.targets.dims()[1];
    (loss_value(output) * n as f64, n)
}
