//! Cross-entropy through a linear output head, a chunk of positions at a time, with the
//! gradient computed in the forward pass (what Liger-Kernel calls a fused linear
//! cross-entropy).
//!
//! A decoder's head turns `n` hidden states into `n × vocab_size` logits: for 4 rows of 256
//! positions of Qwen2's 151,936-token vocabulary, 0.6 GB. Autodiff through
//! `log_softmax`, `gather` and the mean keeps the logits and several more tensors of that
//! size for the backward pass, each a fresh allocation whose pages the kernel zeroes. Yet
//! the gradient of cross-entropy is known in closed form:
//! `∂loss/∂logits = (softmax(logits) − onehot(target)) / n`. So for each chunk of positions
//! this computes the logits, the loss, that gradient, and from it `∂loss/∂hidden =
//! ∂loss/∂logits · W` (and `∂loss/∂W`, `∂loss/∂b` when the head trains), all without a
//! graph, and drops the chunk's logits before the next. The same arithmetic as the backward
//! pass would do, in the same number of matrix products; only one chunk's logits live at a
//! time, and the element-wise work runs in place.
//!
//! Burn 0.22's tensor API has no custom backward operation (an operation with a
//! handwritten backward pass needs a backend extension, implemented per backend, as
//! `burn_lora`'s `frozen.rs` is for flex), so the gradients reach autodiff on any backend
//! through a term whose value is zero and whose derivative is the gradient:
//! `loss + Σ (hidden − detach(hidden)) · G` (and the same for the head's weight and bias).
//! The returned loss therefore has the plain loss's value and, for every use of it that
//! autodiff differentiates (`backward`, a scale, a sum with other losses), its gradients.
//!
//! The price: the result's graph reaches the head only through these terms, so a second
//! derivative (of the gradient itself) would be wrong; nothing in this crate takes one.
//!
//! Size: one function, its shape checks and its tests (which are half the file).

use burn::tensor::{DType, Int, Tensor};

use crate::Error;
use crate::model::LinearHead;

/// The mean cross-entropy of `head(hidden)` against `targets`, computed `chunk` positions
/// at a time, with its gradients for `hidden` and for the head's weight and bias where
/// those are tracked (see the module's doc). The value is that of
/// `CrossEntropyLoss::forward(head(hidden), targets)`; so are the gradients.
///
/// # Shapes
///
/// - hidden: `[n, d_model]`
/// - targets: `[n]`, each in `0..vocab_size`
/// - output: `[1]`
///
/// # Errors
///
/// [`Error::Usage`] when `hidden`, `targets` and the head disagree in shape, a target is
/// outside the vocabulary, or `n` or `chunk` is 0.
pub fn linear_cross_entropy(
    hidden: Tensor<2>,
    head: &LinearHead,
    targets: Tensor<1, Int>,
    chunk: usize,
) -> Result<Tensor<1>, Error> {
    let [n, d] = hidden.dims();
    check_shapes(n, d, head, targets.dims()[0], chunk)?;
    check_targets(&targets, head.vocab())?;
    let device = hidden.device();
    let scale = 1.0 / n as f64;
    let h = untracked(hidden.clone());
    // A quantized tied head (`[vocab, d]`, a Q8 base's embedding) stays quantized:
    // `quantized_matmul` reads a large one a block of rows at a time, never float whole. A
    // quantized `[d, vocab]` one (an untied head) is dequantized once, not per product.
    let w = untracked(head.weight.clone());
    let w = match (w.dtype(), head.out_in) {
        (DType::QFloat(_), false) => w.dequantize(),
        _ => w,
    };
    let mut loss = Tensor::<1>::zeros([1], &device);
    let mut grad_hidden = Vec::with_capacity(n.div_ceil(chunk));
    let mut grad_weight: Option<Tensor<2>> = None;
    let mut grad_bias: Option<Tensor<1>> = None;
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let x = h.clone().narrow(0, start, end - start); // [c, d]
        let t = targets
            .clone()
            .narrow(0, start, end - start)
            .unsqueeze_dim::<2>(1); // [c, 1]
        let (part, g) = chunk_loss(x.clone(), &w, head, t);
        loss = loss + part;
        // `g·W` (out_in) or `g·Wᵀ`
        grad_hidden.push(burn_lora::quantized_matmul(g.clone(), &w, !head.out_in)); // [c, d]
        if head.weight.is_tracked() {
            let gw = match head.out_in {
                true => g.clone().transpose().matmul(x),  // [vocab, d]
                false => x.transpose().matmul(g.clone()), // [d, vocab]
            };
            grad_weight = Some(grad_weight.map_or(gw.clone(), |sum| sum + gw));
        }
        if head.bias.as_ref().is_some_and(|b| b.is_tracked()) {
            let gb = g.sum_dim(0).squeeze_dim::<1>(0); // [vocab]
            grad_bias = Some(grad_bias.map_or(gb.clone(), |sum| sum + gb));
        }
    }
    let mut out = loss.mul_scalar(scale);
    if hidden.is_tracked() {
        let g = Tensor::cat(grad_hidden, 0).mul_scalar(scale);
        out = out + gradient_term(hidden, g);
    }
    if let Some(g) = grad_weight {
        out = out + gradient_term(head.weight.clone(), g.mul_scalar(scale));
    }
    if let (Some(g), Some(b)) = (grad_bias, &head.bias) {
        out = out + gradient_term(b.clone(), g.mul_scalar(scale));
    }
    Ok(out)
}

