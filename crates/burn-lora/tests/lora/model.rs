//! LoRA across a whole model of stock Burn layers: targets, freezing, gradients,
//! accounting, the two compute paths, merging, disabling, dtypes.

use burn::module::Module;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::tensor::{DType, Device, Distribution, Tensor};
use burn_lora::{
    Adapter, AdapterDtype, Error, LoraConfig, adapters, apply_lora, linear_paths, merge_adapters,
    merge_lora, param_report, set_adapters_enabled, unmerge_adapters,
};

use crate::common::{Tiny, assert_close, max_abs_diff, perturb};

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

fn adapted_paths<M: Module>(model: &M) -> Vec<String> {
    adapters(model)
        .into_iter()
        .map(|(site, _)| site.path)
        .collect()
}

#[test]
fn stock_transformer_encoder_adapts_without_code_changes() {
    let device = Device::default();
    let (d, ff, heads, layers, r) = (16, 32, 2, 3, 4);
    let encoder: TransformerEncoder =
        TransformerEncoderConfig::new(d, ff, heads, layers).init(&device);
    let paths = linear_paths(&encoder);
    assert!(
        paths.contains(&"layers.0.mha.query".to_string()),
        "{paths:?}"
    );
    let config = LoraConfig::new().with_rank(r).with_alpha(8.0);
    let encoder = apply_lora(encoder, &config).unwrap();
    let adapted = adapted_paths(&encoder);
    assert_eq!(adapted.len(), 2 * layers);
    assert_eq!(adapted[0], "layers.0.mha.query");
    assert_eq!(adapted[1], "layers.0.mha.value");
    let report = param_report(&encoder);
    // q and v in each layer: 2 · r · (d + d).
    assert_eq!(report.trainable, layers * 2 * r * (d + d));
    // It still runs, and trains only the factors.
    let device = device.autodiff();
    let encoder = encoder.fork(&device).train();
    let x = Tensor::<3>::random([2, 5, d], Distribution::Default, &device);
    let grads = encoder
        .forward(TransformerEncoderInput::new(x))
        .sum()
        .backward();
    let query = &encoder.layers[0].mha.query;
    let adapter = query.weight.reparameterization::<Adapter>().unwrap();
    assert!(adapter.lora_a().val().grad(&grads).is_some());
    assert!(query.weight.base().grad(&grads).is_none());
}

#[test]
fn head_and_adapters_train_base_weights_get_no_gradient() {
    let device = Device::default().autodiff();
    let model = apply_lora(tiny(&device), &config()).unwrap();
    let model = perturb(model, false, &device);
    let grads = model.forward(x(&device)).sum().backward();
    let query = &model.attn.query;
    let adapter = query.weight.reparameterization::<Adapter>().unwrap();
    assert!(adapter.lora_a().val().grad(&grads).is_some(), "A learns");
    assert!(adapter.lora_b().val().grad(&grads).is_some(), "B learns");
    assert!(
        model.head.weight.val().grad(&grads).is_some(),
        "the head learns"
    );
    assert!(
        query.weight.base().grad(&grads).is_none(),
        "base weight frozen"
    );
    assert!(query.bias.as_ref().unwrap().val().grad(&grads).is_none());
    assert!(model.attn.key.weight.val().grad(&grads).is_none());
}

