//! PEFT's features beyond LoRA on linears (issue "The library at its edges", item 6), each
//! against golden files PEFT 0.21 wrote (`scripts/peft_edges_golden.py`): LoRA on
//! `Embedding`, `Conv1d` and `Conv2d`; `bias = "all"` and `"lora_only"`; `fan_in_fan_out`
//! adapters of GPT-2's `Conv1D` layers; LoRA+.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, PaddingConfig1d, PaddingConfig2d};
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, TensorData};
use burn_lora::{
    Error, LoraBias, LoraConfig, adapters, add_adapter, apply_lora, load_adapter, loraplus_groups,
    loraplus_lr_scheduler, merge_adapters, merge_lora, param_report, save_adapter,
    unmerge_adapters,
};
use safetensors::SafeTensors;

use crate::common::{Tiny, assert_close, read, scratch, tensor};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft_edges")
        .join(case)
}

/// `scripts/peft_edges_golden.py`'s `Layers`: an embedding and two convolutions.
#[derive(Module, Debug)]
struct Layers {
    embed: Embedding,
    conv1: Conv1d,
    conv2: Conv2d,
}

impl Layers {
    /// The base PEFT adapted, from its state dict (Burn stores these layers as PyTorch does).
    fn from_torch(file: &Path, device: &Device) -> Self {
        let bytes = fs::read(file).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut embed = EmbeddingConfig::new(20, 8).init(device);
        embed.weight = Param::from_tensor(tensor(&st, "embed.weight", device));
        let mut conv1 = Conv1dConfig::new(4, 6, 3)
            .with_padding(PaddingConfig1d::Explicit(1, 1))
            .init(device);
        conv1.weight = Param::from_tensor(tensor(&st, "conv1.weight", device));
        conv1.bias = Some(Param::from_tensor(tensor(&st, "conv1.bias", device)));
        let mut conv2 = Conv2dConfig::new([3, 5], [3, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        conv2.weight = Param::from_tensor(tensor(&st, "conv2.weight", device));
        conv2.bias = Some(Param::from_tensor(tensor(&st, "conv2.bias", device)));
        Layers {
            embed,
            conv1,
            conv2,
        }
    }

    /// Each layer's output on the golden inputs, named as the golden file names them.
    fn outputs(&self, io: &SafeTensors, device: &Device) -> Vec<(&'static str, TensorData)> {
        let ids = tensor::<2>(io, "ids", device).int();
        vec![
            ("embed", self.embed.forward(ids).into_data()),
            (
                "conv1",
                self.conv1.forward(tensor(io, "x1", device)).into_data(),
            ),
            (
                "conv2",
                self.conv2.forward(tensor(io, "x2", device)).into_data(),
            ),
        ]
    }
}

/// Every tensor of a safetensors file, as f32 data by key.
fn file_tensors(path: &Path) -> BTreeMap<String, TensorData> {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .into_iter()
        .map(|k| (k.to_string(), read(&st, k)))
        .collect()
}

/// Asserts that the adapter files in `ours` hold PEFT's keys, shapes and values in `peft`.
#[track_caller]
fn assert_same_file(ours: &Path, peft: &Path) {
    let file = "adapter_model.safetensors";
    let (ours, peft) = (
        file_tensors(&ours.join(file)),
        file_tensors(&peft.join(file)),
    );
    let keys = |m: &BTreeMap<String, TensorData>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&peft));
    for (key, want) in peft {
        assert_close(&key, ours[&key].clone(), want);
    }
}

