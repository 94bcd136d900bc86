//! The learning-rate schedule: linear warm-up, then cosine decay.

/// The learning rate at `step` (0-based) of `total`: rises linearly from `peak / warmup` to
/// `peak` over `warmup` steps, then follows a cosine down to `min_ratio · peak`.
///
/// ```
/// use burn_lora_demo::train::lr_at;
///
/// assert_eq!(lr_at(0, 100, 10, 1.0, 0.1), 0.1);
/// assert_eq!(lr_at(9, 100, 10, 1.0, 0.1), 1.0);
/// assert!((lr_at(99, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-3);
/// ```
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / (decay_steps - 1).max(1) as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}
