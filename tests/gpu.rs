//! The library on Burn's wgpu backend, checked against flex: LoRA forward and backward agree
//! within 1e-3, and an adapter saved from the GPU loads back to the same outputs.
//!
//! Built only with `--features wgpu`. On a machine with no GPU it runs on Mesa's software
//! Vulkan driver, lavapipe (Debian's `mesa-vulkan-drivers`; `.ci/run` installs it):
//!
//! ```sh
//! cargo test --features wgpu --test gpu -- --nocapture
//! ```
//!
//! It prints the device wgpu chose and fails on a machine with no Vulkan driver at all,
//! where wgpu would silently fall back to a software OpenGL many times slower.
#![cfg(feature = "wgpu")]

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, DeviceKind, Distribution, Tensor, TensorData};
use burn_lora::{Adapter, LoraConfig, apply_lora, load_adapter, save_adapter};

/// `head(tanh(query(x)) + value(x))`: stock linears with adapters on query and value.
#[derive(Module, Debug)]
struct Small {
    query: burn_lora::nn::Linear,
    value: Linear,
    head: Linear,
}

impl Small {
    fn new(device: &Device) -> Self {
        Self {
            query: burn_lora::nn::LinearConfig::new(16, 16).init(device),
            value: LinearConfig::new(16, 16).init(device),
            head: LinearConfig::new(16, 2).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head
            .forward(self.query.forward(x.clone()).tanh() + self.value.forward(x))
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[track_caller]
fn assert_close(what: &str, gpu: Vec<f32>, cpu: Vec<f32>) {
    assert_eq!(gpu.len(), cpu.len(), "{what}");
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            (g - c).abs() <= 1e-3 * c.abs().max(1.0),
            "{what}[{i}]: {g} vs {c}"
        );
    }
}

#[test]
fn lora_on_wgpu_matches_flex_and_round_trips() {
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let identity = gpu.identity();
    let name = identity.as_ref().map_or("unknown", |i| i.name.as_str());
    let fingerprint = identity.as_ref().map_or("", |i| i.fingerprint.as_str());
    println!("wgpu device: {name} ({fingerprint})");
    assert!(
        !fingerprint.to_lowercase().contains("gl"),
        "wgpu fell back to OpenGL ({name}, {fingerprint}): install a Vulkan driver (mesa-vulkan-drivers)"
    );

    let cpu = Device::flex();
    cpu.seed(1);
    let config = LoraConfig::new()
        .with_rank(4)
        .with_alpha(8.0)
        .with_target_modules(vec!["query".into(), "value".into()])
        .with_modules_to_save(vec!["head".into()]);
    let base = Small::new(&cpu);
    let _ = base.forward(Tensor::zeros([1, 16], &cpu)); // initialise every parameter now
    let model = apply_lora(base.clone(), &config).unwrap();
    // Non-zero B on both adapters, as after training.
    let model = model.map(&mut SetB);
    let x = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &cpu);

    let run = |device: &Device| {
        let device = device.clone().autodiff();
        let model = model.clone().fork(&device).train();
        let x = x.clone().to_device(&device);
        let out = model.forward(x);
        let grads = out.clone().sum().backward();
        let factor = |a: &Adapter| {
            let (ga, gb) = (a.lora_a().val().grad(&grads), a.lora_b().val().grad(&grads));
            (values(ga.unwrap()), values(gb.unwrap()))
        };
        let fast = factor(model.query.adapter().unwrap());
        let dense = factor(model.value.weight.reparameterization::<Adapter>().unwrap());
        (values(out.inner()), fast, dense)
    };
    let (out_gpu, fast_gpu, dense_gpu) = run(&gpu);
    let (out_cpu, fast_cpu, dense_cpu) = run(&cpu);
    assert_close("output", out_gpu, out_cpu);
    assert_close("factored dA", fast_gpu.0, fast_cpu.0);
    assert_close("factored dB", fast_gpu.1, fast_cpu.1);
    assert_close("dense dA", dense_gpu.0, dense_cpu.0);
    assert_close("dense dB", dense_gpu.1, dense_cpu.1);

    // Saved from the GPU, loaded onto a fresh base on the GPU: the same outputs.
    let on_gpu = model.clone().fork(&gpu);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-adapter");
    save_adapter(&on_gpu, &dir).unwrap();
    let loaded = load_adapter(base.fork(&gpu), &dir).unwrap();
    let x = x.to_device(&gpu);
    assert_close(
        "reloaded",
        values(loaded.forward(x.clone())),
        values(on_gpu.forward(x)),
    );
}

/// Sets every LoRA `B` to a fixed non-zero pattern.
struct SetB;

impl burn::module::ModuleMapper for SetB {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| {
            let dims = t.dims();
            if D != 2 || dims[0] != 4 {
                return t;
            }
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
            Tensor::from_data(TensorData::new(values, dims), &t.device())
                .set_require_grad(t.is_require_grad())
        })
    }
}
