//! `x·W` for a few rows of `x` on every core of Burn's `flex` CPU backend, where that pays.
//!
//! Decoding one token multiplies one row per sequence by every weight of the model. On
//! `flex` such a product runs on one core: gemm 0.19 computes a one-row product by its
//! `gemv` path, which has no parallel version, and flex asks gemm for threads only above
//! 192³ multiply-adds, which a 0.5B model's attention projections do not reach. A decode is
//! bound by reading the weights from memory.
//!
//! Here such a product can be split into column blocks, `W` `[d_in, d_out]` viewed (no
//! copy) as `[parts, d_in, d_out / parts]`, and run as one batched product, which flex
//! spreads over its rayon threads, a block at a time. Every output element is the same dot
//! product over `d_in` as before. Products of up to 4 rows are candidates even where flex
//! would thread them (gemm's threaded product of 4 rows was about 5 % slower than the
//! blocks on the decode bench); smaller products, larger ones, other backends, and widths
//! that do not split evenly take the plain product. A weight that is not contiguous in
//! memory (a view Burn made, for example by slicing) is copied by flex's reshape first, so
//! this is for the weights the layers own.
//!
//! Whether the blocks pay depends on the machine. On the Qwen2.5-0.5B-shaped decode of
//! `bench --llm qwen2-0.5b` (2 cores, docs/BENCHMARKS.md) they took one row from 5.3 to
//! 6.8 tokens/s on an Intel Xeon, but from 9.4 down to 6.9 on an AMD EPYC, whose one core's
//! `gemv` already reads the weights faster than both of the Xeon's (four rows: 11.1 → 13.8
//! on the Xeon, 21.6 → 19.5 on the EPYC). A timing at start-up (one row times a 128 MiB
//! weight, whole and in blocks) chose the blocks on that EPYC too, so the choice is by
//! vendor, as measured: the blocks on Intel CPUs, the whole product elsewhere (Burn's own
//! behaviour), and `BURN_LORA_FEW_ROWS=split` or `=whole` to choose. This belongs in flex
//! (or gemm); it is here until it is there.

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};

/// Products of at least this many multiply-adds are worth splitting: flex's own threshold
/// for running the matrices of a batched product on its threads (`BATCH_PARALLEL_THRESHOLD`).
const SPLIT_FROM: usize = 128 * 128 * 128;

/// From this many multiply-adds flex already asks gemm for threads (`PARALLEL_THRESHOLD`),
/// which gemm uses unless the product has one row.
const FLEX_PARALLEL_FROM: usize = 192 * 192 * 192;

/// `x·W` for `x` `[rows, d_in]` and `W` `[d_in, d_out]`, or `x·Wᵀ` for `W` stored
/// `[d_out, d_in]` when `out_in` (PyTorch's layout, and an embedding's, as a tied output
/// head reads it). The result is `[rows, d_out]`, the plain product's values. Split into
/// column blocks on flex on Intel CPUs, or as `BURN_LORA_FEW_ROWS` says (see the module's
/// doc); otherwise the plain product.
pub fn matmul_weight(x: Tensor<2>, weight: Tensor<2>, out_in: bool) -> Tensor<2> {
    let [rows, d_in] = x.dims();
    let [a, b] = weight.dims();
    let d_out = if out_in { a } else { b };
    // The machine's decision first: it is cached, while `parts` formats the device's name.
    let split = split_pays().then(|| parts(rows, d_in, d_out, &x.device()));
    match split.flatten() {
        Some(parts) => split_matmul(x, weight, out_in, parts),
        None if out_in => x.matmul(weight.transpose()),
        None => x.matmul(weight),
    }
}

/// [`matmul_weight`] as `parts` column blocks (`parts` divides `d_out`).
fn split_matmul(x: Tensor<2>, weight: Tensor<2>, out_in: bool, parts: usize) -> Tensor<2> {
    let [rows, d_in] = x.dims();
    let d_out = weight.dims()[if out_in { 0 } else { 1 }];
    let width = d_out / parts;
    let blocks = match out_in {
        true => weight.reshape([parts, width, d_in]).swap_dims(1, 2),
        false => weight.reshape([d_in, parts, width]).swap_dims(0, 1),
    }; // [parts, d_in, width]
    x.unsqueeze::<3>() // [1, rows, d_in]
        .matmul(blocks) // [parts, rows, width]
        .swap_dims(0, 1)
        .reshape([rows, d_out])
}

/// Whether to split on this machine: `BURN_LORA_FEW_ROWS` (`split` or `whole`) when set,
/// else on Intel x86 CPUs only, the one vendor where the blocks were measured faster (see
/// the module's doc). Decided by the machine, not by a timing, so that a run's values do
/// not depend on how busy the machine was.
fn split_pays() -> bool {
    static DECIDED: OnceLock<bool> = OnceLock::new();
    *DECIDED.get_or_init(|| {
        let setting = std::env::var("BURN_LORA_FEW_ROWS").ok();
        if let Some(other) = setting
            .as_deref()
            .filter(|s| !matches!(*s, "split" | "whole"))
        {
            eprintln!(
                "burn-lora: BURN_LORA_FEW_ROWS={other:?} is neither split nor whole; ignored"
            );
        }
        decide(setting.as_deref(), cpu_vendor().as_deref())
    })
}

/// [`split_pays`]'s rule, given the setting and the CPU vendor.
fn decide(setting: Option<&str>, vendor: Option<&str>) -> bool {
    match setting {
        Some("split") => true,
        Some("whole") => false,
        _ => vendor == Some("GenuineIntel"),
    }
}

