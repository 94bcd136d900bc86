//! A quantized base weight dequantized for one forward pass, fast on Burn's CPU backends.
//!
//! QLoRA keeps the frozen base quantized at rest and dequantizes each weight when its layer
//! runs. On `flex`, Burn's `dequantize` finds each element's block with a division per
//! dimension, one element at a time (burn-std's `BlockLayout::block_of`), on one thread: a
//! Q8 Qwen2.5-0.5B-shaped decoder spent about 4 s of each forward pass there. Here the
//! values and scales are read once and each row walks its blocks in order: the same
//! products (`(global · scale) · q`), so the same values bit for bit, at memory speed. Any
//! other device, or a layout this does not know (packed sub-byte values), takes Burn's own.

use burn::tensor::quantization::{QuantMode, QuantScheme, QuantStore, QuantValue, QuantizedBytes};
use burn::tensor::{DType, Tensor, TensorData};

use crate::dropout::is_cpu_device;

/// `weight` as float: dequantized (f32) when it is quantized, else as it is.
pub(crate) fn float_weight<const D: usize>(weight: Tensor<D>) -> Tensor<D> {
    let DType::QFloat(scheme) = weight.dtype() else {
        return weight;
    };
    let device = weight.device();
    if !is_cpu_device(&device) || !reads(&scheme) {
        return weight.dequantize();
    }
    let shape = weight.shape();
    let (bytes, _, _) = weight.into_data().into_parts();
    let bytes = QuantizedBytes {
        bytes,
        scheme,
        shape: shape.clone(),
    };
    let (values, scales) = bytes.into_vec_i8();
    let global = scales.global.unwrap_or(1.0);
    let values = dequantize_values(&values, shape.as_slice(), &scheme, &scales.block, global);
    Tensor::from_data(TensorData::new(values, shape), &device)
}

/// Whether [`dequantize_values`] reads `scheme`: symmetric integers stored natively, one
/// per i8 on Burn's CPU backends.
pub(crate) fn reads(scheme: &QuantScheme) -> bool {
    scheme.store == QuantStore::Native
        && scheme.mode == QuantMode::Symmetric
        && matches!(
            scheme.value,
            QuantValue::Q8S | QuantValue::Q8F | QuantValue::Q4S | QuantValue::Q4F
        )
}

/// Row-major `values` of shape `dims` dequantized with `scheme`'s `scales` (one for the
/// tensor, or one per block) and the second-level `global` scale (1 without one).
pub(crate) fn dequantize_values(
    values: &[i8],
    dims: &[usize],
    scheme: &QuantScheme,
    scales: &[f32],
    global: f32,
) -> Vec<f32> {
    match scheme.block_size() {
        None => values.iter().map(|&q| scales[0] * q as f32).collect(),
        Some(block) => {
            let extent = block.to_dim_vec(dims.len());
            let blocks = block.num_blocks(dims);
            by_blocks(values, dims, &extent, &blocks, scales, global)
        }
    }
}

/// Dequantizes row-major `values` of shape `dims`, whose blocks span `extent` elements per
/// dimension (`blocks` of them per dimension, row-major, one scale each).
fn by_blocks(
    values: &[i8],
    dims: &[usize],
    extent: &[u8],
    blocks: &[usize],
    scales: &[f32],
    global: f32,
) -> Vec<f32> {
    let width = dims[dims.len() - 1];
    let mut out = Vec::with_capacity(values.len());
    for (row, values) in values.chunks(width).enumerate() {
        row_by_blocks(&mut out, values, row, dims, extent, blocks, scales, global);
    }
    out
}

/// Appends row `row` (its `values`, the last dimension's extent of them) dequantized.
#[allow(clippy::too_many_arguments)]
fn row_by_blocks(
    out: &mut Vec<f32>,
    values: &[i8],
    row: usize,
    dims: &[usize],
    extent: &[u8],
    blocks: &[usize],
    scales: &[f32],
    global: f32,
) {
    let rank = dims.len();
    // The row's first block, as `BlockLayout::block_of` numbers blocks.
    let (mut rest, mut first, mut stride) = (row, 0, blocks[rank - 1]);
    for dim in (0..rank - 1).rev() {
        first += rest % dims[dim] / extent[dim] as usize * stride;
        rest /= dims[dim];
        stride *= blocks[dim];
    }
    for (j, run) in values.chunks(extent[rank - 1] as usize).enumerate() {
        let scale = global * scales[first + j];
        out.extend(run.iter().map(|&q| scale * q as f32));
    }
}

/// Rows `rows` (indices along the first dimension) of the 2-D row-major `values` of shape
/// `dims`, dequantized as [`dequantize_values`] would, one after the other: `[rows.len(),
/// dims[1]]`. Only those rows are read. Every index must be below `dims[0]`.
pub(crate) fn dequantize_rows(
    values: &[i8],
    dims: [usize; 2],
    scheme: &QuantScheme,
    scales: &[f32],
    global: f32,
    rows: impl ExactSizeIterator<Item = usize>,
) -> Vec<f32> {
    let width = dims[1];
    let mut out = Vec::with_capacity(rows.len() * width);
    let row_values = |row: usize| &values[row * width..(row + 1) * width];
    match scheme.block_size() {
        None => {
            for row in rows {
                out.extend(row_values(row).iter().map(|&q| scales[0] * q as f32));
            }
        }
        Some(block) => {
            let extent = block.to_dim_vec(2);
            let blocks = block.num_blocks(&dims);
            for row in rows {
                let values = row_values(row);
                row_by_blocks(
                    &mut out, values, row, &dims, &extent, &blocks, scales, global,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
    use burn::tensor::{Device, Distribution, Tensor};

    use super::float_weight;

    /// Bit for bit Burn's own dequantization, Q8 and Q4, per tensor and per block (along
    /// rows, and 2-D blocks).
    #[test]
    fn dequantizes_as_burn_does_bit_for_bit() {
        let device = Device::flex();
        let weight = Tensor::<2>::random([12, 96], Distribution::Normal(0.0, 1.0), &device);
        let mut schemes = Vec::new();
        for value in [QuantValue::Q8S, QuantValue::Q4S] {
            let plain = QuantScheme::default().with_value(value);
            schemes.push(plain);
            for block in [&[32u8][..], &[16], &[3], &[4, 16]] {
                schemes.push(plain.per_block(block, ScaleDtype::F32));
            }
        }
        for scheme in schemes {
            let q = weight.clone().quantize_dynamic(&scheme);
            let want: Vec<f32> = q
                .clone()
                .dequantize()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let got: Vec<f32> = float_weight(q).into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(want.len(), got.len());
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{scheme:?}");
            assert!(want.iter().any(|v| *v != 0.0));
        }
    }
}