/// One chunk's summed loss (`[1]`) and `softmax(logits) − onehot(t)`, `[c, vocab]`, from
/// untracked `x` `[c, d]` and `t` `[c, 1]`. Each element-wise step runs in place on flex:
/// every tensor it changes has no other owner by then.
fn chunk_loss(
    x: Tensor<2>,
    w: &Tensor<2>,
    head: &LinearHead,
    t: Tensor<2, Int>,
) -> (Tensor<1>, Tensor<2>) {
    let logits = burn_lora::quantized_matmul(x, w, head.out_in); // [c, vocab]
    let logits = match &head.bias {
        Some(b) => logits + untracked(b.clone()).unsqueeze::<2>(),
        None => logits,
    };
    let picked = logits.clone().gather(1, t.clone()); // [c, 1]
    let max = logits.clone().max_dim(1); // [c, 1]
    let exp = (logits - max.clone()).exp(); // [c, vocab]
    let sum = exp.clone().sum_dim(1); // [c, 1]
    // loss_i = log Σ_j exp(l_ij) − l_i,target = max_i + log(sum_i) − picked_i
    let loss = (sum.clone().log() + max - picked).sum();
    let ones = Tensor::<2>::ones(t.dims(), &t.device());
    let grad = (exp / sum).scatter(1, t, ones.neg(), burn::tensor::IndexingUpdateOp::Add);
    (loss, grad)
}

/// A term whose value is 0 and whose gradient for `x` is `g`: `Σ (x − detach(x)) · g`.
fn gradient_term<const D: usize>(x: Tensor<D>, g: Tensor<D>) -> Tensor<1> {
    ((x.clone() - untracked(x)) * g).sum()
}

/// `x`'s values with no graph: Burn's `detach` keeps a leaf's `require_grad`, and a tensor
/// that requires grad is tracked.
fn untracked<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match x.dtype() {
        // A quantized tensor is never tracked, and Burn's `detach` would return it
        // dequantized: a Q8 tied head would be f32 whole again (0.55 GB at Qwen2's size).
        DType::QFloat(_) => x,
        _ => x.detach().set_require_grad(false),
    }
}

/// [`Error::Usage`] when a target is outside `0..vocab` (gather would panic on it).
fn check_targets(targets: &Tensor<1, Int>, vocab: usize) -> Result<(), Error> {
    let low = targets.clone().min().into_scalar::<i64>();
    let high = targets.clone().max().into_scalar::<i64>();
    match low >= 0 && high < vocab as i64 {
        true => Ok(()),
        false => Err(Error::Usage(format!(
            "linear_cross_entropy: targets span {low}..={high}, outside the vocabulary 0..{vocab}"
        ))),
    }
}

