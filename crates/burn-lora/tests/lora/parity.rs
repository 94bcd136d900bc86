//! Parity with Hugging Face PEFT on golden files from `scripts/peft_golden.py`.

use std::fs;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_lora::{
    Adapter, LoraConfig, LoraLinear, apply_lora, load_adapter, merge_lora, save_adapter,
};
use safetensors::SafeTensors;

use crate::common::{GoldenCase, SetFactors, Tiny, assert_close, perturb, read, tensor, write_io};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// One layer behind the three ways to compute it: the one-layer `LoraLinear`, a stock
/// `burn::nn::Linear` carrying an `Adapter` (dense path), and `burn_lora::nn::Linear`
/// carrying one (factored path). A few per test, so their sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Layer {
    One(LoraLinear),
    Dense(Linear),
    Fast(burn_lora::nn::Linear),
}

impl Layer {
    fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Layer::One(layer) => layer.forward(x),
            Layer::Dense(layer) => layer.forward(x),
            Layer::Fast(layer) => layer.forward(x),
        }
    }

    fn factors(&self) -> (Tensor<2>, Tensor<2>) {
        let adapter = |weight: &Param<Tensor<2>>| {
            let adapter = weight.reparameterization::<Adapter>().unwrap();
            (adapter.lora_a().val(), adapter.lora_b().val())
        };
        match self {
            Layer::One(layer) => (layer.lora_a.val(), layer.lora_b.val()),
            Layer::Dense(layer) => adapter(&layer.weight),
            Layer::Fast(layer) => adapter(&layer.weight),
        }
    }

    fn scaling(&self) -> f64 {
        match self {
            Layer::One(layer) => layer.scaling(),
            Layer::Dense(layer) => layer
                .weight
                .reparameterization::<Adapter>()
                .unwrap()
                .scaling(),
            Layer::Fast(layer) => layer.adapter().unwrap().scaling(),
        }
    }

    fn merged_weight(self) -> Tensor<2> {
        match self {
            Layer::One(layer) => layer.merge().weight.val(),
            Layer::Dense(layer) => merge_lora(layer).unwrap().weight.val(),
            Layer::Fast(layer) => merge_lora(layer).unwrap().weight.val(),
        }
    }
}

fn golden_layers() -> String {
    format!("{FIXTURES}/peft_layers.safetensors")
}

/// The PEFT layer of case `i`, rebuilt each of the three ways (PyTorch `[out, in]`
/// transposed).
fn layers(
    st: &SafeTensors,
    i: usize,
    case: &GoldenCase,
    device: &Device,
) -> Vec<(&'static str, Layer)> {
    let key = |name: &str| format!("case{i}.{name}");
    let (linear, config) = case.base(st, i, device);
    let a = tensor::<2>(st, &key("lora_A"), device).transpose();
    let b = tensor::<2>(st, &key("lora_B"), device).transpose();
    let mut one = LoraLinear::from_linear(linear.clone(), &config).unwrap();
    one.lora_a = Param::from_tensor(a.clone());
    one.lora_b = Param::from_tensor(b.clone());
    let every = config.with_target_regex(Some(".*".into()));
    let dense = apply_lora(linear, &every).unwrap().map(&mut SetFactors {
        adapter: "default".into(),
        a,
        b,
        magnitude: None,
        names: Vec::new(),
    });
    let fast = burn_lora::nn::Linear::from(dense.clone());
    vec![
        ("LoraLinear", Layer::One(one)),
        ("dense", Layer::Dense(dense)),
        ("factored", Layer::Fast(fast)),
    ]
}

