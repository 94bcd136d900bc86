//! SwiGLU's `silu(gate)·up` and the attention's softmax as single autodiff ops, which
//! keep for their backward pass only what it needs.
//!
//! Burn composes both from smaller ops, and its autodiff keeps each one's inputs until the
//! backward pass: `silu(gate)·up` keeps `gate`, `sigmoid(gate)`, `silu(gate)` and `up`
//! (four tensors of the feed-forward width), and `softmax(z)` keeps `z − max`, `exp(z −
//! max)` and the result (three tensors of `batch × heads × seq²`). [`swiglu`] keeps `gate`
//! and `up`, and [`softmax_last`] keeps its result alone, which the product with the values
//! keeps anyway. In the Qwen2.5-0.5B-shaped LoRA step of `bench --llm` (4 × 256 tokens,
//! 24 layers), that is 40 MB less per layer in the feed-forward network and 29 MB less in
//! the attention (`docs/BENCHMARKS.md` has the measured peaks).
//!
//! Both are Burn backend extensions on the `flex` backend (the crate's `flex` feature),
//! with or without autodiff, for f32 tensors. Elsewhere they are Burn's own ops, with the
//! same values.
//!
//! The backward passes recompute what they need: `∂/∂up = g·silu(gate)`, `∂/∂gate =
//! g·up·σ(gate)·(1 + gate·(1 − σ(gate)))`, and for the softmax `y` of `z`, `∂/∂z = y·(g −
//! Σ g·y)` along the last axis.

use burn::tensor::Tensor;
use burn::tensor::activation::{silu, softmax};

/// `silu(gate)·up`, element by element: the gated product of a SwiGLU feed-forward network.
///
/// # Shapes
///
/// - gate, up: the same shape
/// - output: that shape
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if flex::serves(&gate) && flex::serves(&up) && gate.dims() == up.dims() {
        return flex::swiglu(gate, up);
    }
    silu(gate) * up
}

