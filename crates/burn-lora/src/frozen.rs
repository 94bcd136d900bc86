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
//! `x.matmul(float_weight(W))`: the same dequantization and the same products (for a
//! large weight, below, in blocks whose sum is the same within float rounding). It runs on
//! Burn's `flex` backend with the crate's `flex` feature, autodiff or not; any other
//! backend or build takes Burn's ops, as before.
//!
//! [`matmul`] does the same for `x·deq(W)ᵀ`, a weight stored `[d_out, d_in]`: an output
//! head tied to a quantized embedding. A tall weight larger than [`WHOLE_BYTES`] in f32
//! (that embedding: 0.55 GB for Qwen2's vocabulary at d 896) is never dequantized whole: both
//! products, forward and backward, dequantize [`BLOCK_BYTES`] of its rows at a time, each
//! block's product written into the result as it comes. A smaller weight (every linear of
//! a 0.5B model) is dequantized whole, one product, as above. [`rows`] reads only the rows
//! an embedding lookup asks for.
//!
//! Size: three Burn backend extensions (the product, its transpose, the lookup), each with
//! its autodiff side, the blocked kernels they share, and their tests against Burn's ops
//! on the dequantized weight; one concern, the frozen quantized weight on flex.

use burn::tensor::{DType, Int, Tensor};

/// A quantized weight up to this size in f32 is dequantized whole for a product (64 KiB
/// in the unit tests, so that their small weights take the blocks).
pub(crate) const WHOLE_BYTES: usize = if cfg!(test) { 64 << 10 } else { 64 << 20 };

/// A larger one is dequantized this much of it (whole rows) at a time (4 KiB in the unit
/// tests).
pub(crate) const BLOCK_BYTES: usize = if cfg!(test) { 4 << 10 } else { 4 << 20 };

/// `x·deq(weight)`, or `x·deq(weight)ᵀ` when `transposed` (`weight` stored `[d_out,
/// d_in]`), when `weight` is quantized and `x` lives on a backend this module serves
/// (`flex`, with the crate's `flex` feature); `None` otherwise, for the caller to take
/// Burn's ops. `x`: `[n, d_in]`; `weight`: `[d_in, d_out]` (or transposed).
pub(crate) fn matmul(x: Tensor<2>, weight: &Tensor<2>, transposed: bool) -> Option<Tensor<2>> {
    if !matches!(weight.dtype(), DType::QFloat(_)) {
        return None;
    }
    #[cfg(feature = "flex")]
    if flex::serves(&x, weight) {
        return Some(flex::matmul(x, weight.clone(), transposed));
    }
    let _ = (x, transposed);
    None
}

/// Rows `indices` of a quantized 2-D `weight`, dequantized (f32, `[indices.len(), d]`),
/// reading only those rows, when `weight` lives on a backend this module serves; `None`
/// otherwise. No gradient: a quantized weight is frozen.
pub(crate) fn rows(weight: &Tensor<2>, indices: &Tensor<1, Int>) -> Option<Tensor<2>> {
    if !matches!(weight.dtype(), DType::QFloat(_)) {
        return None;
    }
    #[cfg(feature = "flex")]
    if crate::few_rows::is_flex(&weight.device()) {
        return Some(flex::rows(weight.clone(), indices.clone()));
    }
    let _ = indices;
    None
}

