//! DoRA (PEFT's `use_dora=True`): parity with PEFT 0.21 golden files from
//! `scripts/peft_golden.py write-dora`, and merge / unmerge.

use std::fs;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};
use burn_lora::{
    Adapter, LoraConfig, apply_lora, load_adapter, merge_adapters, merge_lora, save_adapter,
    unmerge_adapters,
};
use safetensors::SafeTensors;

use crate::common::{GoldenCase, SetFactors, Tiny, assert_close, perturb, read, tensor, write_io};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn golden() -> Vec<u8> {
    fs::read(format!("{FIXTURES}/peft_dora.safetensors")).unwrap()
}

/// The base linear of case `i` and its DoRA config, on every linear.
fn base(st: &SafeTensors, i: usize, case: &GoldenCase, device: &Device) -> (Linear, LoraConfig) {
    let (linear, config) = case.base(st, i, device);
    let config = config
        .with_use_dora(true)
        .with_target_regex(Some(".*".into()));
    (linear, config)
}

/// Case `i`'s adapter, with PEFT's trained values, on a stock and on a factored `Linear`.
fn layers(
    st: &SafeTensors,
    i: usize,
    case: &GoldenCase,
    device: &Device,
) -> (Linear, burn_lora::nn::Linear) {
    let key = |name: &str| format!("case{i}.{name}");
    let (linear, config) = base(st, i, case, device);
    let dense = apply_lora(linear, &config).unwrap().map(&mut SetFactors {
        adapter: "default".into(),
        a: tensor::<2>(st, &key("lora_A"), device).transpose(),
        b: tensor::<2>(st, &key("lora_B"), device).transpose(),
        magnitude: Some(tensor::<1>(st, &key("magnitude"), device)),
        names: Vec::new(),
    });
    let fast = burn_lora::nn::Linear::from(dense.clone());
    (dense, fast)
}

fn adapter(weight: &Param<Tensor<2>>) -> &Adapter {
    weight.reparameterization::<Adapter>().unwrap()
}

#[test]
fn dora_matches_peft_outputs_gradients_init_and_merge() {
    let device = Device::default().autodiff();
    let bytes = golden();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases = GoldenCase::read_all(&bytes);
    assert_eq!(cases.len(), 3);
    for (i, case) in cases.iter().enumerate() {
        let want = |name: &str| read(&st, &format!("case{i}.{name}"));
        // A fresh DoRA adapter starts with m = ‖W‖ per output, as PEFT's.
        let (linear, config) = base(&st, i, case, &device);
        let fresh = apply_lora(linear, &config).unwrap();
        let m0 = adapter(&fresh.weight).primary().magnitude().unwrap().val();
        assert_close(
            &format!("case {i}: initial magnitude"),
            m0.inner().into_data(),
            want("magnitude_init"),
        );

        let (dense, fast) = layers(&st, i, case, &device);
        let x_data = want("x");
        let rank = x_data.shape().len();
        for (path, run) in [("dense", 0), ("factored", 1)] {
            let what = |name: &str| format!("case {i}, {path}: {name}");
            macro_rules! run {
                ($d:literal) => {{
                    let x = Tensor::<$d>::from_data(x_data.clone(), &device).require_grad();
                    let out = match run {
                        0 => dense.forward(x.clone()),
                        _ => fast.forward(x.clone()),
                    };
                    let loss =
                        (out.clone() * Tensor::<$d>::from_data(want("loss_weight"), &device)).sum();
                    let grads = loss.backward();
                    let lora = adapter(&dense.weight).primary();
                    assert_close(&what("output"), out.inner().into_data(), want("out"));
                    assert_close(
                        &what("dL/dx"),
                        x.grad(&grads).unwrap().into_data(),
                        want("grad_x"),
                    );
                    let grad = |p: &Param<Tensor<2>>| {
                        p.val().grad(&grads).unwrap().transpose().into_data()
                    };
                    assert_close(&what("dL/dA"), grad(lora.lora_a()), want("grad_A"));
                    assert_close(&what("dL/dB"), grad(lora.lora_b()), want("grad_B"));
                    let m = lora.magnitude().unwrap().val().grad(&grads).unwrap();
                    assert_close(&what("dL/dm"), m.into_data(), want("grad_magnitude"));
                }};
            }
            match rank {
                2 => run!(2),
                3 => run!(3),
                n => panic!("golden input of rank {n}"),
            }
        }
        // merge_adapters folds m / ‖W + s·A·B‖ · (W + s·A·B) in; unmerge restores W.
        let merged = merge_adapters(dense.valid()).unwrap();
        let folded = merged.weight.base().transpose().into_data();
        assert_close(
            &format!("case {i}: merged weight"),
            folded,
            want("merged_weight"),
        );
        let unmerged = unmerge_adapters(merged)
            .weight
            .base()
            .transpose()
            .into_data();
        assert_close(
            &format!("case {i}: unmerged weight"),
            unmerged,
            want("unmerged_weight"),
        );
        let plain = merge_lora(fast.valid())
            .unwrap()
            .weight
            .val()
            .transpose()
            .into_data();
        assert_close(
            &format!("case {i}: merge_lora"),
            plain,
            want("merged_weight"),
        );
    }
}

