//! PEFT-format adapter files: round trips and every bad file.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};
use burn_lora::{
    CONFIG_FILE, Error, LoraConfig, WEIGHTS_FILE, apply_lora, load_adapter, param_report,
    save_adapter,
};

use crate::common::{Tiny, perturb, scratch};

const D: usize = 8;

fn config() -> LoraConfig {
    LoraConfig::new()
        .with_rank(2)
        .with_alpha(4.0)
        .with_modules_to_save(vec!["head".into()])
}

fn base(device: &Device) -> Tiny {
    device.seed(11);
    Tiny::new(D, 2, device)
}

/// `base` adapted, with non-zero factors and a changed head, as after training.
fn trained(base: &Tiny, device: &Device) -> Tiny {
    let mut model = perturb(apply_lora(base.clone(), &config()).unwrap(), false, device);
    let head = Tensor::random([D, 2], Distribution::Normal(0.0, 1.0), device);
    model.head.weight = Param::from_tensor(head);
    model
}

fn saved(name: &str, device: &Device) -> PathBuf {
    let dir = scratch("adapter_files", name);
    save_adapter(&trained(&base(device), device), &dir).unwrap();
    dir
}

fn x(device: &Device) -> Tensor<2> {
    Tensor::random([3, D], Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn adapter_round_trips_through_disk() {
    let device = Device::default();
    let base = base(&device);
    let trained = trained(&base, &device);
    let dir = scratch("adapter_files", "round_trip");
    save_adapter(&trained, &dir).unwrap();
    let loaded = load_adapter(base.clone(), &dir).unwrap();
    let x = x(&device);
    assert_eq!(
        loaded.forward(x.clone()).into_data(),
        trained.forward(x.clone()).into_data()
    );
    // The loaded factors and head are trainable, so training can continue.
    assert_eq!(
        param_report(&loaded).trainable,
        param_report(&trained).trainable
    );
    // Save then load on the factored build of the same base: the same outputs.
    let fast = load_adapter(base.fast(), &dir).unwrap();
    let diff = (fast.forward(x.clone()) - trained.forward(x)).abs().max();
    assert!(diff.into_scalar::<f32>() < 1e-5);
}

#[test]
fn saved_file_uses_peft_keys_and_pytorch_layout() {
    let device = Device::default();
    let dir = saved("layout", &device);
    let bytes = fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<_> = st.names().into_iter().map(String::from).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "base_model.model.attn.query.lora_A.weight",
            "base_model.model.attn.query.lora_B.weight",
            "base_model.model.attn.value.lora_A.weight",
            "base_model.model.attn.value.lora_B.weight",
            "base_model.model.head.bias",
            "base_model.model.head.weight",
        ]
    );
    let shape = |key: &str| st.tensor(key).unwrap().shape().to_vec();
    assert_eq!(shape("base_model.model.attn.query.lora_A.weight"), [2, D]);
    assert_eq!(shape("base_model.model.attn.query.lora_B.weight"), [D, 2]);
    assert_eq!(shape("base_model.model.head.weight"), [2, D]);
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 2);
    assert_eq!(json["lora_alpha"], 4.0);
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["query", "value"])
    );
    assert_eq!(json["modules_to_save"], serde_json::json!(["head"]));
}

/// Loads `dir` into a fresh base, checking the base itself is left untouched.
fn load_err(dir: &Path) -> Error {
    let device = Device::default();
    let model = base(&device);
    let x = x(&device);
    let before = model.forward(x.clone()).into_data();
    let err = load_adapter(model.clone(), dir).expect_err("a bad adapter must not load");
    assert_eq!(model.forward(x).into_data(), before, "model was modified");
    err
}

#[test]
fn missing_directory_is_an_io_error_naming_the_file() {
    let err = load_err(Path::new("/nonexistent/adapter"));
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/adapter/adapter_config.json"),
        "{err}"
    );
}

#[test]
fn corrupt_safetensors_is_an_error() {
    let dir = saved("corrupt", &Device::default());
    fs::write(dir.join(WEIGHTS_FILE), b"not a safetensors file at all").unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains(WEIGHTS_FILE), "{err}");
}

#[test]
fn truncated_safetensors_is_an_error() {
    let dir = saved("truncated", &Device::default());
    let path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(load_err(&dir), Error::Safetensors { .. }));
}

