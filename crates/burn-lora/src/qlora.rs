//! QLoRA's first step: quantizing a base's linear weights before adapters go on.
//!
//! Size: over half of it is tests, which check each function against dequantizing by hand
//! and measure the memory that quantizing a tracked weight once left behind.

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param, ParamGroup, ParamId, Quantizer};
use burn::tensor::{DType, Int, Tensor};

use crate::Error;
use crate::apply::linears;
use crate::config::within_any;
use crate::dequant::float_weight;

/// `model` with the weight of every linear layer (`burn::nn::Linear` or
/// [`burn_lora::nn::Linear`](crate::nn::Linear)) quantized by `quantizer`, except the
/// linears inside a module `exclude` names (PEFT's matching: `head` excludes `head` and
/// `head.dense`). Biases, embeddings and norms stay float, as with PEFT's bitsandbytes
/// models. Pass the modules to save: a module that trains in full cannot be quantized.
///
/// A block scheme must divide every quantized weight's shape (Burn's quantizer would
/// panic); a weight it does not divide is [`Error::QuantizeBlock`], naming the layer, and
/// nothing is quantized.
///
/// Then [`apply_lora`](crate::apply_lora) attaches f32 adapters to the quantized weights:
///
/// ```
/// use burn::module::{Module, Quantizer};
/// use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig};
/// use burn::tensor::Device;
/// use burn::tensor::quantization::{Calibration, QuantValue};
/// use burn_lora::{LoraConfig, apply_lora, param_report, quantize_linears};
///
/// let device = Device::default();
/// let encoder: TransformerEncoder = TransformerEncoderConfig::new(16, 32, 2, 2).init(&device);
/// let scheme = device.settings().quantization.scheme.with_value(QuantValue::Q8S);
/// let encoder = quantize_linears(encoder, &mut Quantizer::new(Calibration::MinMax, scheme), &[]).unwrap();
/// let encoder = apply_lora(encoder, &LoraConfig::new().with_rank(4)).unwrap();
/// assert_eq!(param_report(&encoder).trainable, 2 * 2 * 4 * (16 + 16));
/// ```
///
/// # Errors
///
/// [`Error::QuantizeBlock`] for a weight the scheme's blocks do not divide.
pub fn quantize_linears<M: Module>(
    model: M,
    quantizer: &mut Quantizer,
    exclude: &[String],
) -> Result<M, Error> {
    let sites: Vec<_> = linears(&model)
        .into_iter()
        .filter(|site| !within_any(&site.path, exclude))
        .collect();
    if let Some(block) = quantizer.scheme.block_size() {
        let block = block.to_dim_vec(2);
        for site in &sites {
            let divides = site
                .dims()
                .iter()
                .zip(&block)
                .all(|(&dim, &extent)| dim.is_multiple_of(extent as usize));
            if !divides {
                return Err(Error::QuantizeBlock {
                    path: site.path.clone(),
                    dims: site.dims().to_vec(),
                    block: block.iter().map(|&b| b as usize).collect(),
                });
            }
        }
    }
    let ids: Vec<ParamId> = sites.into_iter().map(|site| site.weight_id).collect();
    // Untracked first: on an autodiff device, Burn's quantizer computes a tracked weight's
    // range with tracked ops, whose autodiff state (each block's argmin and argmax, about half
    // a byte a weight at blocks of 32) no backward pass ever frees: 262 MiB on top of the
    // 530 MiB of a Q8 Qwen2.5-0.5B.
    let model = model.map(&mut Untrack(ids.iter().copied().collect()));
    quantizer.set_param_group(ParamGroup::from_ids(ids));
    Ok(model.quantize_weights(quantizer))
}

/// Detaches the parameters it names and makes them untracked (they are about to be
/// quantized, and a quantized weight is frozen).
struct Untrack(HashSet<ParamId>);

impl ModuleMapper for Untrack {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.0.contains(&param.id) {
            true => param.map(|t| t.detach().set_require_grad(false)),
            false => param,
        }
    }
}

