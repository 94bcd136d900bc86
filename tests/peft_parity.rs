//! Parity with Hugging Face PEFT on golden files from `scripts/peft_golden.py`.

mod common;

use std::fs;
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_lora::{AdaptableLinear, LoraConfig, LoraLinear, apply_lora, load_adapter, save_adapter};
use common::{Tiny, assert_close, read, tensor};
use safetensors::SafeTensors;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[derive(serde::Deserialize)]
struct Case {
    r: usize,
    alpha: f64,
    use_rslora: bool,
    bias: bool,
    scaling: f64,
}

fn cases(st: &SafeTensors) -> Vec<Case> {
    let (_, metadata) = SafeTensors::read_metadata(&fs::read(golden_layers()).unwrap()).unwrap();
    let _ = st;
    let json = metadata.metadata().as_ref().unwrap()["cases"].clone();
    serde_json::from_str(&json).unwrap()
}

fn golden_layers() -> String {
    format!("{FIXTURES}/peft_layers.safetensors")
}

/// The PEFT layer of case `i`, rebuilt as a `LoraLinear` (PyTorch `[out, in]` transposed).
fn layer(st: &SafeTensors, i: usize, case: &Case, device: &Device) -> LoraLinear {
    let key = |name: &str| format!("case{i}.{name}");
    let linear = Linear {
        weight: Param::from_tensor(tensor::<2>(st, &key("weight"), device).transpose()),
        bias: case
            .bias
            .then(|| Param::from_tensor(tensor::<1>(st, &key("bias"), device))),
    };
    let config = LoraConfig::new()
        .with_rank(case.r)
        .with_alpha(case.alpha)
        .with_use_rslora(case.use_rslora);
    let mut layer = LoraLinear::from_linear(linear, &config).unwrap();
    layer.lora_a = Param::from_tensor(tensor::<2>(st, &key("lora_A"), device).transpose());
    layer.lora_b = Param::from_tensor(tensor::<2>(st, &key("lora_B"), device).transpose());
    layer
}

/// Runs `f` with the case's input as a tensor of its own rank (2 or 3).
fn forward_backward(
    st: &SafeTensors,
    i: usize,
    layer: &LoraLinear,
    device: &Device,
) -> (TensorData, TensorData, TensorData, TensorData) {
    let x_data = read(st, &format!("case{i}.x"));
    let w_data = read(st, &format!("case{i}.loss_weight"));
    macro_rules! run {
        ($d:literal) => {{
            let x = Tensor::<$d>::from_data(x_data, device).require_grad();
            let out = layer.forward(x.clone());
            let loss = (out.clone() * Tensor::<$d>::from_data(w_data, device)).sum();
            let grads = loss.backward();
            (
                out.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                layer.lora_a.grad(&grads).unwrap().transpose().into_data(),
                layer.lora_b.grad(&grads).unwrap().transpose().into_data(),
            )
        }};
    }
    match x_data.shape().len() {
        2 => run!(2),
        3 => run!(3),
        n => panic!("golden input of rank {n}"),
    }
}

#[test]
fn layers_match_peft_outputs_gradients_and_merges() {
    let device = Device::default().autodiff();
    let bytes = fs::read(golden_layers()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = cases(&st);
    assert_eq!(cases.len(), 5);
    for (i, case) in cases.iter().enumerate() {
        let layer = layer(&st, i, case, &device);
        assert!(
            (layer.scaling() - case.scaling).abs() < 1e-12,
            "case {i}: scaling"
        );
        let (out, grad_x, grad_a, grad_b) = forward_backward(&st, i, &layer, &device);
        let want = |name: &str| read(&st, &format!("case{i}.{name}"));
        assert_close(&format!("case {i} output"), out, want("out"));
        assert_close(&format!("case {i} dL/dx"), grad_x, want("grad_x"));
        assert_close(&format!("case {i} dL/dA"), grad_a, want("grad_A"));
        assert_close(&format!("case {i} dL/dB"), grad_b, want("grad_B"));
        let merged = layer.merge().weight.val().transpose().inner().into_data();
        assert_close(
            &format!("case {i} merged weight"),
            merged,
            want("merged_weight"),
        );
    }
}

#[test]
fn peft_saved_adapter_loads_and_reproduces_peft_outputs() {
    let device = Device::default();
    let dir = Path::new(FIXTURES).join("peft_tiny");
    let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
    let model = load_adapter(&base, dir.join("adapter")).unwrap();
    let bytes = fs::read(dir.join("io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let out = model.forward(tensor::<2>(&io, "x", &device));
    assert_close("tiny model logits", out.into_data(), read(&io, "out"));
}

/// Writes an adapter for PEFT to read (`scripts/peft_golden.py check <dir>`), with the base
/// it adapts and the logits burn-lora computes, into `target/tmp/peft-export`.
#[test]
fn export_adapter_for_peft_check() {
    let device = Device::default();
    let fixtures = Path::new(FIXTURES).join("peft_tiny");
    let base = Tiny::from_torch(&fixtures.join("base.safetensors"), &device);
    let config = LoraConfig::new()
        .with_rank(2)
        .with_alpha(6.0)
        .with_modules_to_save(vec!["head".into()]);
    let mut model = apply_lora(base, &config).unwrap();
    device.seed(21);
    for layer in [&mut model.attn.query, &mut model.attn.value] {
        if let AdaptableLinear::Lora(lora) = layer {
            let b = Tensor::random(lora.lora_b.dims(), Distribution::Normal(0.0, 0.5), &device);
            lora.lora_b = Param::from_tensor(b);
        }
    }
    let head = Tensor::random([8, 2], Distribution::Normal(0.0, 1.0), &device);
    model.head.weight = Param::from_tensor(head);

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-export");
    let _ = fs::remove_dir_all(&out_dir);
    save_adapter(&model, &config, out_dir.join("adapter")).unwrap();
    fs::copy(
        fixtures.join("base.safetensors"),
        out_dir.join("base.safetensors"),
    )
    .unwrap();
    let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    let out = model.forward(x.clone());
    let to_bytes = |t: Tensor<2>| -> (Vec<usize>, Vec<u8>) {
        let data = t.into_data();
        let bytes = data
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        (data.shape().to_vec(), bytes)
    };
    let (x_shape, x_bytes) = to_bytes(x);
    let (out_shape, out_bytes) = to_bytes(out.clone());
    let view = |shape, bytes| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytes).unwrap()
    };
    let io = vec![
        ("x", view(x_shape, &x_bytes)),
        ("out", view(out_shape, &out_bytes)),
    ];
    fs::write(
        out_dir.join("io.safetensors"),
        safetensors::serialize(io, None).unwrap(),
    )
    .unwrap();

    // The export reloads here too, so a broken file fails this test before Python sees it.
    let reloaded = load_adapter(
        &Tiny::from_torch(&fixtures.join("base.safetensors"), &device),
        out_dir.join("adapter"),
    )
    .unwrap();
    let x = Tensor::<2>::from_data(
        read(
            &SafeTensors::deserialize(&fs::read(out_dir.join("io.safetensors")).unwrap()).unwrap(),
            "x",
        ),
        &device,
    );
    assert_close(
        "reloaded export",
        reloaded.forward(x).into_data(),
        out.into_data(),
    );
}
