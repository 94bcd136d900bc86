//! Gradient checkpointing per decoder block, as transformers' `gradient_checkpointing_enable`
//! does it: the forward pass keeps only each block's input, and the backward pass recomputes
//! one block at a time.
//!
//! Burn 0.22's own checkpointing (`Device::autodiff().gradient_checkpointing()`) works per
//! operation: it recomputes memory-bound operations (element-wise, softmax, norms) and keeps
//! every matmul's output, which in a decoder is most of what the backward pass holds (q, k,
//! v, the MLP's gate and up, the logits). Burn has no per-block recomputation and no custom
//! backward operation on its public tensor API, so this is a chain of small backward passes:
//!
//! 1. Forward through the embedding and every block with the parameters detached, so no
//!    graph is recorded; keep each block's input `h[i]` (`[batch, seq, d]`, a few MB each).
//! 2. The head: from a fresh leaf `h[L]`, the final norm, the logits and the loss, one
//!    backward pass (one per chunk of positions with [`backward_per_block_chunked`]; with
//!    [`backward_per_block_cross_entropy`], the loss's gradient computed in its forward pass
//!    by [`linear_cross_entropy`]). It gives the head's gradients and `g = ∂loss/∂h[L]`.
//! 3. For each block from the last: from a fresh leaf `h[i]`, the block again, with a
//!    graph this time, and one backward pass of `Σ block(h[i]) · g`. It gives the block's
//!    gradients and the new `g = ∂loss/∂h[i]`; the block's graph is freed before the next.
//! 4. The embedding, if it trains (full fine-tuning): one backward pass of `Σ embed · g`.
//!
//! At most one block's activations are alive at a time, beside the head's. The price is
//! one more forward pass through the blocks. Dropout draws the same masks in both passes on
//! a CPU device: the embedding and each block run under a seed of their own
//! ([`with_dropout_seed`]). A GPU draws its masks on the device, so there a model with
//! dropout is refused rather than given gradients of masks its forward pass never used.
//!
//! Size: one algorithm and the `BlockStack` trait it walks, with its three implementations
//! (Llama, our GPT, and `Decoder` dispatching to them), which belong next to it.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Device, Gradients, Int, Tensor};
use burn_lora::Adapter;
use burn_lora::dropout::{is_cpu_device, next_seed, with_dropout_seed};

use crate::Error;
use crate::model::llama::{Llama, Rope};
use crate::model::{CausalLm, Decoder, Gpt, KvCache, decoder_bias, dropout, embed, positions};
use crate::train::head_loss::linear_cross_entropy;

/// A decoder seen as what per-block recomputation walks: an embedding, a stack of blocks,
/// and a head (final norm and projection). Implemented by [`Llama`], [`Gpt`] and
/// [`Decoder`]; a model of your own implements it to use [`backward_per_block`].
pub trait BlockStack: Module + Clone {
    /// What every block takes beside its input (positions, the attention bias).
    type Context;

    /// The context of a right-padded batch (`padding` true at padding tokens).
    fn context(&self, tokens: &Tensor<2, Int>, padding: Tensor<2, Bool>) -> Self::Context;

    /// The first block's input, `[batch, seq, d]`.
    fn embed(&self, tokens: Tensor<2, Int>, context: &Self::Context) -> Tensor<3>;

    /// The number of blocks.
    fn num_blocks(&self) -> usize;

    /// Block `i` on `x`, `[batch, seq, d]` in and out.
    fn block(&self, i: usize, x: Tensor<3>, context: &Self::Context) -> Tensor<3>;