/// The rows of `weight` whose indices `tokens` holds, `[batch, seq, d]`: what
/// [`burn::tensor::module::embedding`] computes, but `weight` may be quantized. A quantized
/// table (a frozen embedding quantized with `Embedding::quantize_weights`) has only the rows
/// looked up dequantized, never the whole table, and gets no gradient (Burn's own lookup
/// does not take a quantized table). A float `weight` goes to
/// Burn's lookup, and trains if it is tracked.
///
/// On Burn's `flex` backend with the crate's `flex` feature each looked-up row is read from
/// the quantized values (one Burn backend extension); elsewhere the whole table is
/// dequantized for the lookup and dropped after it.
///
/// # Shapes
///
/// - weight: `[vocab, d]`
/// - tokens: `[batch, seq]`, each in `0..vocab`
/// - output: `[batch, seq, d]`
///
/// # Panics
///
/// On a token outside `0..vocab`, as Burn's lookup does (on flex, naming it).
///
/// ```
/// use burn::tensor::{Device, Distribution, Int, Tensor};
/// use burn::tensor::quantization::{QuantScheme, QuantValue};
///
/// let device = Device::default();
/// let table = Tensor::<2>::random([10, 4], Distribution::Normal(0.0, 1.0), &device);
/// let q8 = table.quantize_dynamic(&QuantScheme::default().with_value(QuantValue::Q8S));
/// let tokens = Tensor::<2, Int>::from_data([[3, 7]], &device);
/// let rows = burn_lora::embedding(q8.clone(), tokens);
/// assert_eq!(rows.dims(), [1, 2, 4]);
/// let want = q8.dequantize().slice(3..4); // row 3, dequantized
/// rows.slice([0..1, 0..1]).reshape([1, 4]).into_data().assert_eq(&want.into_data(), true);
/// ```
pub fn embedding(weight: Tensor<2>, tokens: Tensor<2, Int>) -> Tensor<3> {
    if !matches!(weight.dtype(), DType::QFloat(_)) {
        return burn::tensor::module::embedding(weight, tokens);
    }
    let [batch, seq] = tokens.dims();
    let d = weight.dims()[1];
    let rows = dequantized_rows(&weight, tokens.reshape([batch * seq]));
    rows.reshape([batch, seq, d])
}

/// Rows `indices` of the quantized `weight`, in f32.
fn dequantized_rows(weight: &Tensor<2>, indices: Tensor<1, Int>) -> Tensor<2> {
    match crate::frozen::rows(weight, &indices) {
        Some(rows) => rows,
        // Burn's quantized `select` quantizes the selection again, with its own scale
        // (per tensor, the rows' largest value): different values. Dequantize, then select.
        None => weight.clone().dequantize().select(0, indices),
    }
}