#[test]
fn fast_path_equals_dense_path() {
    let device = Device::default().autodiff();
    let config = config().with_dropout(0.0);
    let dense = perturb(apply_lora(tiny(&device), &config).unwrap(), true, &device);
    let fast = dense.clone().fast();
    let x = x(&device);
    let (out_dense, out_fast) = (dense.forward(x.clone()), fast.forward(x));
    assert_close(
        "output",
        out_fast.clone().inner().into_data(),
        out_dense.clone().inner().into_data(),
    );
    let (g_dense, g_fast) = (out_dense.sum().backward(), out_fast.sum().backward());
    for (d, f) in [
        (&dense.attn.query, &fast.attn.query),
        (&dense.attn.value, &fast.attn.value),
    ] {
        let (ad, af) = (
            d.weight.reparameterization::<Adapter>().unwrap(),
            f.adapter().unwrap(),
        );
        for (what, pd, pf) in [
            ("dA", ad.lora_a(), af.lora_a()),
            ("dB", ad.lora_b(), af.lora_b()),
        ] {
            let gd = pd.val().grad(&g_dense).unwrap().into_data();
            let gf = pf.val().grad(&g_fast).unwrap().into_data();
            assert_close(what, gf, gd);
        }
    }
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
    assert_eq!(model.num_params(), report.total);
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
fn matching_no_module_is_a_listed_error() {
    let config = config().with_target_modules(vec!["qkv".into()]);
    let err = apply_lora(tiny(&Device::default()), &config).unwrap_err();
    let Error::UnknownTarget { name, available } = &err else {
        panic!("{err}")
    };
    assert_eq!(name, "qkv");
    assert_eq!(available, &["attn.query", "attn.key", "attn.value", "head"]);
    assert!(
        err.to_string()
            .contains("attn.query, attn.key, attn.value, head")
    );
    let regex = LoraConfig::new().with_target_regex(Some("nothing.*".into()));
    let err = apply_lora(tiny(&Device::default()), &regex).unwrap_err();
    assert!(matches!(err, Error::UnknownTarget { ref name, .. } if name == "nothing.*"));
}

#[test]
fn unknown_module_to_save_is_an_error() {
    let config = config().with_modules_to_save(vec!["classifier".into()]);
    let err = apply_lora(tiny(&Device::default()), &config).unwrap_err();
    assert!(matches!(err, Error::UnknownModuleToSave { ref name } if name == "classifier"));
}

#[test]
fn targets_by_regex_all_linear_and_exclusion() {
    let device = Device::default();
    let regex = config().with_target_regex(Some(r"attn\.(key|value)".into()));
    let model = apply_lora(tiny(&device), &regex).unwrap();
    assert_eq!(adapted_paths(&model), ["attn.key", "attn.value"]);
    // all-linear skips the modules to save (the head).
    let all = config().with_target_modules(vec!["all-linear".into()]);
    let model = apply_lora(tiny(&device), &all).unwrap();
    assert_eq!(
        adapted_paths(&model),
        ["attn.query", "attn.key", "attn.value"]
    );
    let all = all.with_exclude_modules(vec!["key".into()]);
    let model = apply_lora(tiny(&device), &all).unwrap();
    assert_eq!(adapted_paths(&model), ["attn.query", "attn.value"]);
}

#[test]
fn adapting_twice_is_an_error() {
    let model = apply_lora(tiny(&Device::default()), &config()).unwrap();
    let err = apply_lora(model, &config()).unwrap_err();
    assert!(matches!(err, Error::AlreadyAdapted { ref path } if path == "attn.query"));
}

#[test]
fn merge_unmerge_and_disable_on_a_stock_model() {
    let device = Device::default();
    let base = tiny(&device);
    let x = x(&device);
    let base_out = base.forward(x.clone());
    let model = perturb(apply_lora(base, &config()).unwrap(), true, &device);
    let adapted = model.forward(x.clone());
    assert!(max_abs_diff(adapted.clone(), base_out.clone()) > 1e-3);

    let merged = merge_lora(model.clone()).unwrap();
    assert!(adapters(&merged).is_empty(), "no adapters left");
    assert!(max_abs_diff(merged.forward(x.clone()), adapted.clone()) < 1e-5);

    let folded = merge_adapters(model.clone()).unwrap();
    assert!(adapters(&folded).iter().all(|(_, a)| a.is_merged()));
    assert!(max_abs_diff(folded.forward(x.clone()), adapted.clone()) < 1e-5);
    let unfolded = unmerge_adapters(folded);
    assert!(max_abs_diff(unfolded.forward(x.clone()), adapted.clone()) < 1e-5);
    let query = &unfolded.attn.query.weight;
    assert!(max_abs_diff(query.base(), model.attn.query.weight.base()) < 1e-6);

    let disabled = set_adapters_enabled(model, false);
    assert_eq!(
        disabled.forward(x.clone()).into_data(),
        base_out.into_data()
    );
    let enabled = set_adapters_enabled(disabled, true);
    assert!(max_abs_diff(enabled.forward(x), adapted) < 1e-6);
}

#[test]
fn f16_base_gets_f32_factors_by_default() {
    // PEFT's autocast_adapter_dtype=True: f32 factors on a half-precision base, the branch
    // computed in f32 and answered in the input's dtype. One base, and factors set by a
    // formula: the tests of this binary share the device's generator.
    let device = Device::default().autodiff();
    let full = tiny(&device);
    let half = full.clone().map(&mut ToF16);
    let model = apply_lora(half.clone(), &config()).unwrap();
    for (site, adapter) in adapters(&model) {
        assert_eq!(adapter.lora_a().val().dtype(), DType::F32, "{}", site.path);
        assert_eq!(adapter.lora_b().val().dtype(), DType::F32, "{}", site.path);
    }
    assert_eq!(model.attn.query.weight.base().dtype(), DType::F16);
    let x = x(&device).cast(DType::F16);
    let base_out = half.forward(x.clone());
    for out in [
        model.clone().fast().forward(x.clone()),
        model.forward(x.clone()),
    ] {
        assert_eq!(out.dtype(), DType::F16);
        // B = 0: the adapted model starts out computing its base exactly.
        assert_eq!(out.into_data(), base_out.clone().into_data());
    }

    // Gradients reach the f32 factors through the f16 activations, in f32, on both paths.
    let model = model.map(&mut Formula(Vec::new()));
    for out in [
        model.clone().fast().forward(x.clone()),
        model.clone().forward(x.clone()),
    ] {
        let grads = out.cast(DType::F32).powf_scalar(2.0).sum().backward();
        let (_, adapter) = &adapters(&model)[0];
        let grad = adapter.lora_a().grad(&grads).expect("A gets a gradient");
        assert_eq!(grad.dtype(), DType::F32);
        assert!(grad.abs().sum().into_scalar::<f32>() > 0.0);
    }

    // The f32 branch on an f16 base agrees with an all-f32 model to f16's precision.
    let f32_model = apply_lora(full, &config())
        .unwrap()
        .map(&mut Formula(Vec::new()));
    let want = f32_model.forward(x.clone().cast(DType::F32));
    let got = model.forward(x.clone()).cast(DType::F32);
    let diff = max_abs_diff(got, want);
    assert!(diff < 2e-2, "f16 base vs f32: {diff}");

    // AdapterDtype::Base keeps the base's precision, as PEFT's autocast_adapter_dtype=False.
    let base_dtype = config().with_adapter_dtype(AdapterDtype::Base);
    let model = apply_lora(half, &base_dtype).unwrap();
    for (site, adapter) in adapters(&model) {
        assert_eq!(adapter.lora_a().val().dtype(), DType::F16, "{}", site.path);
    }
    assert_eq!(model.clone().fast().forward(x.clone()).dtype(), DType::F16);
    assert_eq!(model.forward(x).dtype(), DType::F16);
}

/// Sets every `lora_a` and `lora_b` to values from a formula, in the factor's dtype.
struct Formula(Vec<String>);

impl burn::module::ModuleMapper for Formula {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.0.pop();
    }
    fn map_float<const N: usize>(
        &mut self,
        param: burn::module::Param<Tensor<N>>,
    ) -> burn::module::Param<Tensor<N>> {
        let name = self.0.last().map(String::as_str).unwrap_or("");
        if name != "lora_a" && name != "lora_b" {
            return param;
        }
        param.map(|t| {
            let (grad, dtype, shape) = (t.is_require_grad(), t.dtype(), t.shape());
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|k| ((k * 37 % 17) as f32 / 17.0 - 0.5) * 0.4)
                .collect();
            let data = burn::tensor::TensorData::new(values, shape);
            Tensor::<N>::from_data(data, &t.device())
                .cast(dtype)
                .set_require_grad(grad)
        })
    }
}

/// Casts every float parameter to f16.
struct ToF16;

impl burn::module::ModuleMapper for ToF16 {
    fn map_float<const N: usize>(
        &mut self,
        param: burn::module::Param<Tensor<N>>,
    ) -> burn::module::Param<Tensor<N>> {
        param.map(|t| t.cast(DType::F16))
    }
}