    /// The logits from the last block's output: final norm and head.
    fn finish(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// The final norm alone, what the head reads: `finish` is the head of this.
    fn final_norm(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// Whether a dropout of the model itself (not of an adapter) is active in training.
    fn has_dropout(&self) -> bool;
}

/// The loss of `loss(logits)` on `model`, and its gradients for every trainable parameter,
/// with each block's activations recomputed in the backward pass (see the module docs).
/// The same gradients as `GradientsParams::from_grads(loss.backward(), model)` after a
/// plain forward pass, for a fraction of the memory.
///
/// `tokens` and `padding` are those of [`CausalLm::logits`]; `loss` maps the logits
/// (`[batch, seq, vocab_size]`) to a one-element loss. The returned loss is detached.
///
/// # Errors
///
/// [`Error::Usage`] when the model has active dropout (in an adapter or in the model) and
/// its device is not a CPU: the recomputed pass would draw other masks than the first.
pub fn backward_per_block<M, F>(
    model: &M,
    tokens: Tensor<2, Int>,
    padding: Tensor<2, Bool>,
    loss: F,
) -> Result<(Tensor<1>, GradientsParams), Error>
where
    M: BlockStack,
    F: FnOnce(Tensor<3>) -> Tensor<1>,
{
    let seq = tokens.dims()[1];
    let mut loss = Some(loss);
    backward_per_block_chunked(model, tokens, padding, seq, |logits, _| {
        (loss.take().expect("one chunk covers every position"))(logits)
    })
}

/// [`backward_per_block`] with the head and the loss run `chunk` positions at a time, each
/// chunk its own backward pass: the logits (`[batch, chunk, vocab_size]`, 0.6 GB for 4 rows
/// of 256 positions of a 151,936-token vocabulary) and the loss's intermediates are alive
/// for one chunk only. `loss(logits, start)` gets the logits of positions
/// `start..start + len` of every row and returns that chunk's part of the loss; the loss is
/// the sum of the parts (for a mean over tokens, weight each chunk's mean by its share of
/// the tokens). The returned loss is that sum, detached.
///
/// # Errors
///
/// As [`backward_per_block`]; [`Error::Usage`] for a `chunk` of 0.
pub fn backward_per_block_chunked<M, F>(
    model: &M,
    tokens: Tensor<2, Int>,
    padding: Tensor<2, Bool>,
    chunk: usize,
    mut loss: F,
) -> Result<(Tensor<1>, GradientsParams), Error>
where
    M: BlockStack,
    F: FnMut(Tensor<3>, usize) -> Tensor<1>,
{
    if chunk == 0 {
        return Err(Error::Usage("backward_per_block_chunked: chunk 0".into()));
    }
    let [batch, seq] = tokens.dims();
    per_block(model, tokens, padding, |hidden, grads| {
        let mut value: Option<Tensor<1>> = None;
        let mut parts = Vec::with_capacity(seq.div_ceil(chunk));
        for start in (0..seq).step_by(chunk) {
            let end = (start + chunk).min(seq);
            let h = hidden.clone().slice([0..batch, start..end]).require_grad();
            let part = loss(model.finish(h.clone()), start);
            let mut tape = part.backward();
            parts.push(
                h.grad_remove(&mut tape)
                    .expect("the loss depends on the hidden states"),
            );
            add(grads, &mut tape, model);
            let part = part.detach();
            value = Some(match value {
                Some(sum) => sum + part,
                None => part,
            });
        }
        let g = match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => Tensor::cat(parts, 1),
        };
        Ok((value.expect("at least one position"), g))
    })
}

/// [`backward_per_block`] for the mean next-token cross-entropy of `targets`, times
/// `weight` (1 for the mean; a replica's share of a batch), with the head and the loss run
/// by [`linear_cross_entropy`] `chunk` positions at a time: the loss's gradient comes out
/// of the forward pass, and only one chunk's logits are alive at a time. What
/// [`backward_per_block_chunked`] does with Burn's `CrossEntropyLoss`, without the
/// backward pass through the logits.
///
/// # Shapes
///
/// - tokens, padding, targets: `[batch, seq]` (every position counts; select positions
///   before, or use [`backward_per_block_chunked`] with a loss of your own)
///
/// # Errors
///
/// As [`backward_per_block`]; [`Error::Usage`] for a `chunk` of 0, a target outside the
/// vocabulary or shapes that disagree.
pub fn backward_per_block_cross_entropy<M>(
    model: &M,
    tokens: Tensor<2, Int>,
    padding: Tensor<2, Bool>,
    targets: Tensor<2, Int>,
    weight: f64,
    chunk: usize,
) -> Result<(Tensor<1>, GradientsParams), Error>
where
    M: BlockStack + CausalLm,
{
    let [batch, seq] = tokens.dims();
    if targets.dims() != [batch, seq] {
        return Err(Error::Usage(format!(
            "backward_per_block_cross_entropy: tokens are [{batch}, {seq}], targets {:?}",
            targets.dims()
        )));
    }
    per_block(model, tokens, padding, |hidden, grads| {
        let h = hidden.require_grad();
        let normed = model.final_norm(h.clone());
        let d = normed.dims()[2];
        let loss = linear_cross_entropy(
            normed.reshape([batch * seq, d]),
            &model.linear_head(),
            targets.reshape([batch * seq]),
            chunk,
        )?
        .mul_scalar(weight);
        let mut tape = loss.backward();
        let g = h
            .grad_remove(&mut tape)
            .expect("the loss depends on the hidden states");
        add(grads, &mut tape, model);
        Ok((loss.detach(), g))
    })
}

/// Steps 1, 3 and 4 of the module's doc around `head`, step 2: `head(h[L], grads)` gets the
/// last block's output (untracked), adds the head's gradients to `grads`, and returns the
/// loss and `∂loss/∂h[L]`.
fn per_block<M, H>(
    model: &M,
    tokens: Tensor<2, Int>,
    padding: Tensor<2, Bool>,
    head: H,
) -> Result<(Tensor<1>, GradientsParams), Error>
where
    M: BlockStack,
    H: FnOnce(Tensor<3>, &mut GradientsParams) -> Result<(Tensor<1>, Tensor<3>), Error>,
{
    let device = tokens.device();
    check_per_block(model, &device)?;
    let cpu = is_cpu_device(&device);
    let context = model.context(&tokens, padding);
    let blocks = model.num_blocks();
    // One seed for the embedding and one per block, each pass under the same one.
    let seeds: Vec<u64> = match cpu {
        true => (0..=blocks).map(|_| next_seed(&device)).collect(),
        false => vec![0; blocks + 1],
    };
    let embed = |m: &M| with_dropout_seed(seeds[0], || m.embed(tokens.clone(), &context));
    let block = |m: &M, i: usize, x| with_dropout_seed(seeds[i + 1], || m.block(i, x, &context));

    // 1. Forward with nothing tracked, keeping each block's input.
    let detached = model.clone().map(&mut Detach);
    let mut inputs = Vec::with_capacity(blocks + 1);
    inputs.push(embed(&detached));
    for i in 0..blocks {
        let x = inputs[i].clone();
        inputs.push(block(&detached, i, x));
    }
    drop(detached);

    // 2. The head.
    let mut grads = GradientsParams::new();
    let hidden = inputs.pop().expect("the last block's output");
    let (value, mut g) = head(hidden, &mut grads)?;

    // 3. Each block, from the last.
    for i in (0..blocks).rev() {
        let x = inputs.pop().expect("one input per block").require_grad();
        let out = block(model, i, x.clone());
        let mut tape = (out * g).sum().backward();
        g = x
            .grad_remove(&mut tape)
            .expect("a block's output depends on its input");
        add(&mut grads, &mut tape, model);
    }

    // 4. The embedding, when it trains.
    let embedded = embed(model);
    if embedded.is_tracked() {
        let mut tape = (embedded * g).sum().backward();
        add(&mut grads, &mut tape, model);
    }
    Ok((value, grads))
}

/// Whether [`backward_per_block`] can train `model` on `device`: it can, except with
/// active dropout (in an adapter or in the model) on a device that is not a CPU, where the
/// recomputed pass would draw other masks than the first.
///
/// # Errors
///
/// [`Error::Usage`] in that case, saying so.
pub fn check_per_block<M: BlockStack>(model: &M, device: &Device) -> Result<(), Error> {
    match is_cpu_device(device) || !(model.has_dropout() || adapters_drop(model)) {
        true => Ok(()),
        false => Err(Error::Usage(format!(
            "gradient checkpointing per block with dropout needs a CPU device ({device:?} \
             draws its dropout masks on the device, and the recomputed pass would draw \
             others); set the dropout to 0 or train without checkpointing"
        ))),
    }
}

impl BlockStack for Llama {
    type Context = (Rope, Tensor<4>);