/// `x·W`, or `x·Wᵀ` when `out_in` (`W` stored `[d_out, d_in]`, as PyTorch's linears and a
/// tied output head are), for a weight that may be quantized: `[n, d_in]` → `[n, d_out]`.
///
/// A float `W` is [`few_rows::matmul_weight`](crate::few_rows::matmul_weight)'s product, and
/// trains if it is tracked. A quantized `W` is frozen (no gradient; `x` still gets its
/// own) and has the values of the product with `W` dequantized. On Burn's `flex` backend
/// with the crate's `flex` feature it stays quantized through the backward pass, and a
/// weight over 64 MiB in f32 with more rows than columns is never dequantized whole: 4 MiB
/// of its rows at a time, in the forward and the backward pass (a tied head over Qwen2's
/// 151,936-token vocabulary, `[vocab, d]`, is 0.55 GB in f32 at d 896). Other weights are
/// dequantized whole for each product; elsewhere Burn's ops take them whole, dequantized.
///
/// # Shapes
///
/// - x: `[n, d_in]`
/// - weight: `[d_in, d_out]`, or `[d_out, d_in]` when `out_in`
/// - output: `[n, d_out]`
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use burn::tensor::quantization::{QuantScheme, QuantValue};
///
/// let device = Device::default();
/// let table = Tensor::<2>::random([10, 4], Distribution::Normal(0.0, 1.0), &device);
/// let q8 = table.quantize_dynamic(&QuantScheme::default().with_value(QuantValue::Q8S));
/// let x = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
/// let logits = burn_lora::quantized_matmul(x.clone(), &q8, true); // a tied head
/// let want = x.matmul(q8.dequantize().transpose());
/// logits.into_data().assert_approx_eq::<f32>(&want.into_data(), Default::default());
/// ```
pub fn quantized_matmul(x: Tensor<2>, weight: &Tensor<2>, out_in: bool) -> Tensor<2> {
    if !matches!(weight.dtype(), DType::QFloat(_)) {
        return crate::few_rows::matmul_weight(x, weight.clone(), out_in);
    }
    crate::frozen::matmul(x.clone(), weight, out_in).unwrap_or_else(|| {
        let w = float_weight(weight.clone());
        match out_in {
            true => x.matmul(w.transpose()),
            false => x.matmul(w),
        }
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
    use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

    use super::{embedding, quantized_matmul};
    use crate::dequant::float_weight;

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        let values = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    }

    fn schemes() -> Vec<QuantScheme> {
        let mut out = Vec::new();
        for value in [QuantValue::Q8S, QuantValue::Q4S] {
            let plain = QuantScheme::default().with_value(value);
            out.extend([plain, plain.per_block(&[32u8][..], ScaleDtype::F32)]);
            out.push(plain.per_block(&[2u8, 16][..], ScaleDtype::F32));
        }
        out
    }

    /// A weight that requires a gradient is quantized untracked (on an autodiff device,
    /// Burn's quantizer would keep its range computation's autodiff state for good), to
    /// the values of its untracked twin; the bias it leaves float keeps training.
    #[test]
    fn a_tracked_weight_is_quantized_untracked_to_the_same_values() {
        use burn::module::{Module, Quantizer};
        use burn::nn::LinearConfig;
        use burn::tensor::quantization::Calibration;

        for device in devices().into_iter().filter(|d| d.is_autodiff()) {
            let linear = LinearConfig::new(64, 32).init(&device);
            assert!(linear.weight.val().is_require_grad());
            let scheme = QuantScheme::default()
                .with_value(QuantValue::Q8S)
                .per_block(&[32u8][..], ScaleDtype::F32);
            let quantizer = || Quantizer::new(Calibration::MinMax, scheme);
            let q = super::quantize_linears(linear.clone(), &mut quantizer(), &[]).unwrap();
            assert!(!q.weight.val().is_require_grad(), "{device:?}");
            assert!(
                q.bias.as_ref().unwrap().val().is_require_grad(),
                "{device:?}"
            );
            let twin = linear.no_grad().quantize_weights(&mut quantizer());
            let values = |w: Tensor<2>| bits(float_weight(w.inner()));
            assert_eq!(
                values(q.weight.val()),
                values(twin.weight.val()),
                "{device:?}"
            );
        }
    }

    /// What the untracking is for: quantizing a tracked weight again and again, each result
    /// dropped, holds no memory. Before it, each Q8 quantization per block of 32 of this
    /// 1024 × 1024 weight kept about 0.75 MiB of autodiff state for good, 38 MiB a batch of
    /// 50. The resident set is read from `/proc` (Linux; elsewhere the test checks nothing).
    /// Tests run side by side in one process, so another test's allocations can raise it
    /// during a batch: of three batches, the one that grew least must have grown under
    /// 15 MiB, which a leak fails in every batch.
    #[test]
    fn quantizing_a_tracked_weight_keeps_nothing_behind() {
        use burn::module::Quantizer;
        use burn::nn::LinearConfig;
        use burn::tensor::quantization::Calibration;

        fn rss_mib() -> Option<u64> {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
        }
        let device = Device::default().autodiff();
        let scheme = QuantScheme::default()
            .with_value(QuantValue::Q8S)
            .per_block(&[32u8][..], ScaleDtype::F32);
        let linear = LinearConfig::new(1024, 1024).with_bias(false).init(&device);
        let once = |linear| {
            let mut quantizer = Quantizer::new(Calibration::MinMax, scheme);
            drop(super::quantize_linears(linear, &mut quantizer, &[]).unwrap());
        };
        once(linear.clone()); // the allocator's first buffers
        let mut growths = Vec::new();
        for _ in 0..3 {
            let Some(before) = rss_mib() else { return };
            for _ in 0..50 {
                once(linear.clone());
            }
            growths.push(rss_mib().unwrap().saturating_sub(before));
        }
        let least = *growths.iter().min().unwrap();
        assert!(
            least < 15,
            "batches of 50 quantizations left {growths:?} MiB behind"
        );
    }

    /// The default device and flex's (with the crate's `flex` feature), each with autodiff
    /// and without.
    fn devices() -> Vec<Device> {
        let mut devices = vec![Device::default(), Device::default().autodiff()];
        #[cfg(feature = "flex")]
        devices.extend([Device::flex(), Device::flex().autodiff()]);
        devices
    }

    /// The lookup of a quantized table is its dequantized table's, bit for bit, for Q8 and
    /// Q4, per tensor, per block of a row, and 2-D blocks (whose rows share scales with
    /// their neighbours), on every device the tests build; the result is untracked. A
    /// float table goes to Burn's lookup, and keeps its graph.
    #[test]
    fn a_quantized_tables_rows_are_its_dequantized_tables() {
        for device in devices() {
            let table = Tensor::<2>::random([10, 64], Distribution::Normal(0.0, 1.0), &device);
            let tokens = Tensor::<2, Int>::from_data(
                TensorData::new(vec![3i64, 9, 0, 3, 7, 8], [2, 3]),
                &device,
            );
            for scheme in schemes() {
                let q = table.clone().quantize_dynamic(&scheme);
                let dense = float_weight(q.clone());
                let ours = embedding(q.clone(), tokens.clone());
                assert!(!ours.is_tracked());
                let want = burn::tensor::module::embedding(dense.clone(), tokens.clone());
                assert_eq!(bits(ours), bits(want), "{scheme:?} on {device:?}");
            }
            let want = burn::tensor::module::embedding(table.clone(), tokens.clone());
            if device.is_autodiff() {
                let rows = embedding(table.clone().require_grad(), tokens.clone());
                assert!(rows.is_tracked());
                assert_eq!(bits(rows), bits(want));
            } else {
                assert_eq!(bits(embedding(table.clone(), tokens.clone())), bits(want));
            }
        }
    }

    /// `x·W` and `x·Wᵀ` of a quantized weight are those of its dequantized weight, on
    /// every device the tests build (flex's blocks are `frozen.rs`'s tests); a float
    /// weight's are the plain product's, bit for bit.
    #[test]
    fn a_quantized_weights_products_are_its_dequantized_weights() {
        for device in devices() {
            let table = Tensor::<2>::random([40, 32], Distribution::Normal(0.0, 1.0), &device);
            for scheme in schemes() {
                let q = table.clone().quantize_dynamic(&scheme);
                let dense = float_weight(q.clone());
                for (out_in, d_in) in [(true, 32), (false, 40)] {
                    let x = Tensor::<2>::random([3, d_in], Distribution::Normal(0.0, 1.0), &device);
                    let ours = quantized_matmul(x.clone(), &q, out_in);
                    let want = match out_in {
                        true => x.clone().matmul(dense.clone().transpose()),
                        false => x.clone().matmul(dense.clone()),
                    };
                    let err = (ours - want.clone()).abs().max().into_scalar::<f32>();
                    let scale = want.abs().max().into_scalar::<f32>();
                    assert!(
                        err <= 1e-6 * scale,
                        "{scheme:?} out_in {out_in} on {device:?}"
                    );
                }
            }
            let x = Tensor::<2>::random([3, 32], Distribution::Normal(0.0, 1.0), &device);
            let float = quantized_matmul(x.clone(), &table, true);
            assert_eq!(bits(float), bits(x.matmul(table.clone().transpose())));
        }
    }
}
