//! Dropout with a fast mask.
//!
//! Burn's `Dropout::forward` draws its mask with `random_like(Bernoulli)`, one ChaCha sample
//! and one distribution call per element. A LoRA step on every linear of the default base
//! draws about 12 million of them (the hidden dropouts plus one LoRA dropout per adapted
//! layer), and a profile (`perf record` on the sentiment job) put about a fifth of the step
//! in that sampling. [`dropout`] takes two numbers from Burn's generator (so `device.seed`
//! still decides every mask) to seed a `StdRng`, fills 32-bit words in bulk, and multiplies
//! by the scaled mask: the same distribution, the same rule for when it applies.

use burn::nn::Dropout;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Applies `module`'s dropout to `x` exactly when `Dropout::forward` would: in training (on
/// an autodiff device, in a layer that takes part in the backward pass) with a non-zero
/// probability. Each element is kept with probability `1 - prob` and scaled by
/// `1 / (1 - prob)`, else zeroed.
pub fn dropout<const D: usize>(module: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !module.training.is_enabled() || !x.device().is_autodiff() || module.prob == 0.0 {
        return x;
    }
    let device = x.device();
    let keep = 1.0 - module.prob;
    // 2^32 · keep, compared with uniform 32-bit words: P(word < threshold) = keep.
    let threshold = (keep * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    let draws = Tensor::<1>::random([2], Distribution::Uniform(0.0, 1.0), &device)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let seed = draws
        .iter()
        .fold(0u64, |acc, d| (acc << 32) | u64::from(d.to_bits()));
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = x.shape();
    let n = shape.num_elements();
    let mut words = vec![0u8; 4 * n];
    rng.fill_bytes(&mut words);
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = words
        .chunks_exact(4)
        .map(|w| {
            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if word < threshold { scale } else { 0.0 }
        })
        .collect();
    x * Tensor::from_data(TensorData::new(mask, shape), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use burn::tensor::Device;

    #[test]
    fn keeps_the_right_fraction_scaled_and_only_in_training() {
        let device = Device::default().autodiff();
        device.seed(5);
        let module = DropoutConfig::new(0.25).init();
        let x = Tensor::<2>::ones([200, 500], &device);
        let y = dropout(&module, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        // Seeded by the device: the same mask again after the same seed, another mask next.
        device.seed(5);
        let again = dropout(&module, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(y, again);
        let next = dropout(&module, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_ne!(y, next);
        // Not on an inference device.
        let plain = Tensor::<2>::ones([3, 4], &Device::default());
        let same = dropout(&module, plain.clone());
        assert_eq!(same.into_data(), plain.into_data());
    }
}