/// Rewrites the weights file keeping only the tensors `keep` accepts, reshaped by `reshape`.
fn rewrite(dir: &Path, keep: impl Fn(&str) -> bool, extra: Option<(&str, Vec<usize>)>) {
    let path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(key, _)| keep(key))
        .map(|(key, view)| (key, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    if let Some((key, shape)) = extra {
        let n: usize = shape.iter().product();
        owned.push((key.to_string(), shape, vec![0u8; 4 * n]));
    }
    let views: Vec<_> = owned
        .iter()
        .map(|(key, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data);
            (key.clone(), view.unwrap())
        })
        .collect();
    fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn missing_key_is_named() {
    let dir = saved("missing_key", &Device::default());
    rewrite(&dir, |key| !key.contains("value.lora_B"), None);
    let err = load_err(&dir);
    assert!(
        matches!(err, Error::MissingKey { ref key, .. } if key == "base_model.model.attn.value.lora_B.weight"),
        "{err}"
    );
}

#[test]
fn rank_different_from_config_is_a_shape_error() {
    let dir = saved("rank_mismatch", &Device::default());
    rewrite(
        &dir,
        |key| !key.contains("query.lora_A"),
        Some(("base_model.model.attn.query.lora_A.weight", vec![3, D])),
    );
    let err = load_err(&dir);
    let Error::AdapterShape {
        key,
        expected,
        found,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(key, "base_model.model.attn.query.lora_A.weight");
    assert_eq!(
        (expected.as_slice(), found.as_slice()),
        (&[2, D][..], &[3, D][..])
    );
}

#[test]
fn adapter_for_another_base_is_rejected() {
    let dir = saved("other_base", &Device::default());
    rewrite(
        &dir,
        |_| true,
        Some(("base_model.model.encoder.dense.lora_A.weight", vec![2, D])),
    );
    let err = load_err(&dir);
    assert!(matches!(err, Error::UnexpectedKey { .. }), "{err}");

    let dir = saved("other_targets", &Device::default());
    let config = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    fs::write(
        dir.join(CONFIG_FILE),
        config.replace("\"query\"", "\"q_proj\""),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(err, Error::UnknownTarget { ref name, .. } if name == "q_proj"),
        "{err}"
    );
}

#[test]
fn other_peft_type_is_rejected() {
    let dir = saved("peft_type", &Device::default());
    let config = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    fs::write(dir.join(CONFIG_FILE), config.replace("\"LORA\"", "\"IA3\"")).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(err, Error::WrongPeftType { ref found, .. } if found == "IA3"),
        "{err}"
    );
}

#[test]
fn malformed_config_json_names_the_file() {
    let dir = saved("bad_json", &Device::default());
    fs::write(dir.join(CONFIG_FILE), "{\"peft_type\": \"LORA\", \"r\": 2}").unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, Error::Json { .. }), "{err}");
    assert!(err.to_string().contains("lora_alpha"), "{err}");
}

#[test]
fn invalid_values_in_config_are_rejected() {
    let dir = saved("zero_rank", &Device::default());
    let config = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    fs::write(
        dir.join(CONFIG_FILE),
        config.replace("\"r\": 2", "\"r\": 0"),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(err, Error::AdapterConfig { ref source, .. } if matches!(**source, Error::ZeroRank)),
        "{err}"
    );
    assert!(err.to_string().contains("adapter_config.json: "), "{err}");
}

#[test]
fn non_finite_adapter_is_never_saved() {
    let device = Device::default();
    let mut model = trained(&base(&device), &device);
    model.head.bias = Some(Param::from_tensor(Tensor::from_floats(
        [f32::INFINITY, 0.0],
        &device,
    )));
    let dir = scratch("adapter_files", "non_finite");
    let err = save_adapter(&model, &dir).unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { ref layer } if layer.contains("head.bias")),
        "{err}"
    );
    assert!(!dir.join(WEIGHTS_FILE).exists());
}

