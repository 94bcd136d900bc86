//! [`SftModel`]: a decoder as burn-train's `Learner` trains it. One step is next-token
//! cross-entropy on the completion positions of an [`SftBatch`], the mean over those
//! tokens, as TRL's `SFTTrainer` computes it with `completion_only_loss`.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::train::{InferenceStep, SequenceOutput, TrainOutput, TrainStep};

use crate::data::SftBatch;
use crate::model::{CausalLm, Decoder};

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
}

impl SftModel {
    /// The loss and the logits and targets of the learnt positions, as burn-train's
    /// metrics read them: `logits [1, learnt, vocab]`, `targets [1, learnt]`.
    pub fn forward_sft(&self, batch: SftBatch) -> SequenceOutput {
        let logits = self.decoder.logits(batch.inputs, batch.padding);
        let [b, s, v] = logits.dims();
        let learnt = logits.reshape([b * s, v]).select(0, batch.positions); // [n, vocab]
        let n = learnt.dims()[0];
        let loss = CrossEntropyLossConfig::new()
            .init(&learnt.device())
            .forward(learnt.clone(), batch.targets.clone());
        SequenceOutput::new(
            loss,
            learnt.reshape([1, n, v]),
            None,
            batch.targets.reshape([1, n]),
        )
    }
}

impl TrainStep for SftModel {
    type Input = SftBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: SftBatch) -> TrainOutput<SequenceOutput> {
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
