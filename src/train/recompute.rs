//! Gradient checkpointing per decoder block, as transformers' `gradient_checkpointing_enable`
//! does it: the forward pass keeps only each block's input, and the backward pass recomputes
//! one block at a time.
//!
//! Burn 0.22's own checkpointing (`Device::autodiff().gradient_checkpointing()`) works per
//! operation: it recomputes memory-bound operations (element-wise, softmax, norms) and keeps
//! every matmul's output, which in a decoder is most of what the backward pass holds (q, k,
//! v, the MLP's gate and up, the logits). Burn has no per-block recomputation, so it is
//! written here with no custom autodiff operation, as a chain of small backward passes:
//!
//! 1. Forward through the embedding and every block with the parameters detached, so no
//!    graph is recorded; keep each block's input `h[i]` (`[batch, seq, d]`, a few MB each).
//! 2. The head: from a fresh leaf `h[L]`, the final norm, the logits and the loss, one
//!    backward pass. It gives the head's gradients and `g = ∂loss/∂h[L]`.
//! 3. For each block from the last: from a fresh leaf `h[i]`, the block again, with a
//!    graph this time, and one backward pass of `Σ block(h[i]) · g`. It gives the block's
//!    gradients and the new `g = ∂loss/∂h[i]`; the block's graph is freed before the next.
//! 4. The embedding, if it trains (full fine-tuning): one backward pass of `Σ embed · g`.
//!
//! At most one block's activations are alive at a time, beside the head's. The price is
//! one more forward pass through the blocks. Dropout draws the same masks in both passes on
//! a CPU device: each block runs under a seed of its own ([`with_dropout_seed`]); a GPU
//! draws its masks on the device, so there a model with dropout is refused rather than
//! given gradients of masks its forward pass never used.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Gradients, Int, Tensor};
use burn_lora::Adapter;
use burn_lora::dropout::{is_cpu_device, next_seed, with_dropout_seed};

use crate::Error;
use crate::model::llama::{Llama, Rope};
use crate::model::{CausalLm, KvCache, decoder_bias};

/// The loss of `loss(logits)` on `model`, and its gradients for every trainable parameter,
/// with each decoder block's activations recomputed in the backward pass (see the module
/// docs). The same gradients as `GradientsParams::from_grads(loss.backward(), model)` after
/// a plain forward pass, to rounding, for a fraction of the memory.
///
/// `tokens` and `padding` are those of [`CausalLm::logits`]; `loss` maps the logits
/// (`[batch, seq, vocab_size]`) to a one-element loss. The returned loss is detached.
///
/// # Errors
///
/// [`Error::Usage`] when the model has dropout (in an adapter or in attention) and its
/// device is not a CPU: the recomputed pass would draw other masks than the first.
pub fn backward_per_block<F>(
    model: &Llama,
    tokens: Tensor<2, Int>,
    padding: Tensor<2, Bool>,
    loss: F,
) -> Result<(Tensor<1>, GradientsParams), Error>
where
    F: FnOnce(Tensor<3>) -> Tensor<1>,
{
    let device = tokens.device();
    let cpu = is_cpu_device(&device);
    if !cpu && has_dropout(model) {
        return Err(Error::Usage(format!(
            "per-block gradient checkpointing with dropout needs a CPU device ({device:?} draws \
             its dropout masks on the device, and the recomputed pass would draw others); set \
             the dropout to 0 or use Burn's checkpointing"
        )));
    }
    let [batch, seq] = tokens.dims();
    let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
        .reshape([1, seq])
        .repeat_dim(0, batch);
    let bias = decoder_bias(padding, seq);
    let rope = Rope::new(positions, &model.inv_freq, &device);
    let layers = &model.model.layers;
    let seeds: Vec<u64> = match cpu {
        true => (0..layers.len()).map(|_| next_seed(&device)).collect(),
        false => vec![0; layers.len()],
    };
    let block = |i: usize, layer: &crate::model::llama::DecoderLayer, x: Tensor<3>| {
        let mut cache = KvCache::disabled(1);
        with_dropout_seed(seeds[i], || {
            layer.forward(x, &rope, bias.clone(), &mut cache, 0)
        })
    };

    // 1. Forward with nothing tracked, keeping each block's input.
    let embed = model.model.embed_tokens.clone().map(&mut Detach);
    let mut inputs = Vec::with_capacity(layers.len() + 1);
    inputs.push(embed.forward(tokens.clone()).detach());
    for (i, layer) in layers.iter().enumerate() {
        let x = inputs[i].clone();
        inputs.push(block(i, &layer.clone().map(&mut Detach), x).detach());
    }

    // 2. The head.
    let mut grads = GradientsParams::new();
    let hidden = inputs.pop().expect("the embedding's output").require_grad();
    let value = loss(model.head(model.model.norm.forward(hidden.clone())));
    let mut tape = value.backward();
    let mut g = hidden
        .grad_remove(&mut tape)
        .expect("the loss depends on the hidden states");
    add(&mut grads, &mut tape, model);

    // 3. Each block, from the last.
    for (i, layer) in layers.iter().enumerate().rev() {
        let x = inputs.pop().expect("one input per block").require_grad();
        let out = block(i, layer, x.clone());
        let mut tape = (out * g).sum().backward();
        g = x
            .grad_remove(&mut tape)
            .expect("a block's output depends on its input");
        add(&mut grads, &mut tape, layer);
    }

    // 4. The embedding, when it trains.
    let embedded = model.model.embed_tokens.forward(tokens);
    if embedded.is_tracked() {
        let mut tape = (embedded * g).sum().backward();
        add(&mut grads, &mut tape, &model.model.embed_tokens);
    }
    Ok((value.detach(), grads))
}

/// Whether an adapter or an attention layer of `model` drops anything in training.
fn has_dropout(model: &Llama) -> bool {
    struct Dropouts(bool);
    impl ModuleVisitor for Dropouts {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(adapter) = param.reparameterization::<Adapter>() {
                self.0 |= adapter.dropout_prob() > 0.0;
            }
        }
    }
    let mut visitor = Dropouts(false);
    model.visit(&mut visitor);
    let attention = model
        .model
        .layers
        .iter()
        .any(|l| l.self_attn.dropout.prob > 0.0);
    visitor.0 || attention
}

/// Detaches every tracked parameter: a forward pass through the result records no graph.
struct Detach;

impl ModuleMapper for Detach {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // Burn's `detach` keeps `require_grad`, and a tensor that requires grad is tracked.
        param.map(|t| match t.is_require_grad() {
            true => t.detach().set_require_grad(false),
            false => t,
        })
    }
}

/// Moves `module`'s gradients from `tape` into `grads`, adding to any already there (a
/// tied embedding gets one from the head and one from the input).
fn add<M: Module>(grads: &mut GradientsParams, tape: &mut Gradients, module: &M) {
    struct Add<'a> {
        grads: &'a mut GradientsParams,
        part: GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(new) = self.part.remove::<D>(param.id) else {
                return;
            };
            let sum = match self.grads.remove::<D>(param.id) {
                Some(old) => old + new,
                None => new,
            };
            self.grads.register(param.id, sum);
        }
    }
    let part = GradientsParams::from_module(tape, module);
    module.visit(&mut Add { grads, part });
}