/// The x86 CPU's vendor string (`GenuineIntel`, `AuthenticAMD`, ...), `None` elsewhere.
fn cpu_vendor() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 is on every x86-64 CPU; its vendor string is EBX, EDX, ECX.
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        let bytes: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Into how many column blocks to split `[rows, d_in]·[d_in, d_out]`, or `None` to run it
/// whole. At least 4, so that flex runs the blocks on its threads (with fewer it runs them
/// one after another, each through gemm), and a power of two dividing `d_out`.
fn parts(rows: usize, d_in: usize, d_out: usize, device: &Device) -> Option<usize> {
    let ops = rows.saturating_mul(d_in).saturating_mul(d_out);
    let single_threaded = rows <= 4 || ops < FLEX_PARALLEL_FROM;
    if ops < SPLIT_FROM || !single_threaded || !is_flex(device) {
        return None;
    }
    let threads = rayon_threads();
    if threads < 2 {
        return None;
    }
    let mut parts = threads.next_power_of_two().max(4);
    while parts >= 4 && !d_out.is_multiple_of(parts) {
        parts /= 2;
    }
    (parts >= 4).then_some(parts)
}

/// The threads of rayon's global pool, which flex runs on: `RAYON_NUM_THREADS` when set,
/// else one per core. (On one thread the blocks would only cost: each reads its rows'
/// segments rather than whole rows.)
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether `device` is Burn's `flex` CPU backend (plain or under autodiff).
pub(crate) fn is_flex(device: &Device) -> bool {
    format!("{device:?}").contains("Flex")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Values set by formula, so the test does not depend on the device's generator.
    fn formula(rows: usize, cols: usize, salt: f32, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.618 + salt).sin() * 0.1)
            .collect();
        Tensor::<1>::from_floats(values.as_slice(), device).reshape([rows, cols])
    }

    #[test]
    fn split_products_equal_the_plain_ones_in_both_layouts() {
        let device = Device::default();
        // 1 and 3 rows; a width of 4,864 (a 0.5B model's MLP) and of 1,536; both layouts.
        for (rows, d_in, d_out) in [(1, 896, 4864), (3, 512, 1536), (1, 128, 16384)] {
            let x = formula(rows, d_in, 0.3, &device);
            let w = formula(d_in, d_out, 1.7, &device);
            let w_t = Tensor::<2>::from_data(w.clone().transpose().into_data(), &device);
            let plain = x.clone().matmul(w.clone()).into_data();
            // Whatever this machine's core count makes of it, and 4 and 8 blocks.
            let products = [
                matmul_weight(x.clone(), w.clone(), false),
                matmul_weight(x.clone(), w_t.clone(), true),
                split_matmul(x.clone(), w.clone(), false, 4),
                split_matmul(x.clone(), w_t.clone(), true, 8),
            ];
            for product in products {
                assert_eq!(product.dims(), [rows, d_out]);
                product
                    .into_data()
                    .assert_approx_eq::<f32>(&plain, Tolerance::absolute(1e-5));
            }
        }
    }

    #[test]
    fn a_linear_layer_on_a_decode_step_gives_burns_values() {
        let device = Device::default();
        let mut layer = crate::nn::LinearConfig::new(896, 4864).init(&device);
        layer.weight = burn::module::Param::from_tensor(formula(896, 4864, 0.9, &device));
        let bias = layer.bias.as_ref().expect("a bias by default").val();
        for rows in [1, 4] {
            let x = formula(rows, 896, 2.1, &device).reshape([rows, 1, 896]);
            let expected =
                burn::tensor::module::linear(x.clone(), layer.weight.val(), Some(bias.clone()));
            let got = layer.forward(x);
            assert_eq!(got.dims(), [rows, 1, 4864]);
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn the_cpu_vendor_is_read_on_x86() {
        let vendor = cpu_vendor();
        if cfg!(target_arch = "x86_64") {
            let vendor = vendor.expect("every x86-64 CPU answers CPUID leaf 0");
            assert_eq!(vendor.len(), 12, "{vendor:?}");
            assert!(vendor.is_ascii(), "{vendor:?}");
        } else {
            assert_eq!(vendor, None);
        }
    }

    #[test]
    fn blocks_on_intel_whole_elsewhere_unless_told() {
        assert!(decide(None, Some("GenuineIntel")));
        assert!(!decide(None, Some("AuthenticAMD")));
        assert!(!decide(None, None)); // not x86: Burn's own product
        assert!(decide(Some("split"), Some("AuthenticAMD")));
        assert!(!decide(Some("whole"), Some("GenuineIntel")));
        assert!(decide(Some("blocks"), Some("GenuineIntel"))); // not a setting: ignored
    }

    #[test]
    fn small_large_and_uneven_products_are_not_split() {
        let device = Device::default();
        assert_eq!(parts(1, 64, 64, &device), None); // too small to be worth it
        assert_eq!(parts(64, 896, 4864, &device), None); // flex already uses its threads
        assert_eq!(parts(1, 896, 4863, &device), None); // 4,863 is odd
        // A product that stays whole still multiplies.
        let x = Tensor::<2>::random([2, 3], Distribution::Default, &device);
        let w = Tensor::<2>::random([3, 5], Distribution::Default, &device);
        let plain = x.clone().matmul(w.clone());
        matmul_weight(x, w, false)
            .into_data()
            .assert_approx_eq::<f32>(&plain.into_data(), Tolerance::absolute(1e-6));
    }
}