#[cfg(feature = "flex")]
mod flex {
    use std::ops::Range;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::{FlexQTensor, FlexTensor};
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::ops::QTensorOps;
    use burn::backend::tensor::{FloatTensor, IntTensor, QuantizedTensor};
    use burn::backend::{
        Autodiff, AutodiffBackend, Dispatch, Flex, TensorMetadata, backend_extension,
    };
    use burn::tensor::quantization::global_scale_dtype;
    use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};

    use super::{BLOCK_BYTES, WHOLE_BYTES};
    use crate::few_rows::is_flex;

    /// The extension: `x·deq(w)`, `x` `[n, d_in]`, `w` `[d_in, d_out]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait FrozenQuantMatmul: burn::backend::Backend {
        /// `x·deq(w)`; no gradient for `w`.
        fn frozen_quant_matmul(x: FloatTensor<Self>, w: QuantizedTensor<Self>)
        -> FloatTensor<Self>;
    }

    /// The extension: `x·deq(w)ᵀ`, `x` `[n, d_in]`, `w` `[d_out, d_in]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait FrozenQuantMatmulT: burn::backend::Backend {
        /// `x·deq(w)ᵀ`; no gradient for `w`.
        fn frozen_quant_matmul_t(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self>;
    }

    impl FrozenQuantMatmul for Flex {
        fn frozen_quant_matmul(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self> {
            product(x, &w)
        }
    }

    impl FrozenQuantMatmulT for Flex {
        fn frozen_quant_matmul_t(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self> {
            product_t(x, &w)
        }
    }

    /// The extension: rows `indices` of `w` `[rows, d]`, dequantized, untracked.
    #[backend_extension(Flex, Autodiff)]
    pub trait FrozenQuantRows: burn::backend::Backend {
        /// `deq(w)[indices]`; no gradient.
        fn frozen_quant_rows(
            w: QuantizedTensor<Self>,
            indices: IntTensor<Self>,
        ) -> FloatTensor<Self>;
    }

    impl FrozenQuantRows for Flex {
        fn frozen_quant_rows(
            w: QuantizedTensor<Self>,
            indices: IntTensor<Self>,
        ) -> FloatTensor<Self> {
            dequantize_rows(&w, indices)
        }
    }

    impl<C: CheckpointStrategy> FrozenQuantRows for Autodiff<Flex, C> {
        fn frozen_quant_rows(
            w: QuantizedTensor<Self>,
            indices: IntTensor<Self>,
        ) -> FloatTensor<Self> {
            <Self as AutodiffBackend>::from_inner(dequantize_rows(&w, indices))
        }
    }

    /// The backward pass of [`FrozenQuantMatmul`] (`transposed` false: `grad·deq(w)ᵀ` for
    /// `x`) and of [`FrozenQuantMatmulT`] (true: `grad·deq(w)`), from the quantized `w` it
    /// saved.
    #[derive(Debug)]
    struct FrozenQuantMatmulBackward {
        transposed: bool,
    }

    impl Backward<Flex, 1> for FrozenQuantMatmulBackward {
        type State = FlexQTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let w = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| match self.transposed {
                false => product_t(grad, &w),
                true => product(grad, &w),
            });
        }
    }

    /// The autodiff side of both products: `x·deq(w)`, or `x·deq(w)ᵀ` when `transposed`.
    fn tracked<C: CheckpointStrategy>(
        x: FloatTensor<Autodiff<Flex, C>>,
        w: FlexQTensor,
        transposed: bool,
    ) -> FloatTensor<Autodiff<Flex, C>> {
        let forward = |x, w: &FlexQTensor| match transposed {
            false => product(x, w),
            true => product_t(x, w),
        };
        let node = x.node();
        let backward = FrozenQuantMatmulBackward { transposed };
        match backward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = forward(x.into_primitive(), &w);
                prep.finish(w, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive(), &w)),
        }
    }

    impl<C: CheckpointStrategy> FrozenQuantMatmul for Autodiff<Flex, C> {
        fn frozen_quant_matmul(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self> {
            tracked::<C>(x, w, false)
        }
    }

    impl<C: CheckpointStrategy> FrozenQuantMatmulT for Autodiff<Flex, C> {
        fn frozen_quant_matmul_t(
            x: FloatTensor<Self>,
            w: QuantizedTensor<Self>,
        ) -> FloatTensor<Self> {
            tracked::<C>(x, w, true)
        }
    }

    /// Whether [`matmul`] takes `x` and `weight`: both on flex, in f32.
    pub(super) fn serves(x: &Tensor<2>, weight: &Tensor<2>) -> bool {
        let device = x.device();
        x.dtype() == DType::F32 && is_flex(&device) && weight.device() == device
    }

    /// `x·deq(weight)`, or `x·deq(weight)ᵀ` when `transposed`, through the extension.
    pub(super) fn matmul(x: Tensor<2>, weight: Tensor<2>, transposed: bool) -> Tensor<2> {
        let (x, w) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match transposed {
            false => <Dispatch as FrozenQuantMatmul>::frozen_quant_matmul(x, w),
            true => <Dispatch as FrozenQuantMatmulT>::frozen_quant_matmul_t(x, w),
        })
    }

    /// Rows `indices` of `weight` through the extension.
    pub(super) fn rows(weight: Tensor<2>, indices: Tensor<1, Int>) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as FrozenQuantRows>::frozen_quant_rows(
            weight.into_dispatch(),
            indices.into_dispatch(),
        ))
    }

    /// `x·deq(w)`, `x` `[n, k]`, `w` `[k, m]`: one product when `w` is dequantized whole,
    /// else the sum over blocks of `w`'s rows of `x[:, rows]·deq(w[rows])`, accumulated
    /// into the result as they come.
    fn product(x: FlexTensor, w: &FlexQTensor) -> FlexTensor {
        let [k, m] = w.shape().dims();
        let step = block_rows(w);
        if step >= k {
            return Flex::float_matmul(x, dequantize(w));
        }
        let x = x.to_contiguous();
        let n = x.shape().num_elements() / k.max(1);
        let xs: &[f32] = x.storage();
        let mut out = vec![0.0f32; n * m];
        for start in (0..k).step_by(step) {
            let rows = start..(start + step).min(k);
            let cols: Vec<f32> = xs
                .chunks(k)
                .flat_map(|row| row[rows.clone()].iter().copied())
                .collect();
            let cols = FlexTensor::from_data(TensorData::new(cols, [n, rows.len()]));
            let part = Flex::float_matmul(cols, dequantize_range(w, rows)).to_contiguous();
            for (o, p) in out.iter_mut().zip(part.storage::<f32>()) {
                *o += p;
            }
        }
        FlexTensor::from_data(TensorData::new(out, [n, m]))
    }

    /// `x·deq(w)ᵀ`, `x` `[n, d]`, `w` `[rows, d]` → `[n, rows]`: one product when `w` is
    /// dequantized whole, else one per block of `w`'s rows, each written into its columns
    /// of the result.
    fn product_t(x: FlexTensor, w: &FlexQTensor) -> FlexTensor {
        let [rows, _] = w.shape().dims();
        let step = block_rows(w);
        if step >= rows {
            return Flex::float_matmul(x, Flex::float_transpose(dequantize(w)));
        }
        let n = x.shape().dims::<2>()[0];
        let mut out = vec![0.0f32; n * rows];
        for start in (0..rows).step_by(step) {
            let block = start..(start + step).min(rows);
            let deq = Flex::float_transpose(dequantize_range(w, block.clone()));
            let part = Flex::float_matmul(x.clone(), deq).to_contiguous();
            let part: &[f32] = part.storage();
            for (o, p) in out.chunks_mut(rows).zip(part.chunks(block.len())) {
                o[block.clone()].copy_from_slice(p);
            }
        }
        FlexTensor::from_data(TensorData::new(out, [n, rows]))
    }

    /// How many of `w`'s rows a product dequantizes at a time: [`BLOCK_BYTES`]' worth for
    /// a tall weight (more rows than columns, as an embedding's `[vocab, d]`) over
    /// [`WHOLE_BYTES`] of f32 whose layout [`dequantize_values`] reads; all of them
    /// otherwise. A wide weight (an untied head in Burn's `[d, vocab]`) is dequantized
    /// whole: a block of its rows would give `x·deq(W)` a product of the result's whole
    /// width per block, to be summed.
    ///
    /// [`dequantize_values`]: crate::dequant::dequantize_values
    fn block_rows(w: &FlexQTensor) -> usize {
        let [rows, cols] = w.shape().dims();
        let bytes = rows * cols * size_of::<f32>();
        match bytes <= WHOLE_BYTES || rows < cols || !reads_rows(w) {
            true => rows,
            false => (BLOCK_BYTES / (cols * size_of::<f32>()).max(1)).max(1),
        }
    }

    /// Whether rows of `w` can be dequantized alone: a layout
    /// [`dequantize_values`](crate::dequant::dequantize_values) reads, with no second-level
    /// scale.
    fn reads_rows(w: &FlexQTensor) -> bool {
        let DType::QFloat(scheme) = w.dtype() else {
            unreachable!("a quantized tensor has a quantized dtype");
        };
        crate::dequant::reads(&scheme) && global_scale_dtype(&scheme).is_none()
    }

    /// Rows `rows` of `w` in f32, `[rows.len(), d]` (`w` one [`reads_rows`] takes).
    fn dequantize_range(w: &FlexQTensor, rows: Range<usize>) -> FlexTensor {
        let shape = [rows.len(), w.shape().dims::<2>()[1]];
        FlexTensor::from_data(TensorData::new(read_rows(w, rows), shape))
    }

    /// Rows `rows` of `w` dequantized one after the other, read from its quantized values
    /// alone (`w` one [`reads_rows`] takes).
    fn read_rows(w: &FlexQTensor, rows: impl ExactSizeIterator<Item = usize>) -> Vec<f32> {
        let DType::QFloat(scheme) = w.dtype() else {
            unreachable!("a quantized tensor has a quantized dtype");
        };
        let values = w.tensor().to_contiguous();
        let dims = w.shape().dims();
        crate::dequant::dequantize_rows(values.storage(), dims, &scheme, w.scales(), 1.0, rows)
    }

    /// Rows `indices` of `w` in f32: only those rows read, with the values [`dequantize`]
    /// gives them.
    fn dequantize_rows(w: &FlexQTensor, indices: FlexTensor) -> FloatTensor<Flex> {
        let rows: Vec<usize> = indices
            .into_data()
            .iter::<i64>()
            .map(|i| i as usize)
            .collect();
        let dims: [usize; 2] = w.shape().dims();
        // Burn's own lookup panics on an index outside the table too; this one names it.
        if let Some(row) = rows.iter().find(|&&row| row >= dims[0]) {
            panic!(
                "embedding: index {row} outside the table's {} rows",
                dims[0]
            );
        }
        let out = match reads_rows(w) {
            true => read_rows(w, rows.iter().copied()),
            false => {
                let all = dequantize(w).to_contiguous();
                let all: &[f32] = all.storage();
                rows.iter()
                    .flat_map(|&row| all[row * dims[1]..(row + 1) * dims[1]].iter().copied())
                    .collect()
            }
        };
        FlexTensor::from_data(TensorData::new(out, [rows.len(), dims[1]]))
    }

    /// `w` in f32: [`dequantize_values`](crate::dequant::dequantize_values) for the
    /// layouts it reads with no second-level scale (flex keeps that one private), Burn's
    /// own dequantization for the rest. The same values either way.
    fn dequantize(w: &FlexQTensor) -> FloatTensor<Flex> {
        if !reads_rows(w) {
            return Flex::dequantize(w.clone(), FloatDType::F32);
        }
        let DType::QFloat(scheme) = w.dtype() else {
            unreachable!("a quantized tensor has a quantized dtype");
        };
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
                let ours = matmul(x.clone(), &q, false).expect("flex serves a quantized weight");
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
        assert!(matmul(x0.clone(), &weight, false).is_none());
    }

    /// A weight over `WHOLE_BYTES` in f32 is read `BLOCK_BYTES` of rows at a time (here 16
    /// rows of 64, 19 blocks, the last of 12 rows), in both products and both backward
    /// passes: the values and `x`'s gradient are those of Burn's ops on the dequantized
    /// weight (within float rounding: the blocks of `x·deq(W)` sum in another order), for
    /// Q8 and Q4, per tensor, per block of a row, and 2-D blocks spanning two rows.
    #[test]
    fn a_large_weight_is_read_in_blocks_with_the_whole_products_values() {
        use super::{BLOCK_BYTES, WHOLE_BYTES};
        const { assert!(300 * 64 * 4 > WHOLE_BYTES && 300 % (BLOCK_BYTES / (64 * 4)) != 0) };
        let device = Device::flex().autodiff();
        let weight = Tensor::<2>::random([300, 64], Distribution::Normal(0.0, 1.0), &device);
        for value in [QuantValue::Q8S, QuantValue::Q4S] {
            let plain = QuantScheme::default().with_value(value);
            let blocks = [
                plain,
                plain.per_block(&[32u8][..], ScaleDtype::F32),
                plain.per_block(&[2u8, 16][..], ScaleDtype::F32),
            ];
            for scheme in blocks {
                let q = weight.clone().quantize_dynamic(&scheme);
                for transposed in [false, true] {
                    let (d_in, d_out) = if transposed { (64, 300) } else { (300, 64) };
                    let x0 =
                        Tensor::<2>::random([5, d_in], Distribution::Normal(0.0, 1.0), &device);
                    let up =
                        Tensor::<2>::random([5, d_out], Distribution::Normal(0.0, 1.0), &device);
                    let x = x0.clone().require_grad();
                    let ours = matmul(x.clone(), &q, transposed);
                    let ours = ours.expect("flex serves a quantized weight");
                    let want_x = x0.require_grad();
                    let dense = float_weight(q.clone());
                    let want = match transposed {
                        true => want_x.clone().matmul(dense.transpose()),
                        false => want_x.clone().matmul(dense),
                    };
                    let what = format!("{scheme:?}, transposed {transposed}");
                    let scale = want.clone().abs().max().into_scalar::<f32>();
                    assert!(close(ours.clone(), want.clone()) <= 1e-6 * scale, "{what}");
                    let g_ours = (ours * up.clone()).sum().backward();
                    let g_want = (want * up).sum().backward();
                    let (a, b) = (x.grad(&g_ours).unwrap(), want_x.grad(&g_want).unwrap());
                    let scale = b.clone().abs().max().into_scalar::<f32>();
                    assert!(close(a, b) <= 1e-6 * scale, "gradient, {what}");
                }
            }
        }
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
            let ours = matmul(x.clone(), &q, false).unwrap();
            assert_eq!(close(ours, x.matmul(float_weight(q))), 0.0);
        }
    }
}