#[test]
fn dora_merged_computes_what_unmerged_computes() {
    let device = Device::default();
    device.seed(3);
    let config = LoraConfig::new()
        .with_rank(3)
        .with_alpha(5.0)
        .with_use_dora(true)
        .with_target_modules(vec!["query".into(), "value".into()]);
    let model = Tiny::new(8, 2, &device).fast();
    let model = perturb(apply_lora(model, &config).unwrap(), true, &device);
    let x = Tensor::<2>::random([5, 8], Distribution::Default, &device);
    let unmerged = model.forward(x.clone());
    let merged = merge_adapters(model.clone()).unwrap();
    assert!(merged.attn.query.adapter().unwrap().is_merged());
    assert_close(
        "merged",
        merged.forward(x.clone()).into_data(),
        unmerged.clone().into_data(),
    );
    let back = unmerge_adapters(merged);
    assert_close(
        "unmerged weight",
        back.attn.query.weight.base().into_data(),
        model.attn.query.weight.base().into_data(),
    );
    assert_close(
        "unmerged",
        back.forward(x.clone()).into_data(),
        unmerged.clone().into_data(),
    );
    let plain = merge_lora(model).unwrap();
    assert!(burn_lora::adapters(&plain).is_empty());
    assert_close(
        "merge_lora",
        plain.forward(x).into_data(),
        unmerged.into_data(),
    );
}

#[test]
fn peft_dora_adapter_loads_and_reproduces_peft_outputs() {
    let device = Device::default();
    let dir = Path::new(FIXTURES).join("peft_tiny");
    let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
    let bytes = fs::read(dir.join("io_dora.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let x = tensor::<2>(&io, "x", &device);
    let dense = load_adapter(base.clone(), dir.join("adapter_dora")).unwrap();
    assert!(adapter(&dense.attn.query.weight).primary().use_dora());
    assert_close(
        "dense logits",
        dense.forward(x.clone()).into_data(),
        read(&io, "out"),
    );
    let fast = load_adapter(base.fast(), dir.join("adapter_dora")).unwrap();
    assert_close(
        "factored logits",
        fast.forward(x.clone()).into_data(),
        read(&io, "out"),
    );

    // Saved by us, it has PEFT's keys and use_dora, and reloads to the same outputs.
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-export-dora");
    let _ = fs::remove_dir_all(&out_dir);
    save_adapter(&fast, out_dir.join("adapter")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(json["use_dora"], true);
    let weights = fs::read(out_dir.join("adapter/adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&weights).unwrap();
    let ours = read(&st, "base_model.model.attn.query.lora_magnitude_vector");
    let theirs = fs::read(dir.join("adapter_dora/adapter_model.safetensors")).unwrap();
    let theirs = SafeTensors::deserialize(&theirs).unwrap();
    assert_eq!(
        ours,
        read(&theirs, "base_model.model.attn.query.lora_magnitude_vector")
    );
    fs::copy(
        dir.join("base.safetensors"),
        out_dir.join("base.safetensors"),
    )
    .unwrap();
    let reloaded = load_adapter(
        Tiny::from_torch(&dir.join("base.safetensors"), &device),
        out_dir.join("adapter"),
    )
    .unwrap();
    let out = reloaded.forward(x.clone());
    assert_close("reloaded", out.clone().into_data(), read(&io, "out"));
    write_io(&out_dir.join("io.safetensors"), x, out);
}

#[test]
fn a_dora_magnitude_is_trainable_and_counted_as_adapter() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(2).with_use_dora(true);
    let model = apply_lora(
        Tiny::new(8, 2, &device),
        &config.with_target_modules(vec!["query".into()]),
    )
    .unwrap();
    let report = burn_lora::param_report(&model);
    // A [8, 2], B [2, 8] and m [8].
    assert_eq!(report.trainable, 8 * 2 + 2 * 8 + 8);
    assert_eq!(
        report.full_finetune_trainable,
        report.total - report.trainable
    );
}
