//! `x·W` for a frozen quantized weight `W`, whose backward pass keeps `W` quantized.
//!
//! Through Burn's own ops, `x.matmul(W.dequantize())` hands autodiff a fresh f32 copy of
//! the weight, and autodiff keeps it until the backward pass needs it for `x`'s gradient:
//! every adapted layer of a QLoRA forward pass holds its weight in f32 until the backward
//! pass reaches it, and the quantized base then costs more memory than a float one (the Q8
//! Qwen2.5-0.5B-shaped step of `bench --llm` peaked at 1.31× the f32 step's RSS, each of
//! its 2 threads holding 1.43 GB of dequantized weights).
//!
//! [`matmul`] is one operation with a handwritten backward pass (a Burn backend
//! extension): it saves the quantized weight (a shared reference to the one at rest, no
//! copy) and dequantizes it again in the backward pass, for `grad·deq(W)ᵀ`. A weight is then
//! alive in f32 only while its own product runs. The values are those of
//! `x.matmul(float_weight(W))`: the same dequantization and the same
//! products. It runs on Burn's `flex` backend with the crate's `flex` feature, autodiff or
//! not; any other backend or build takes Burn's ops, as before.

use burn::tensor::{DType, Tensor};

/// `x·deq(weight)` when `weight` is quantized and `x` lives on a backend this module
/// serves (`flex`, with the crate's `flex` feature); `None` otherwise, for the caller to
/// take Burn's ops. `x`: `[n, d_in]`; `weight`: `[d_in, d_out]`.
pub(crate) fn matmul(x: Tensor<2>, weight: &Tensor<2>) -> Option<Tensor<2>> {
    if !matches!(weight.dtype(), DType::QFloat(_)) {
        return None;
    }
    #[cfg(feature = "flex")]
    if flex::serves(&x, weight) {
        return Some(flex::matmul(x, weight.clone()));
    }
    let _ = x;
    None
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::{FlexQTensor, FlexTensor};
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::ops::QTensorOps;
    use burn::backend::tensor::{FloatTensor, QuantizedTensor};
    use burn::backend::{Autodiff, Dispatch, Flex, TensorMetadata, backend_extension};
    use burn::tensor::quantization::global_scale_dtype;
    use burn::tensor::{DType, FloatDType, Tensor, TensorData};

    /// The extension: `x·deq(w)`, `x` `[n, d_in]`, `w` `[d_in, d_out]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait FrozenQuantMatmul: burn::backend::Backend {
        /// `x·deq(w)`; no gradient for `w`.
        fn frozen_quant_matmul(x: FloatTensor<Self>, w: QuantizedTensor<Self>)
        -> FloatTensor<Self>;
    }

    impl FrozenQuantMatmul for Flex {
        fn frozen_quant_matmul(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self> {
            Flex::float_matmul(x, dequantize(&w))
        }
    }

    /// The backward pass of [`FrozenQuantMatmul`]: `grad·deq(w)ᵀ` for `x`, from the
    /// quantized `w` it saved.
    #[derive(Debug)]
    struct FrozenQuantMatmulBackward;

    impl Backward<Flex, 1> for FrozenQuantMatmulBackward {
        type State = FlexQTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let w = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                Flex::float_matmul(grad, Flex::float_transpose(dequantize(&w)))
            });
        }
    }

    impl<C: CheckpointStrategy> FrozenQuantMatmul for Autodiff<Flex, C> {
        fn frozen_quant_matmul(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self> {
            let node = x.node();
            match FrozenQuantMatmulBackward
                .prepare::<C>([node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = Flex::float_matmul(x.into_primitive(), dequantize(&w));
                    prep.finish(w, y)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(Flex::float_matmul(x.into_primitive(), dequantize(&w)))
                }
            }
        }
    }

    /// Whether [`matmul`] takes `x` and `weight`: both on flex, in f32.
    pub(super) fn serves(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
        let device = x.device();
        x.dtype() == DType::F32
            && format!("{device:?}").contains("Flex")
            && weight.device() == device
    }

    /// `x·deq(weight)` through the extension.
    pub(super) fn matmul(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as FrozenQuantMatmul>::frozen_quant_matmul(
            x.into_dispatch(),
            weight.into_dispatch(),
        ))
    }

    /// `w` in f32: [`dequantize_values`](crate::dequant::dequantize_values) for the
    /// layouts it reads with no second-level scale (flex keeps that one private), Burn's
    /// own dequantization for the rest. The same values either way.
    fn dequantize(w: &FlexQTensor) -> FloatTensor<Flex> {
        let DType::QFloat(scheme) = w.dtype() else {
            unreachable!("a quantized tensor has a quantized dtype");
        };
        if !crate::dequant::reads(&scheme) || global_scale_dtype(&scheme).is_some() {
            return Flex::dequantize(w.clone(), FloatDType::F32);
        }
        let shape = w.shape();
        let values = w.tensor().to_contiguous();
        let out = crate::dequant::dequantize_values(
            values.storage(),
            shape.as_slice(),
            &scheme,
            w.scales(),
            1.0,
        );
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
    use burn::tensor::{Device, Distribution, Tensor};

    use super::matmul;
    use crate::dequant::float_weight;

    fn close(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The product and `x`'s gradient equal Burn's ops on the dequantized weight, for Q8 and
    /// Q4, per tensor and per block; the weight gets no gradient.
    #[test]
    fn values_and_gradients_equal_burns_ops_on_the_dequantized_weight() {
        let device = Device::flex().autodiff();
        let weight = Tensor::<2>::random([64, 96], Distribution::Normal(0.0, 1.0), &device);
        let x0 = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &device);
        let upstream = Tensor::<2>::random([5, 96], Distribution::Normal(0.0, 1.0), &device);
        for value in [QuantValue::Q8S, QuantValue::Q4S] {
            let plain = QuantScheme::default().with_value(value);
            for scheme in [plain, plain.per_block(&[32u8][..], ScaleDtype::F32)] {
                let q = weight.clone().quantize_dynamic(&scheme);
                let x = x0.clone().require_grad();
                let ours = matmul(x.clone(), &q).expect("flex serves a quantized weight");
                let want_x = x0.clone().require_grad();
                let want = want_x.clone().matmul(float_weight(q.clone()));
                assert!(close(ours.clone(), want.clone()) == 0.0, "{scheme:?}");
                let g_ours = (ours * upstream.clone()).sum().backward();
                let g_want = (want * upstream.clone()).sum().backward();
                let (a, b) = (x.grad(&g_ours).unwrap(), want_x.grad(&g_want).unwrap());
                let scale = b.clone().abs().max().into_scalar::<f32>();
                assert!(close(a, b) <= 1e-6 * scale, "{scheme:?}");
            }
        }
        // A float weight is not ours to take.
        assert!(matmul(x0.clone(), &weight).is_none());
    }

    /// Without autodiff, and with an input that needs no gradient, the same product.
    #[test]
    fn without_a_tape_the_same_product() {
        let scheme = QuantScheme::default()
            .with_value(QuantValue::Q8S)
            .per_block(&[32u8][..], ScaleDtype::F32);
        for device in [Device::flex(), Device::flex().autodiff()] {
            let weight = Tensor::<2>::random([64, 64], Distribution::Normal(0.0, 1.0), &device);
            let x = Tensor::<2>::random([3, 64], Distribution::Normal(0.0, 1.0), &device);
            let q = weight.quantize_dynamic(&scheme);
            let ours = matmul(x.clone(), &q).unwrap();
            assert_eq!(close(ours, x.matmul(float_weight(q))), 0.0);
        }
    }
}