    fn context(&self, tokens: &Tensor<2, Int>, padding: Tensor<2, Bool>) -> Self::Context {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        (
            Rope::new(positions(batch, seq, &device), &self.inv_freq, &device),
            decoder_bias(padding, seq),
        )
    }

    fn embed(&self, tokens: Tensor<2, Int>, _: &Self::Context) -> Tensor<3> {
        embed(&self.model.embed_tokens, tokens)
    }

    fn num_blocks(&self) -> usize {
        self.model.layers.len()
    }

    fn block(&self, i: usize, x: Tensor<3>, (rope, bias): &Self::Context) -> Tensor<3> {
        let mut cache = KvCache::disabled(1);
        self.model.layers[i].forward(x, rope, bias.clone(), &mut cache, 0)
    }

    fn finish(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.head(self.model.norm.forward(hidden))
    }

    fn final_norm(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.model.norm.forward(hidden)
    }

    fn has_dropout(&self) -> bool {
        self.model
            .layers
            .iter()
            .any(|l| l.self_attn.dropout.prob > 0.0)
    }
}

impl BlockStack for Gpt {
    type Context = (Tensor<2, Int>, Tensor<4>);

    fn context(&self, tokens: &Tensor<2, Int>, padding: Tensor<2, Bool>) -> Self::Context {
        let [batch, seq] = tokens.dims();
        (
            positions(batch, seq, &tokens.device()),
            decoder_bias(padding, seq),
        )
    }