/// The softmax of `x` along its last axis.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if flex::serves(&x) {
        return flex::softmax_last(x);
    }
    softmax(x, D - 1)
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::{ActivationOps, FloatTensorOps};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
    use burn::tensor::{DType, Tensor};

    /// Whether these ops take `x`: f32, on flex.
    pub(super) fn serves<const D: usize>(x: &Tensor<D>) -> bool {
        x.dtype() == DType::F32 && crate::device::backend(&x.device()) == "Flex"
    }

    /// The extension: `silu(gate)·up`.
    #[backend_extension(Flex, Autodiff)]
    pub trait SwiGlu: burn::backend::Backend {
        /// `silu(gate)·up`, saving only `gate` and `up` for the backward pass.
        fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    /// The extension: the softmax along the last axis.
    #[backend_extension(Flex, Autodiff)]
    pub trait SoftmaxLast: burn::backend::Backend {
        /// The softmax along the last axis, saving only its result for the backward pass.
        fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    /// `silu(gate)·up` as Burn composes it: `gate·σ(gate)`, times `up`.
    fn swiglu_value(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let silu = Flex::float_mul(gate.clone(), Flex::sigmoid(gate));
        Flex::float_mul(silu, up)
    }

    fn softmax_value(x: FlexTensor) -> FlexTensor {
        let last = x.shape().num_dims() - 1;
        Flex::softmax(x, last)
    }

    impl SwiGlu for Flex {
        fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            swiglu_value(gate, up)
        }
    }

    impl SoftmaxLast for Flex {
        fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
            softmax_value(x)
        }
    }

    /// [`SwiGlu`]'s backward pass, from the saved `gate` and `up`.
    #[derive(Debug)]
    struct SwiGluBackward;

    impl Backward<Flex, 2> for SwiGluBackward {
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (gate, up) = ops.state;
            let grad = grads.consume::<Flex>(&ops.node);
            let [gate_node, up_node] = ops.parents;
            let sigmoid = Flex::sigmoid(gate.clone());
            let silu = Flex::float_mul(gate, sigmoid.clone());
            if let Some(node) = up_node {
                grads.register::<Flex>(node.id, Flex::float_mul(grad.clone(), silu.clone()));
            }
            if let Some(node) = gate_node {
                // silu'(gate) = σ + silu·(1 − σ)
                let one_minus =
                    Flex::float_add_scalar(Flex::float_neg(sigmoid.clone()), 1.0.into());
                let slope = Flex::float_add(sigmoid, Flex::float_mul(silu, one_minus));
                let grad = Flex::float_mul(Flex::float_mul(grad, up), slope);
                grads.register::<Flex>(node.id, grad);
            }
        }
    }

    impl<C: CheckpointStrategy> SwiGlu for Autodiff<Flex, C> {
        fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            let nodes = [gate.node(), up.node()];
            let (gate, up) = (gate.into_primitive(), up.into_primitive());
            match SwiGluBackward
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = swiglu_value(gate.clone(), up.clone());
                    prep.finish((gate, up), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(swiglu_value(gate, up)),
            }
        }
    }

    /// [`SoftmaxLast`]'s backward pass, from the saved result `y`: `y·(g − Σ g·y)`.
    #[derive(Debug)]
    struct SoftmaxBackward;

    impl Backward<Flex, 1> for SoftmaxBackward {
        type State = FlexTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let y = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let last = y.shape().num_dims() - 1;
                let dot = Flex::float_sum_dim(Flex::float_mul(grad.clone(), y.clone()), last);
                Flex::float_mul(y, Flex::float_sub(grad, dot))
            });
        }
    }

    impl<C: CheckpointStrategy> SoftmaxLast for Autodiff<Flex, C> {
        fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let node = x.node();
            let x = x.into_primitive();
            match SoftmaxBackward
                .prepare::<C>([node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = softmax_value(x);
                    prep.finish(y.clone(), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(softmax_value(x)),
            }
        }
    }

    pub(super) fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as SwiGlu>::swiglu(
            gate.into_dispatch(),
            up.into_dispatch(),
        ))
    }

    pub(super) fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as SoftmaxLast>::softmax_last(x.into_dispatch()))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::{silu, softmax};
    use burn::tensor::{Device, Distribution, Tensor};

    use super::{softmax_last, swiglu};

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn swiglu_gives_burns_values_and_gradients() {
        let device = Device::default().autodiff();
        let normal = Distribution::Normal(0.0, 3.0);
        let gate = Tensor::<3>::random([2, 5, 33], normal, &device).require_grad();
        let up = Tensor::<3>::random([2, 5, 33], normal, &device).require_grad();
        let weight = Tensor::<3>::random([2, 5, 33], normal, &device);
        let ours = swiglu(gate.clone(), up.clone());
        let burns = silu(gate.clone()) * up.clone();
        assert_eq!(max_diff(ours.clone(), burns.clone()), 0.0);
        let ours = (ours * weight.clone()).sum().backward();
        let burns = (burns * weight).sum().backward();
        for x in [&gate, &up] {
            let (a, b) = (x.grad(&ours).unwrap(), x.grad(&burns).unwrap());
            let scale = b.clone().abs().max().into_scalar::<f32>();
            assert!(scale > 1.0);
            assert!(max_diff(a, b) <= 1e-5 * scale);
        }
    }

    #[test]
    fn only_the_tracked_input_gets_a_gradient() {
        let device = Device::default().autodiff();
        let gate = Tensor::<2>::random([3, 4], Distribution::Default, &device);
        let up = Tensor::<2>::random([3, 4], Distribution::Default, &device).require_grad();
        let grads = swiglu(gate.clone(), up.clone()).sum().backward();
        let expected = silu(gate.clone()).inner();
        assert!(gate.grad(&grads).is_none());
        assert!(max_diff(up.grad(&grads).unwrap(), expected) <= 1e-7);
    }

    #[test]
    fn softmax_last_gives_burns_values_and_gradients() {
        let device = Device::default().autodiff();
        let mut mask = vec![0.0f32; 2 * 3 * 7 * 7];
        mask[5] = f32::NEG_INFINITY; // a masked score, as the attention's bias gives
        let mask = Tensor::<1>::from_floats(mask.as_slice(), &device).reshape([2, 3, 7, 7]);
        let z = Tensor::<4>::random([2, 3, 7, 7], Distribution::Normal(0.0, 4.0), &device)
            .require_grad();
        let weight = Tensor::<4>::random([2, 3, 7, 7], Distribution::Normal(0.0, 1.0), &device);
        let ours = softmax_last(z.clone() + mask.clone());
        let burns = softmax(z.clone() + mask, 3);
        assert!(max_diff(ours.clone(), burns.clone()) <= 1e-6);
        assert_eq!(
            ours.clone()
                .slice([0..1, 0..1, 0..1, 5..6])
                .into_scalar::<f32>(),
            0.0
        );
        let ours = (ours * weight.clone()).sum().backward();
        let burns = (burns * weight).sum().backward();
        let (a, b) = (z.grad(&ours).unwrap(), z.grad(&burns).unwrap());
        assert!(b.clone().abs().max().into_scalar::<f32>() > 0.1);
        assert!(max_diff(a, b) <= 1e-6);
    }

    /// The extensions serve flex's f32 tensors, with autodiff and without (the values alone
    /// would not tell: Burn's ops give the same).
    #[cfg(feature = "flex")]
    #[test]
    fn flex_f32_tensors_take_the_extensions() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let x = Tensor::<2>::zeros([2, 3], &device);
            assert!(super::flex::serves(&x), "{device:?}");
            assert!(!super::flex::serves(&x.cast(burn::tensor::DType::F16)));
        }
    }

    #[test]
    fn without_autodiff_the_same_values() {
        let device = Device::default();
        let x = Tensor::<3>::random([2, 4, 9], Distribution::Normal(0.0, 2.0), &device);
        let u = Tensor::<3>::random([2, 4, 9], Distribution::Normal(0.0, 2.0), &device);
        assert_eq!(
            max_diff(swiglu(x.clone(), u.clone()), silu(x.clone()) * u),
            0.0
        );
        assert!(max_diff(softmax_last(x.clone()), softmax(x, 2)) <= 1e-6);
    }
}
