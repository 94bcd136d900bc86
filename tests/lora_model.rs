//! LoRA across a whole model: targets, freezing, gradients, accounting, merging.

mod common;

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};
use burn_lora::{
    AdaptableLinear, Error, LoraConfig, apply_lora, linear_paths, merge_lora, param_report,
    set_adapters_enabled,
};
use common::{Tiny, max_abs_diff};

const D: usize = 8;

fn tiny(device: &Device) -> Tiny {
    device.seed(3);
    Tiny::new(D, 2, device)
}

fn config() -> LoraConfig {
    LoraConfig::new()
        .with_rank(2)
        .with_alpha(4.0)
        .with_modules_to_save(vec!["head".into()])
}

fn x(device: &Device) -> Tensor<2> {
    Tensor::random([4, D], Distribution::Normal(0.0, 1.0), device)
}

/// Gives every `B` non-zero values, as training would.
fn perturb(model: Tiny, device: &Device) -> Tiny {
    let mut model = model;
    for layer in [&mut model.attn.query, &mut model.attn.value] {
        if let AdaptableLinear::Lora(lora) = layer {
            let b = Tensor::random(lora.lora_b.dims(), Distribution::Normal(0.0, 0.5), device);
            lora.lora_b = Param::from_tensor(b);
        }
    }
    model
}

#[test]
fn targets_select_query_and_value_only() {
    let model = apply_lora(tiny(&Device::default()), &config()).unwrap();
    assert!(model.attn.query.lora().is_some());
    assert!(model.attn.value.lora().is_some());
    assert!(model.attn.key.lora().is_none());
}

#[test]
fn all_linear_adapts_every_linear() {
    let config = config().with_target_modules(vec!["all-linear".into()]);
    let model = apply_lora(tiny(&Device::default()), &config).unwrap();
    assert!(model.attn.key.lora().is_some());
}

#[test]
fn only_adapters_receive_gradients() {
    let device = Device::default().autodiff();
    let model = apply_lora(tiny(&device), &config()).unwrap();
    let model = perturb(model, &device);
    let grads = model.forward(x(&device)).sum().backward();

    let query = model.attn.query.lora().unwrap();
    assert!(
        query.lora_a.grad(&grads).is_some(),
        "lora_a gets a gradient"
    );
    assert!(
        query.lora_b.grad(&grads).is_some(),
        "lora_b gets a gradient"
    );
    assert!(
        model.head.weight.grad(&grads).is_some(),
        "the saved head gets a gradient"
    );
    assert!(model.head.bias.as_ref().unwrap().grad(&grads).is_some());
    assert!(
        query.weight.grad(&grads).is_none(),
        "base weight gets no gradient"
    );
    assert!(
        query.bias.as_ref().unwrap().grad(&grads).is_none(),
        "base bias gets none"
    );
    let AdaptableLinear::Base(key) = &model.attn.key else {
        panic!("key is not a target")
    };
    assert!(
        key.weight.grad(&grads).is_none(),
        "untargeted layers get none"
    );
}

#[test]
fn trainable_count_is_r_times_in_plus_out() {
    let model = apply_lora(tiny(&Device::default()), &config()).unwrap();
    let report = param_report(&model);
    let per_layer = 2 * (D + D);
    let head = D * 2 + 2;
    assert_eq!(report.trainable, 2 * per_layer + head);
    let base = 3 * (D * D + D) + head;
    assert_eq!(report.total, base + 2 * per_layer);
    assert_eq!(report.frozen, 3 * (D * D + D));
    assert_eq!(report.full_finetune_trainable, base);
    assert_eq!(report.adam_state_bytes, 8 * report.trainable);
    let query = report
        .rows
        .iter()
        .find(|row| row.module == "attn.query")
        .unwrap();
    assert_eq!((query.trainable, query.frozen), (per_layer, D * D + D));
}

#[test]
fn report_prints_peft_summary_and_serializes() {
    let model = apply_lora(tiny(&Device::default()), &config()).unwrap();
    let report = param_report(&model);
    let text = report.to_string();
    assert!(
        text.contains("trainable params: 82 || all params: 298 || trainable%: 27.5168"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["trainable"], 82);
    assert_eq!(json["rows"][0]["module"], "attn.query");
}

#[test]
fn unknown_target_lists_available_linears() {
    let config = config().with_target_modules(vec!["qkv".into()]);
    let err = apply_lora(tiny(&Device::default()), &config).unwrap_err();
    let Error::UnknownTarget { name, available } = &err else {
        panic!("{err}")
    };
    assert_eq!(name, "qkv");
    assert_eq!(available, &["attn.query", "attn.key", "attn.value"]);
    assert!(err.to_string().contains("attn.query, attn.key, attn.value"));
}

#[test]
fn unknown_module_to_save_is_an_error() {
    let config = config().with_modules_to_save(vec!["classifier".into()]);
    let err = apply_lora(tiny(&Device::default()), &config).unwrap_err();
    assert!(matches!(err, Error::UnknownModuleToSave { ref name } if name == "classifier"));
}

#[test]
fn regex_targets_select_by_whole_path() {
    let config = config().with_target_regex(Some(r"attn\.(key|value)".into()));
    let model = apply_lora(tiny(&Device::default()), &config).unwrap();
    assert!(model.attn.query.lora().is_none());
    assert!(model.attn.key.lora().is_some());
}

#[test]
fn merged_model_equals_unmerged() {
    let device = Device::default();
    let model = perturb(apply_lora(tiny(&device), &config()).unwrap(), &device);
    let x = x(&device);
    let unmerged = model.forward(x.clone());
    let merged = merge_lora(model).unwrap();
    assert!(merged.attn.query.lora().is_none());
    assert!(max_abs_diff(merged.forward(x), unmerged) < 1e-5);
}

#[test]
fn disabled_adapters_give_base_output() {
    let device = Device::default();
    let base = tiny(&device);
    let x = x(&device);
    let expected = base.forward(x.clone());
    let model = perturb(apply_lora(base, &config()).unwrap(), &device);
    let disabled = set_adapters_enabled(model, false);
    assert_eq!(disabled.forward(x).into_data(), expected.into_data());
}

#[test]
fn linear_paths_name_every_adaptable_layer() {
    let paths = linear_paths(&tiny(&Device::default()));
    assert_eq!(paths, ["attn.query", "attn.key", "attn.value"]);
}

#[test]
fn num_params_counts_everything_but_report_separates() {
    let model = apply_lora(tiny(&Device::default()), &config()).unwrap();
    assert_eq!(model.num_params(), param_report(&model).total);
}