    fn embed(&self, tokens: Tensor<2, Int>, (positions, _): &Self::Context) -> Tensor<3> {
        let x = embed(&self.token_embedding, tokens)
            + embed(&self.position_embedding, positions.clone());
        dropout(&self.dropout, x)
    }

    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn block(&self, i: usize, x: Tensor<3>, (_, bias): &Self::Context) -> Tensor<3> {
        self.blocks[i].forward(x, bias.clone())
    }

    fn finish(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.head(self.norm.forward(hidden))
    }

    fn final_norm(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.norm.forward(hidden)
    }

    fn has_dropout(&self) -> bool {
        self.dropout.prob > 0.0
            || self.blocks.iter().any(|b| {
                b.dropout.prob > 0.0 || b.attn.dropout.prob > 0.0 || b.mlp.dropout.prob > 0.0
            })
    }
}

/// The two families' contexts, for [`Decoder`].
pub enum DecoderContext {
    /// Our GPT's.
    Gpt(Box<<Gpt as BlockStack>::Context>),
    /// A Llama-family model's.
    Llama(Box<<Llama as BlockStack>::Context>),
}

impl BlockStack for Decoder {
    type Context = DecoderContext;

    fn context(&self, tokens: &Tensor<2, Int>, padding: Tensor<2, Bool>) -> Self::Context {
        match self {
            Decoder::Gpt(m) => DecoderContext::Gpt(Box::new(m.context(tokens, padding))),
            Decoder::Llama(m) => DecoderContext::Llama(Box::new(m.context(tokens, padding))),
        }
    }

    fn embed(&self, tokens: Tensor<2, Int>, context: &Self::Context) -> Tensor<3> {
        match (self, context) {
            (Decoder::Gpt(m), DecoderContext::Gpt(c)) => m.embed(tokens, c),
            (Decoder::Llama(m), DecoderContext::Llama(c)) => m.embed(tokens, c),
            _ => unreachable!("a context comes from its own model"),
        }
    }

    fn num_blocks(&self) -> usize {
        self.num_layers()
    }

    fn block(&self, i: usize, x: Tensor<3>, context: &Self::Context) -> Tensor<3> {
        match (self, context) {
            (Decoder::Gpt(m), DecoderContext::Gpt(c)) => m.block(i, x, c),
            (Decoder::Llama(m), DecoderContext::Llama(c)) => m.block(i, x, c),
            _ => unreachable!("a context comes from its own model"),
        }
    }

    fn finish(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            Decoder::Gpt(m) => m.finish(hidden),
            Decoder::Llama(m) => m.finish(hidden),
        }
    }

    fn final_norm(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            Decoder::Gpt(m) => m.final_norm(hidden),
            Decoder::Llama(m) => m.final_norm(hidden),
        }
    }

    fn has_dropout(&self) -> bool {
        match self {
            Decoder::Gpt(m) => m.has_dropout(),
            Decoder::Llama(m) => m.has_dropout(),
        }
    }
}

/// Whether an adapter of `model` drops anything in training.
fn adapters_drop<M: Module>(model: &M) -> bool {
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
    visitor.0
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
