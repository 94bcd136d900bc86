//! Rotary position embeddings as transformers computes them for Llama and Qwen
//! (`LlamaRotaryEmbedding`, `rotate_half`, `apply_rotary_pos_emb`), with Llama 3's
//! frequency scaling.

use std::f64::consts::PI;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::{Llama3Scaling, LlamaConfig};

/// The inverse frequencies `1 / theta^(2i / head_dim)`, `i < head_dim / 2`, scaled as
/// Llama 3 does when the config asks (transformers' `_compute_llama3_parameters`):
/// wavelengths longer than `original / low_freq_factor` are divided by `factor`, shorter
/// than `original / high_freq_factor` kept, and those between interpolated.
pub fn inv_freq(config: &LlamaConfig) -> Vec<f32> {
    let dim = config.head_dim;
    let plain = (0..dim / 2).map(|i| {
        // As torch: the exponent is computed in float32 before the power.
        let exponent = (2 * i) as f32 / dim as f32;
        1.0 / (config.rope_theta as f32).powf(exponent)
    });
    match config.rope_scaling {
        None => plain.collect(),
        Some(s) => plain.map(|f| llama3(f as f64, &s) as f32).collect(),
    }
}

fn llama3(inv_freq: f64, s: &Llama3Scaling) -> f64 {
    let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = 2.0 * PI / inv_freq;
    if wavelen > low_freq_wavelen {
        inv_freq / s.factor
    } else if wavelen < high_freq_wavelen {
        inv_freq
    } else {
        let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

/// The cosines and sines for a batch's positions, computed once per forward pass and
/// shared by every layer.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// `[batch, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
}

impl Rope {
    /// # Shapes
    ///
    /// - positions: `[batch, seq]`
    /// - inv_freq: `head_dim / 2` values
    pub fn new(positions: Tensor<2, Int>, inv_freq: &[f32], device: &Device) -> Self {
        let [batch, seq] = positions.dims();
        let half = inv_freq.len();
        let inv = Tensor::<3>::from_data(TensorData::new(inv_freq.to_vec(), [1, 1, half]), device);
        let freqs = positions.float().reshape([batch, seq, 1]) * inv; // [batch, seq, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).reshape([batch, 1, seq, 2 * half]);
        Self {
            cos: emb.clone().cos(),
            sin: emb.sin(),
        }
    }

    /// Rotates each pair `(x[i], x[i + head_dim/2])` of every head by its position's
    /// angle: `x·cos + rotate_half(x)·sin`.
    ///
    /// # Shapes
    ///
    /// - x: `[batch, heads, seq, head_dim]`
    /// - output: `[batch, heads, seq, head_dim]`
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, dim] = x.dims();
        let x1 = x.clone().narrow(3, 0, dim / 2);
        let x2 = x.clone().narrow(3, dim / 2, dim / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // rotate_half
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        // wavelength 2π/1 < 16: kept; 2π/0.01 > 64: divided by 8.
        assert_eq!(llama3(1.0, &s), 1.0);
        assert!((llama3(0.01, &s) - 0.01 / 8.0).abs() < 1e-12);
        // wavelength 32: smooth = (64/32 - 1)/3 = 1/3.
        let f = 2.0 * PI / 32.0;
        let want = (2.0 / 3.0) * f / 8.0 + f / 3.0;
        assert!((llama3(f, &s) - want).abs() < 1e-12);
    }
}
