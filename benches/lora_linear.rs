//! One linear layer, forward and forward + backward: a frozen `Linear`, a trainable
//! `Linear`, our `LoraLinear`, and Burn's built-in `Module::apply_lora`, over
//! d ∈ {128, 512, 1024}, tokens ∈ {16, 256, 2048}, r ∈ {1, 8, 64}.
//!
//! ```sh
//! cargo bench --bench lora_linear                 # everything (several minutes)
//! cargo bench --bench lora_linear -- d1024/t16    # one size
//! ```

use std::hint::black_box;
use std::time::Duration;

use burn::module::{Lora, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};
use burn_lora::{LoraConfig, LoraLinear};
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../examples/common/allocator.rs"]
mod allocator;

fn input(tokens: usize, d: usize, device: &Device) -> Tensor<2> {
    Tensor::random([tokens, d], Distribution::Normal(0.0, 1.0), device)
}

/// A LoRA layer whose B is non-zero, as during training.
fn ours(d: usize, r: usize, device: &Device) -> LoraLinear {
    let config = LoraConfig::new().with_rank(r).with_alpha(2.0 * r as f64);
    let mut layer = LoraLinear::from_linear(LinearConfig::new(d, d).init(device), &config).unwrap();
    layer.lora_b = burn::module::Param::from_tensor(Tensor::random(
        [r, d],
        Distribution::Normal(0.0, 0.1),
        device,
    ));
    layer
}

fn burns(d: usize, r: usize, device: &Device) -> Linear {
    LinearConfig::new(d, d)
        .init(device)
        .apply_lora(Lora::new(r, 2.0 * r as f64))
}

fn train_step(forward: impl Fn(Tensor<2>) -> Tensor<2>, x: &Tensor<2>) {
    let x = x.clone().require_grad();
    let grads = forward(x.clone()).sum().backward();
    black_box(x.grad(&grads).map(|g| g.into_data()));
}

fn bench(c: &mut Criterion) {
    // The allocator setting every example uses (buffers reused rather than freshly mapped).
    allocator::retain_freed_memory();
    let device = Device::default();
    let train = device.clone().autodiff();
    let mut group = c.benchmark_group("linear");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for d in [128, 512, 1024] {
        for tokens in [16, 256, 2048] {
            let x = input(tokens, d, &device);
            let xt = input(tokens, d, &train);
            let frozen = LinearConfig::new(d, d).init(&device);
            group.bench_function(format!("d{d}/t{tokens}/frozen-linear/forward"), |b| {
                b.iter(|| black_box(frozen.forward(x.clone()).into_data()))
            });
            let trainable = LinearConfig::new(d, d).init(&train);
            group.bench_function(format!("d{d}/t{tokens}/trainable-linear/train"), |b| {
                b.iter(|| train_step(|x| trainable.forward(x), &xt))
            });
            for r in [1, 8, 64] {
                let id = |what: &str| format!("d{d}/t{tokens}/r{r}/{what}");
                let lora = ours(d, r, &device);
                group.bench_function(id("lora-linear/forward"), |b| {
                    b.iter(|| black_box(lora.forward(x.clone()).into_data()))
                });
                let lora = ours(d, r, &train);
                group.bench_function(id("lora-linear/train"), |b| {
                    b.iter(|| train_step(|x| lora.forward(x), &xt))
                });
                let builtin = burns(d, r, &device);
                group.bench_function(id("burn-apply-lora/forward"), |b| {
                    b.iter(|| black_box(builtin.forward(x.clone()).into_data()))
                });
                let builtin = burns(d, r, &train);
                group.bench_function(id("burn-apply-lora/train"), |b| {
                    b.iter(|| train_step(|x| builtin.forward(x), &xt))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