/// Runs `f` with the case's input as a tensor of its own rank (2 or 3).
fn forward_backward(
    st: &SafeTensors,
    i: usize,
    layer: &Layer,
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
            let (a, b) = layer.factors();
            (
                out.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                a.grad(&grads).unwrap().transpose().into_data(),
                b.grad(&grads).unwrap().transpose().into_data(),
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
    let cases = GoldenCase::read_all(&bytes);
    assert_eq!(cases.len(), 5);
    for (i, case) in cases.iter().enumerate() {
        for (path, layer) in layers(&st, i, case, &device) {
            let what = |name: &str| format!("case {i}, {path}: {name}");
            assert!(
                (layer.scaling() - case.scaling).abs() < 1e-12,
                "{}",
                what("scaling")
            );
            let (out, grad_x, grad_a, grad_b) = forward_backward(&st, i, &layer, &device);
            let want = |name: &str| read(&st, &format!("case{i}.{name}"));
            assert_close(&what("output"), out, want("out"));
            assert_close(&what("dL/dx"), grad_x, want("grad_x"));
            assert_close(&what("dL/dA"), grad_a, want("grad_A"));
            assert_close(&what("dL/dB"), grad_b, want("grad_B"));
            let merged = layer.merged_weight().transpose().inner().into_data();
            assert_close(&what("merged weight"), merged, want("merged_weight"));
        }
    }
}

#[test]
fn peft_saved_adapter_loads_and_reproduces_peft_outputs() {
    let device = Device::default();
    let dir = Path::new(FIXTURES).join("peft_tiny");
    let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
    let bytes = fs::read(dir.join("io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let x = tensor::<2>(&io, "x", &device);
    let dense = load_adapter(base.clone(), dir.join("adapter")).unwrap();
    assert_close(
        "dense logits",
        dense.forward(x.clone()).into_data(),
        read(&io, "out"),
    );
    let fast = load_adapter(base.fast(), dir.join("adapter")).unwrap();
    assert_close(
        "factored logits",
        fast.forward(x).into_data(),
        read(&io, "out"),
    );
}

#[test]
fn peft_rank_and_alpha_patterns_load_and_reproduce_peft_outputs() {
    // PEFT's rank_pattern {"key": 2, "attn.value": 6} and alpha_pattern {"value": 3} on
    // r=4, alpha=8 (scripts/peft_golden.py write-patterns).
    let device = Device::default();
    let dir = Path::new(FIXTURES).join("peft_tiny");
    let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
    let bytes = fs::read(dir.join("io_patterns.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let x = tensor::<2>(&io, "x", &device);
    let adapter = dir.join("adapter_patterns");
    let model = load_adapter(base.clone().fast(), &adapter).unwrap();
    let ranks: Vec<(String, usize, f64)> = burn_lora::adapters(&model)
        .into_iter()
        .map(|(site, a)| (site.path, a.rank(), a.alpha()))
        .collect();
    assert_eq!(
        ranks,
        [
            ("attn.query".to_string(), 4, 8.0),
            ("attn.key".to_string(), 2, 8.0),
            ("attn.value".to_string(), 6, 3.0),
        ]
    );
    assert_close(
        "logits",
        model.forward(x.clone()).into_data(),
        read(&io, "out"),
    );
    let dense = load_adapter(base, &adapter).unwrap();
    assert_close(
        "dense logits",
        dense.forward(x.clone()).into_data(),
        read(&io, "out"),
    );
    // Saved again, the patterns are written under full module names, and read back the
    // same model.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-patterns-roundtrip");
    save_adapter(&model, &out).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["r"], 4);
    assert_eq!(
        json["rank_pattern"],
        serde_json::json!({"attn.key": 2, "attn.value": 6})
    );
    assert_eq!(
        json["alpha_pattern"],
        serde_json::json!({"attn.value": 3.0})
    );
    let again = load_adapter(
        Tiny::from_torch(&dir.join("base.safetensors"), &device).fast(),
        &out,
    )
    .unwrap();
    assert_close("round trip", again.forward(x).into_data(), read(&io, "out"));
}

/// Writes an adapter for PEFT to read (`scripts/peft_golden.py check <dir>`), with the base
/// it adapts and the logits burn-lora computes, into `target/tmp/peft-export`. Its layers
/// have different ranks and alphas, so PEFT must read our `rank_pattern` and
/// `alpha_pattern`.
#[test]
fn export_adapter_for_peft_check() {
    let device = Device::default();
    let fixtures = Path::new(FIXTURES).join("peft_tiny");
    let base = Tiny::from_torch(&fixtures.join("base.safetensors"), &device);
    let config = LoraConfig::new()
        .with_rank(2)
        .with_alpha(6.0)
        .with_target_modules(vec!["query".into(), "key".into(), "value".into()])
        .with_rank_pattern(vec![("value".into(), 3)])
        .with_alpha_pattern(vec![("attn.query".into(), 5.0)])
        .with_modules_to_save(vec!["head".into()]);
    device.seed(21);
    let mut model = perturb(apply_lora(base, &config).unwrap(), false, &device);
    let head = Tensor::random([8, 2], Distribution::Normal(0.0, 1.0), &device);
    model.head.weight = Param::from_tensor(head);

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-export");
    let _ = fs::remove_dir_all(&out_dir);
    save_adapter(&model, out_dir.join("adapter")).unwrap();
    fs::copy(
        fixtures.join("base.safetensors"),
        out_dir.join("base.safetensors"),
    )
    .unwrap();
    let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
    let out = model.forward(x.clone());
    write_io(&out_dir.join("io.safetensors"), x, out.clone());

    // The export reloads here too, so a broken file fails this test before Python sees it.
    let reloaded = load_adapter(
        Tiny::from_torch(&fixtures.join("base.safetensors"), &device),
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