fn check_shapes(
    n: usize,
    d: usize,
    head: &LinearHead,
    targets: usize,
    chunk: usize,
) -> Result<(), Error> {
    let fail = |what: String| Err(Error::Usage(format!("linear_cross_entropy: {what}")));
    if n == 0 || chunk == 0 {
        return fail(format!(
            "{n} positions in chunks of {chunk}; both must be > 0"
        ));
    }
    if targets != n {
        return fail(format!("hidden has {n} positions, targets {targets}"));
    }
    if head.d_model() != d {
        return fail(format!(
            "hidden is [{n}, {d}], the head's weight {:?} (out_in {})",
            head.weight.dims(),
            head.out_in
        ));
    }
    match &head.bias {
        Some(b) if b.dims()[0] != head.vocab() => fail(format!(
            "the bias has {} entries, the vocabulary {}",
            b.dims()[0],
            head.vocab()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLoss;
    use burn::tensor::{Device, Distribution, TensorData};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// A head whose weight (and bias) train, in either layout, on hidden states that
    /// come out of a product with a trained matrix, as a decoder's do.
    struct Case {
        x: Tensor<2>,
        proj: Tensor<2>,
        head: LinearHead,
        targets: Tensor<1, Int>,
    }

    fn case(n: usize, d: usize, vocab: usize, out_in: bool, bias: bool) -> Case {
        let device = Device::default().autodiff();
        let normal = |shape: [usize; 2], std| {
            Tensor::<2>::random(shape, Distribution::Normal(0.0, std), &device)
        };
        let weight = match out_in {
            true => normal([vocab, d], 1.0),
            false => normal([d, vocab], 1.0),
        };
        Case {
            x: normal([n, d], 1.0),
            proj: normal([d, d], 0.5).require_grad(),
            head: LinearHead {
                weight: weight.require_grad(),
                out_in,
                bias: bias.then(|| normal([1, vocab], 1.0).reshape([vocab]).require_grad()),
            },
            targets: Tensor::<1, Int>::from_data(
                TensorData::new((0..n).map(|i| (i * 7 % vocab) as i64).collect(), [n]),
                &device,
            ),
        }
    }

    /// Burn's own cross-entropy on the whole logits, its value and its gradients for the
    /// projection under the hidden states, the head's weight and its bias.
    fn plain(c: &Case) -> Vec<Vec<f32>> {
        let hidden = c.x.clone().matmul(c.proj.clone());
        let logits = match c.head.out_in {
            true => hidden.matmul(c.head.weight.clone().transpose()),
            false => hidden.matmul(c.head.weight.clone()),
        };
        let logits = match &c.head.bias {
            Some(b) => logits + b.clone().unsqueeze(),
            None => logits,
        };
        let loss = CrossEntropyLoss::new(None, &logits.device()).forward(logits, c.targets.clone());
        grads_of(c, loss)
    }

    fn fused(c: &Case, chunk: usize) -> Vec<Vec<f32>> {
        let hidden = c.x.clone().matmul(c.proj.clone());
        let loss = linear_cross_entropy(hidden, &c.head, c.targets.clone(), chunk).unwrap();
        grads_of(c, loss)
    }

    fn grads_of(c: &Case, loss: Tensor<1>) -> Vec<Vec<f32>> {
        // Scaled, as a replica's share of a batch is: the gradients must scale with it.
        let loss = loss.mul_scalar(0.5);
        let grads = loss.backward();
        let mut out = vec![values(loss), values(c.proj.grad(&grads).unwrap())];
        out.push(values(c.head.weight.grad(&grads).unwrap()));
        if let Some(b) = &c.head.bias {
            out.push(values(b.grad(&grads).unwrap()));
        }
        out
    }

    #[test]
    fn chunked_loss_and_gradients_equal_burns_cross_entropy() {
        Device::default().autodiff().seed(11);
        for (out_in, bias) in [(true, false), (false, true)] {
            let c = case(13, 8, 37, out_in, bias);
            let want = plain(&c);
            // One chunk, uneven chunks (13 = 4 + 4 + 4 + 1), one position per chunk.
            for chunk in [13, 4, 1] {
                let got = fused(&c, chunk);
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_close(g, w, &format!("out_in {out_in}, chunk {chunk}, part {i}"));
                }
            }
        }
    }

    #[test]
    fn a_frozen_head_gets_no_gradient_and_the_hidden_states_theirs() {
        Device::default().autodiff().seed(12);
        let mut c = case(6, 4, 11, true, false);
        let want = plain(&c);
        c.head.weight = c.head.weight.clone().detach().set_require_grad(false);
        let hidden = c.x.clone().matmul(c.proj.clone());
        let loss = linear_cross_entropy(hidden, &c.head, c.targets.clone(), 4).unwrap();
        let grads = loss.mul_scalar(0.5).backward();
        assert!(c.head.weight.grad(&grads).is_none());
        assert_close(&values(c.proj.grad(&grads).unwrap()), &want[1], "proj");
    }

    /// A frozen tied head quantized Q8 (per block of 32) gives the loss and the hidden
    /// states' gradient of its dequantized float twin under Burn's cross-entropy. (Its
    /// reading in blocks of rows, for a head over 64 MiB, is burn-lora's `frozen.rs` test.)
    #[test]
    fn a_quantized_head_gives_its_dequantized_twins_loss_and_gradients() {
        use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
        Device::default().autodiff().seed(14);
        let vocab = 50;
        let mut c = case(6, 32, vocab, true, false);
        let scheme = QuantScheme::default()
            .with_value(QuantValue::Q8S)
            .per_block(&[32u8][..], ScaleDtype::F32);
        let q = untracked(c.head.weight.clone()).quantize_dynamic(&scheme);
        // The loss reads it quantized: it is not made float whole on the way in.
        assert_eq!(untracked(q.clone()).dtype(), q.dtype());
        let dense = q.clone().dequantize();
        let hidden = c.x.clone().matmul(c.proj.clone());
        let logits = hidden.matmul(dense.transpose());
        let loss = CrossEntropyLoss::new(None, &logits.device()).forward(logits, c.targets.clone());
        let grads = loss.clone().backward();
        let want = [values(loss), values(c.proj.grad(&grads).unwrap())];
        c.head.weight = q;
        for chunk in [6, 4] {
            let hidden = c.x.clone().matmul(c.proj.clone());
            let loss = linear_cross_entropy(hidden, &c.head, c.targets.clone(), chunk).unwrap();
            let grads = loss.clone().backward();
            assert_close(&values(loss), &want[0], "loss");
            assert_close(&values(c.proj.grad(&grads).unwrap()), &want[1], "proj");
        }
    }

    #[test]
    fn bad_shapes_and_targets_are_errors_naming_them() {
        Device::default().autodiff().seed(13);
        let c = case(5, 4, 9, true, false);
        let err = |hidden: Tensor<2>, targets: Tensor<1, Int>, chunk| {
            linear_cross_entropy(hidden, &c.head, targets, chunk)
                .unwrap_err()
                .to_string()
        };
        let e = err(c.x.clone(), c.targets.clone().narrow(0, 0, 4), 2);
        assert!(e.contains("5 positions, targets 4"), "{e}");
        let e = err(c.x.clone().slice([0..5, 0..3]), c.targets.clone(), 2);
        assert!(e.contains("[5, 3]") && e.contains("[9, 4]"), "{e}");
        let e = err(c.x.clone(), c.targets.clone(), 0);
        assert!(e.contains("chunks of 0"), "{e}");
        let e = err(c.x.clone(), c.targets.clone().add_scalar(5), 2);
        assert!(e.contains("outside the vocabulary 0..9"), "{e}");
    }
}
