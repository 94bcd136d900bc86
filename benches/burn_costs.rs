//! Minimal reproductions of the costs that lie in Burn's CPU backend (burn-flex 0.22.1), not
//! in our code, each as a pair of runs that differ in one thing, on plain tensors and with
//! no model. `docs/BENCHMARKS.md` ("Burn's internals") gives what each costs and what change
//! in Burn would remove it.
//!
//! ```sh
//! cargo bench --bench burn_costs
//! ```
//!
//! 1. `exp` of masked scores: softmax over rows whose masked entries are `-1e9` against the
//!    same rows with `-inf`. glibc's `expf` takes a slow path (`__math_uflowf`, setting
//!    `errno`) for every result that underflows, and burn-flex maps `exp` element by element
//!    through it.
//! 2. `exp` itself: `exp` against `add` over the same elements. burn-flex's `exp` is the C
//!    library's scalar `expf`, one call per element, where `add` is vectorised.
//! 3. Every op's fresh output: an op that allocates (`x + y`) against the C library's copy of
//!    the same bytes. burn-flex zero-fills each new buffer as a `Vec<u8>`, then copies it
//!    into a 16-byte-aligned one (a `memset` and a `memmove` per op).
//! 4. Thin products: `[tokens, d]·[d, 8]` (LoRA's `x·A`) against `[tokens, d]·[d, d]`, per
//!    multiply-add. gemm's kernels are sized for wide outputs.

use std::hint::black_box;
use std::time::Instant;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Tensor};

#[path = "../examples/common/allocator.rs"]
mod allocator;

/// The median of `runs` timings of `f`, in seconds, after 3 untimed ones.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    allocator::retain_freed_memory();
    let device = Device::default();
    let normal = Distribution::Normal(0.0, 1.0);
    // Attention scores of the bench shape: 32 texts, 4 heads, 64 × 64 positions, half of
    // each row masked (as a causal mask masks, on average).
    let scores = Tensor::<4>::random([32, 4, 64, 64], normal, &device);
    let n = scores.shape().num_elements() as f64;
    let upper = Tensor::<2, burn::tensor::Bool>::tril_mask([64, 64], 0, &device)
        .reshape([1, 1, 64, 64])
        .expand([32, 4, 64, 64]);
    let finite = scores.clone().mask_fill(upper.clone(), -1e9);
    let infinite = scores.clone().mask_fill(upper, f32::NEG_INFINITY);
    let run = |t: &Tensor<4>| black_box(softmax(t.clone(), 3).into_data());
    let t_finite = time(30, || {
        run(&finite);
    });
    let t_infinite = time(30, || {
        run(&infinite);
    });
    println!(
        "1. softmax, masked with -1e9: {:.2} ns/element; with -inf: {:.2} ns/element ({:.2}x)",
        1e9 * t_finite / n,
        1e9 * t_infinite / n,
        t_finite / t_infinite
    );

    let x = Tensor::<1>::random([1 << 20], Distribution::Uniform(-10.0, 0.0), &device);
    let y = Tensor::<1>::random([1 << 20], normal, &device);
    let m = (1 << 20) as f64;
    let t_exp = time(30, || {
        black_box(x.clone().exp().into_data());
    });
    let t_add = time(30, || {
        black_box((x.clone() + y.clone()).into_data());
    });
    println!(
        "2. exp: {:.2} ns/element; add: {:.2} ns/element ({:.1}x)",
        1e9 * t_exp / m,
        1e9 * t_add / m,
        t_exp / t_add
    );

    let bytes: Vec<f32> = vec![1.0; 1 << 20];
    let t_copy = time(30, || {
        black_box(bytes.clone());
    });
    let t_op = time(30, || {
        black_box(x.clone() + y.clone());
    });
    println!(
        "3. x + y (fresh output, no read back): {:.2} ns/element; copying the same 4 MB: {:.2} ns/element",
        1e9 * t_op / m,
        1e9 * t_copy / m
    );

    let tokens = 1024;
    for d in [128, 384] {
        let x = Tensor::<2>::random([tokens, d], normal, &device);
        let wide = Tensor::<2>::random([d, d], normal, &device);
        let thin = Tensor::<2>::random([d, 8], normal, &device);
        let t_wide = time(30, || {
            black_box(x.clone().matmul(wide.clone()).into_data());
        });
        let t_thin = time(30, || {
            black_box(x.clone().matmul(thin.clone()).into_data());
        });
        let per = |t: f64, cols: usize| 1e12 * t / (tokens * d * cols) as f64;
        println!(
            "4. d {d}: [{tokens}, {d}]·[{d}, {d}] {:.3} ps/multiply-add; ·[{d}, 8] {:.3} ps/multiply-add ({:.1}x)",
            per(t_wide, d),
            per(t_thin, 8),
            per(t_thin, 8) / per(t_wide, d)
        );
    }
}