#[test]
fn refused_peft_options_are_named() {
    // (`fan_in_fan_out: true` was refused here; it only describes GPT-2's layout and now
    // loads: tests/lora/layers.rs.)
    for (from, to, what) in [
        (
            "\"init_lora_weights\": true",
            "\"init_lora_weights\": \"pissa\"",
            "pissa",
        ),
        (
            "\"init_lora_weights\": true",
            "\"init_lora_weights\": \"olora\"",
            "olora",
        ),
        (
            "\"init_lora_weights\": true",
            "\"init_lora_weights\": \"loftq\"",
            "loftq",
        ),
        (
            "\"init_lora_weights\": true",
            "\"init_lora_weights\": \"eva\"",
            "eva",
        ),
        (
            "\"init_lora_weights\": true",
            "\"init_lora_weights\": \"corda\"",
            "corda",
        ),
    ] {
        let dir = saved(&format!("refused_{what}"), &Device::default());
        let config = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        assert!(config.contains(from), "{config}");
        fs::write(dir.join(CONFIG_FILE), config.replace(from, to)).unwrap();
        let err = load_err(&dir);
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
    // A bias setting PEFT does not have is an error naming the file and the field.
    let dir = saved("refused_bias", &Device::default());
    let config = fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    let config = config.replace("\"bias\": \"none\"", "\"bias\": \"sideways\"");
    fs::write(dir.join(CONFIG_FILE), config).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, Error::Json { .. }), "{err}");
    assert!(err.to_string().contains("bias must be"), "{err}");
    assert!(err.to_string().contains(CONFIG_FILE), "{err}");
}

#[test]
fn a_model_without_adapters_has_nothing_to_save() {
    let dir = scratch("adapter_files", "no_adapter");
    let err = save_adapter(&base(&Device::default()), &dir).unwrap_err();
    assert!(matches!(err, Error::NoAdapter), "{err}");
}

/// Casts every float parameter to `dtype`.
struct Cast(burn::tensor::DType);

impl burn::module::ModuleMapper for Cast {
    fn map_float<const N: usize>(&mut self, param: Param<Tensor<N>>) -> Param<Tensor<N>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

#[test]
fn adapter_files_keep_the_factors_dtype_and_load_as_f32_by_default() {
    use burn::module::Module;
    use burn::tensor::DType;
    use burn_lora::AdapterDtype;
    let device = Device::default();
    let base = base(&device);
    let half = base.clone().map(&mut Cast(DType::F16));
    let key = "base_model.model.attn.query.lora_B.weight";
    let file_dtype = |dir: &std::path::Path| {
        let bytes = fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor(key).unwrap().dtype()
    };
    // On an f16 base the factors are f32 by default (PEFT's autocast_adapter_dtype=True),
    // and the file stores them as they are.
    let trained = perturb(apply_lora(half.clone(), &config()).unwrap(), false, &device);
    let dir = scratch("adapter_files", "f16_base_f32_factors");
    save_adapter(&trained, &dir).unwrap();
    assert_eq!(file_dtype(&dir), safetensors::Dtype::F32);
    // With AdapterDtype::Base the factors are f16, and so is the file.
    let config_half = config().with_adapter_dtype(AdapterDtype::Base);
    let trained = perturb(
        apply_lora(half.clone(), &config_half).unwrap(),
        false,
        &device,
    );
    let dir = scratch("adapter_files", "f16");
    save_adapter(&trained, &dir).unwrap();
    assert_eq!(file_dtype(&dir), safetensors::Dtype::F16);
    // Loaded, onto either base, the factors are f32 (PEFT autocasts a loaded adapter too),
    // and the outputs agree with the f16 model's.
    let x = x(&device);
    let want = trained.forward(x.clone().cast(DType::F16)).cast(DType::F32);
    let onto_half = load_adapter(half, &dir).unwrap();
    let adapter = burn_lora::adapters(&onto_half).remove(0).1;
    assert_eq!(adapter.lora_b().val().dtype(), DType::F32);
    let got = onto_half
        .forward(x.clone().cast(DType::F16))
        .cast(DType::F32);
    let diff = (got - want.clone()).abs().max().into_scalar::<f32>();
    assert!(
        diff < 2e-2,
        "f32 factors on the f16 base against f16 factors: {diff}"
    );
    let onto_full = load_adapter(base, &dir).unwrap();
    let adapter = burn_lora::adapters(&onto_full).remove(0).1;
    assert_eq!(adapter.lora_b().val().dtype(), DType::F32);
    let got = onto_full.forward(x);
    let diff = (got - want).abs().max().into_scalar::<f32>();
    assert!(diff < 2e-2, "f16 against f32 outputs: {diff}");
}