#[test]
fn peft_adapters_on_an_embedding_and_convolutions_load_reproduce_save_and_merge() {
    let device = Device::default();
    let dir = golden("layers");
    let bytes = fs::read(dir.join("io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let base = Layers::from_torch(&dir.join("base.safetensors"), &device);
    let model = load_adapter(base, dir.join("adapter")).unwrap();
    // PEFT's outputs with the adapter: lora_embedding_A/B on the embedding, a kernel-sized
    // lora_A and a 1×1 lora_B on each convolution.
    for (name, got) in model.outputs(&io, &device) {
        assert_close(name, got, read(&io, name));
    }
    // Saved back, the file is PEFT's, key for key and value for value.
    let out = scratch("layers", "saved");
    save_adapter(&model, &out).unwrap();
    assert_same_file(&out, &dir.join("adapter"));
    // Merged in place and unmerged, the layers compute the same.
    let in_place = merge_adapters(model.clone()).unwrap();
    for (name, got) in in_place.outputs(&io, &device) {
        assert_close(&format!("merged in place {name}"), got, read(&io, name));
    }
    let unmerged = unmerge_adapters(in_place);
    for (name, got) in unmerged.outputs(&io, &device) {
        assert_close(&format!("unmerged {name}"), got, read(&io, name));
    }
    // A second adapter on the same layers gets factors of each layer's own shape.
    let two = add_adapter(
        model.clone(),
        "two",
        &LoraConfig::new().with_rank(3).with_target_modules(vec![
            "embed".into(),
            "conv1".into(),
            "conv2".into(),
        ]),
    )
    .unwrap();
    for (site, adapter) in adapters(&two) {
        let (first, second) = (adapter.get("default").unwrap(), adapter.get("two").unwrap());
        let rows = first.lora_a().val().dims()[0];
        let cols = first.lora_b().val().dims()[1];
        assert_eq!(second.lora_a().val().dims(), [rows, 3], "{}", site.path);
        assert_eq!(second.lora_b().val().dims(), [3, cols], "{}", site.path);
    }
    // Merged into the weights, the layers compute the same.
    let merged = merge_lora(model).unwrap();
    assert!(adapters(&merged).is_empty());
    for (name, got) in merged.outputs(&io, &device) {
        assert_close(&format!("merged {name}"), got, read(&io, name));
    }
}

#[test]
fn fresh_adapters_on_an_embedding_and_convolutions_start_as_peft_does() {
    let device = Device::default();
    let dir = golden("layers");
    let bytes = fs::read(dir.join("io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let base = Layers::from_torch(&dir.join("base.safetensors"), &device);
    let targets = vec!["embed".into(), "conv1".into(), "conv2".into()];
    let config = LoraConfig::new()
        .with_rank(2)
        .with_alpha(6.0)
        .with_target_modules(targets);
    let model = apply_lora(base.clone(), &config).unwrap();
    // r · (rows + cols) per layer: 2 · (20 + 8), 2 · (6 + 4 · 3), 2 · (5 + 3 · 3 · 2).
    assert_eq!(param_report(&model).trainable, 56 + 36 + 46);
    // The factor PEFT starts at zero is zero here too (the embedding's A; a convolution's
    // 1×1 lora_B, our A) and the other is not, so the model starts as its base.
    let out = scratch("layers", "fresh");
    save_adapter(&model, &out).unwrap();
    let saved = file_tensors(&out.join("adapter_model.safetensors"));
    assert_eq!(saved.len(), 6);
    for (key, data) in saved {
        let short = key.trim_start_matches("base_model.model.");
        let zero = data.iter::<f32>().all(|v| v == 0.0);
        let peft_zero = read(&io, &format!("zero.{short}")).iter::<f32>().next() == Some(1.0);
        assert_eq!(
            zero, peft_zero,
            "{key} zero: ours {zero}, PEFT's {peft_zero}"
        );
    }
    let before = base.outputs(&io, &device);
    for ((name, got), (_, want)) in model.outputs(&io, &device).into_iter().zip(before) {
        assert_close(name, got, want);
    }
    // `all-linear` selects linears only, as in PEFT: this model has none.
    let all = config
        .clone()
        .with_target_modules(vec!["all-linear".into()]);
    let err = apply_lora(base.clone(), &all).unwrap_err();
    assert!(matches!(err, Error::UnknownTarget { .. }), "{err}");
    // DoRA is offered on linears only: an error naming the layer.
    let dora = config.with_use_dora(true);
    let err = apply_lora(base, &dora).unwrap_err();
    assert!(err.to_string().contains("embedding `embed`"), "{err}");
}

#[test]
fn bias_all_and_lora_only_train_load_and_save_the_biases_peft_does() {
    let device = Device::default();
    for (case, bias, trained_biases) in [
        // Every bias: 3 · 8 + 2; the adapted query's and value's: 2 · 8.
        ("bias_all", LoraBias::All, 26),
        ("bias_lora_only", LoraBias::LoraOnly, 16),
    ] {
        let dir = golden(case);
        let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
        let bytes = fs::read(dir.join("io.safetensors")).unwrap();
        let io = SafeTensors::deserialize(&bytes).unwrap();
        let model = load_adapter(base.clone(), dir.join("adapter")).unwrap();
        let x = tensor::<2>(&io, "x", &device);
        assert_close(case, model.forward(x).into_data(), read(&io, "out"));
        let out = scratch("layers", case);
        save_adapter(&model, &out).unwrap();
        assert_same_file(&out, &dir.join("adapter"));
        let json = fs::read_to_string(out.join("adapter_config.json")).unwrap();
        assert!(
            json.contains(&format!("\"bias\": \"{}\"", bias.peft_name())),
            "{json}"
        );
        // Beside another adapter it is refused: the adapters would share the biases.
        let other = apply_lora(base.clone(), &LoraConfig::new().with_rank(2)).unwrap();
        let err = load_adapter(other, dir.join("adapter")).unwrap_err();
        assert!(matches!(err, Error::NotOffered(_)), "{err}");
        assert!(err.to_string().contains("trains biases"), "{err}");
        // A fresh adapter with this setting trains its factors and these biases.
        let config = LoraConfig::new().with_rank(2).with_bias(bias);
        let fresh = apply_lora(base, &config).unwrap();
        assert_eq!(
            param_report(&fresh).trainable,
            2 * 2 * (8 + 8) + trained_biases,
            "{case}"
        );
    }
}

#[test]
fn fan_in_fan_out_adapters_of_gpt2_conv1d_layers_load_onto_burn_linears() {
    // GPT-2's Conv1D stores [d_in, d_out] as every Burn linear does; PEFT's flag only says so.
    let device = Device::default();
    let dir = golden("fan_in");
    let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
    let bytes = fs::read(dir.join("io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let model = load_adapter(base, dir.join("adapter")).unwrap();
    let x = tensor::<2>(&io, "x", &device);
    assert_close("fan_in", model.forward(x).into_data(), read(&io, "out"));
}

#[test]
fn loraplus_steps_b_at_the_ratio_as_peft_create_loraplus_optimizer() {
    let device = Device::default().autodiff();
    let dir = golden("loraplus");
    let base = Tiny::from_torch(&dir.join("base.safetensors"), &device);
    let bytes = fs::read(dir.join("io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let model = load_adapter(base.clone(), dir.join("adapter_before")).unwrap();
    // The B group: the two B factors (the base's biases are frozen).
    let groups = loraplus_groups(&model);
    let b_ids: Vec<_> = adapters(&model)
        .iter()
        .map(|(_, a)| a.lora_b().id)
        .collect();
    assert_eq!(b_ids.len(), 2);
    assert!(b_ids.iter().all(|id| groups.b.matches(id, None)));
    assert!(
        adapters(&model)
            .iter()
            .all(|(_, a)| !groups.b.matches(&a.lora_a().id, None))
    );
    // One SGD step, lr 0.05, ratio 8, on loss = sum(out · w).
    let mut lr = loraplus_lr_scheduler(&model, 0.05, 8.0, 1e-6).unwrap();
    let mut optim: ModuleOptimizer = SgdConfig::new().init();
    let (x, w) = (
        tensor::<2>(&io, "x", &device),
        tensor::<2>(&io, "w", &device),
    );
    let loss = (model.forward(x) * w).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(lr.step(), model, grads);
    let after = load_adapter(base, dir.join("adapter_after")).unwrap();
    for ((site, ours), (_, peft)) in adapters(&model).into_iter().zip(adapters(&after)) {
        let path = &site.path;
        assert_close(
            &format!("{path} A"),
            ours.lora_a().val().into_data(),
            peft.lora_a().val().into_data(),
        );
        assert_close(
            &format!("{path} B"),
            ours.lora_b().val().into_data(),
            peft.lora_b().val().into_data(),
        );
    }
    // A ratio that is no positive number is an error naming PEFT's setting.
    let Err(err) = loraplus_lr_scheduler(&after, 0.05, 0.0, 1e-6) else {
        panic!("a ratio of 0 was taken");
    };
    assert!(err.to_string().contains("loraplus_lr_ratio"), "{err}");
}

#[test]
fn loraplus_puts_an_embeddings_factors_in_their_own_group() {
    let device = Device::default();
    let base = Layers::from_torch(&golden("layers").join("base.safetensors"), &device);
    let config = LoraConfig::new()
        .with_rank(2)
        .with_target_modules(vec!["embed".into(), "conv1".into()]);
    let model = apply_lora(base, &config).unwrap();
    let groups = loraplus_groups(&model);
    for (site, adapter) in adapters(&model) {
        let (a, b) = (&adapter.lora_a().id, &adapter.lora_b().id);
        match site.path.as_str() {
            "embed" => {
                assert!(groups.embedding.matches(a, None) && groups.embedding.matches(b, None))
            }
            _ => assert!(
                groups.b.matches(b, None)
                    && !groups.b.matches(a, None)
                    && !groups.embedding.matches(a, None)
            ),
        }
    }
}
