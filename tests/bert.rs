//! Hugging Face BERT checkpoints: our encoder reproduces transformers' hidden states, a PEFT
//! adapter for `BertForSequenceClassification` reproduces PEFT's logits, and broken
//! checkpoints give typed errors. Golden files: `scripts/hf_golden.py write`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn_lora::{adapters, load_adapter_with, save_adapter_with};
use burn_lora_demo::Error;
use burn_lora_demo::model::bert::{Bert, BertClassifier, BertConfig, BertHead};
use burn_lora_demo::train::Classifier;
use burn_lora_demo::train::FinetuneMode;
use common::{assert_close_within, read, scratch};

/// transformers' float32 results are matched to 1e-4.
fn assert_close(what: &str, got: TensorData, want: TensorData) {
    assert_close_within(what, got, want, 1e-4);
}
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny")
}

struct Golden {
    ids: Vec<i64>,
    mask: Vec<i64>,
    shape: [usize; 2],
    hidden: TensorData,
    logits: TensorData,
}

fn golden() -> Golden {
    let bytes = fs::read(fixture().join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |key: &str| {
        let view = st.tensor(key).unwrap();
        let values: Vec<i64> = view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (values, [view.shape()[0], view.shape()[1]])
    };
    let (ids, shape) = ints("input_ids");
    let (mask, _) = ints("attention_mask");
    Golden {
        ids,
        mask,
        shape,
        hidden: read(&st, "last_hidden_state"),
        logits: read(&st, "peft_logits"),
    }
}

fn inputs(g: &Golden, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let tokens = Tensor::from_data(TensorData::new(g.ids.clone(), g.shape), device);
    let padding: Vec<bool> = g.mask.iter().map(|&m| m == 0).collect();
    (
        tokens,
        Tensor::from_data(TensorData::new(padding, g.shape), device),
    )
}

#[test]
fn hidden_states_match_transformers() {
    let device = Device::default();
    let (config, bert, notes) = Bert::load(&fixture(), &device).unwrap();
    assert_eq!(config.hidden_size, 32);
    assert!(notes.is_empty(), "{notes:?}");
    let g = golden();
    let (tokens, padding) = inputs(&g, &device);
    let hidden = bert.forward(tokens, padding);
    assert_eq!(hidden.dims(), [3, 7, 32]);
    assert_close("last_hidden_state", hidden.into_data(), g.hidden);
}

#[test]
fn tokenizer_json_gives_the_python_ids() {
    let tokenizer = tokenizers::Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    let g = golden();
    for (row, text) in ["a gem of a film", "dull and far too long", "good"]
        .iter()
        .enumerate()
    {
        let ids: Vec<i64> = tokenizer
            .encode(*text, true)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&i| i64::from(i))
            .collect();
        let expected: Vec<i64> = g.ids[row * g.shape[1]..(row + 1) * g.shape[1]]
            .iter()
            .zip(&g.mask[row * g.shape[1]..])
            .filter(|(_, m)| **m == 1)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(ids, expected, "{text}");
    }
}

fn classifier(device: &Device) -> BertClassifier {
    let (config, bert, _) = Bert::load(&fixture(), device).unwrap();
    BertClassifier::new(bert, &config, 2, BertHead::Pooler, device)
}

#[test]
fn peft_layers_to_transform_adapts_only_those_layers_and_gives_peft_logits() {
    // PEFT: target_modules ["query", "value"], layers_to_transform [1], layers_pattern
    // "layer" (scripts/hf_golden.py write-layers).
    let device = Device::default();
    let names = BertClassifier::peft_options();
    let dir = fixture().join("peft_adapter_layer1");
    let model = load_adapter_with(classifier(&device), &dir, &names).unwrap();
    let adapted: Vec<String> = burn_lora::adapters(&model)
        .into_iter()
        .map(|(site, _)| site.path)
        .collect();
    assert_eq!(
        adapted,
        [
            "bert.encoder.layer.1.attention.self_.query",
            "bert.encoder.layer.1.attention.self_.value"
        ]
    );
    let g = golden();
    let (tokens, padding) = inputs(&g, &device);
    let bytes = fs::read(fixture().join("golden_layer1.safetensors")).unwrap();
    let want = common::read(
        &safetensors::SafeTensors::deserialize(&bytes).unwrap(),
        "peft_logits",
    );
    assert_close(
        "peft logits",
        model.forward(tokens, padding).into_data(),
        want,
    );
}

#[test]
fn peft_seq_cls_adapter_gives_peft_logits_and_round_trips() {
    let device = Device::default();
    let names = BertClassifier::peft_options();
    let model =
        load_adapter_with(classifier(&device), fixture().join("peft_adapter"), &names).unwrap();
    let g = golden();
    let (tokens, padding) = inputs(&g, &device);
    let logits = model.forward(tokens.clone(), padding.clone());
    assert_close("peft logits", logits.clone().into_data(), g.logits.clone());

    // Saved again by us, the adapter loads back to the same logits; the exported directory
    // (with our logits beside it) is what `scripts/hf_golden.py check` feeds to PEFT.
    let config = burn_lora::read_adapter_config(fixture().join("peft_adapter")).unwrap();
    assert_eq!(config.rank, 4);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bert-export");
    save_adapter_with(&model, &dir, &names).unwrap();
    let saved = burn_lora::read_adapter_config(&dir).unwrap();
    assert_eq!(saved.target_modules, ["query", "value"]);
    assert_eq!(saved.modules_to_save, ["classifier"]);
    let again = load_adapter_with(classifier(&device), &dir, &names).unwrap();
    let logits_again = again.forward(tokens, padding);
    assert_close("reloaded", logits_again.into_data(), g.logits);
    let values: Vec<f32> = logits.into_data().try_to_vec().unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(safetensors::Dtype::F32, vec![3, 2], &bytes).unwrap();
    let file = safetensors::serialize([("logits", view)], None).unwrap();
    fs::write(dir.join("burn_logits.safetensors"), file).unwrap();
}

/// A copy of the tiny checkpoint, with `edit` applied to its tensors and `config` to its
/// config.json.
fn edited(
    name: &str,
    keep: impl Fn(&str) -> bool,
    config: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    let dir = scratch("bert", name);
    let bytes = fs::read(fixture().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> =
        st.tensors().into_iter().filter(|(k, _)| keep(k)).collect();
    fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    config(&mut json);
    fs::write(dir.join("config.json"), json.to_string()).unwrap();
    dir
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = edited(
        "missing",
        |k| k != "encoder.layer.1.intermediate.dense.weight",
        |_| {},
    );
    let err = Bert::load(&dir, &Device::default()).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("missing tensor") && message.contains("layer.1.intermediate.dense"),
        "{message}"
    );
}

#[test]
fn half_a_pooler_is_a_missing_tensor() {
    let dir = edited("half_pooler", |k| k != "pooler.dense.bias", |_| {});
    let message = Bert::load(&dir, &Device::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("missing tensor `pooler.dense.bias`"),
        "{message}"
    );
}

#[test]
fn a_shape_that_does_not_fit_the_config_is_named() {
    let dir = edited("shape", |_| true, |c| c["intermediate_size"] = 48.into());
    let message = Bert::load(&dir, &Device::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("intermediate.dense") && message.contains("shape"),
        "{message}"
    );
}

#[test]
fn an_unknown_architecture_is_a_typed_error() {
    let dir = edited("arch", |_| true, |c| c["model_type"] = "gpt2".into());
    let err = Bert::load(&dir, &Device::default()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { ref found, .. } if found.contains("gpt2")),
        "{err}"
    );
    let dir = edited(
        "arch2",
        |_| true,
        |c| c["architectures"] = serde_json::json!(["RobertaModel"]),
    );
    let err = Bert::load(&dir, &Device::default()).unwrap_err();
    assert!(err.to_string().contains("RobertaModel"), "{err}");
    let err = BertConfig::parse(b"{\"vocab_size\": 5}", Path::new("c.json")).unwrap_err();
    assert!(
        err.to_string().starts_with("c.json: missing field"),
        "{err}"
    );
}

#[test]
fn an_unexpected_tensor_is_named_and_prediction_heads_are_ignored() {
    let dir = edited("unexpected", |_| true, |_| {});
    // A stray tensor: rewrite with an extra key.
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = st.tensors();
    let extra = [0u8; 16];
    tensors.push((
        "encoder.layer.0.adapter.weight".into(),
        TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    tensors.push((
        "cls.predictions.bias".into(),
        TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    let file = safetensors::serialize(tensors, None).unwrap();
    fs::write(dir.join("model.safetensors"), &file).unwrap();
    let message = Bert::load(&dir, &Device::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("encoder.layer.0.adapter.weight"),
        "{message}"
    );
}

#[test]
fn a_checkpoint_without_pooler_says_so_and_keys_may_carry_the_bert_prefix() {
    let dir = edited("no_pooler", |k| !k.starts_with("pooler."), |_| {});
    let device = Device::default();
    let (_, bert, notes) = Bert::load(&dir, &device).unwrap();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("no pooler weights"), "{notes:?}");
    // The encoder itself still matches transformers.
    let g = golden();
    let (tokens, padding) = inputs(&g, &device);
    assert_close(
        "no-pooler hidden",
        bert.forward(tokens, padding).into_data(),
        g.hidden.clone(),
    );

    // The same weights under `bert.` (as a task model saves them) load the same.
    let dir = scratch("bert", "prefixed");
    let bytes = fs::read(fixture().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v))
        .collect();
    write_with_fixture_config(&dir, renamed);
    let (_, bert, notes) = Bert::load(&dir, &device).unwrap();
    assert!(notes.is_empty());
    let (tokens, padding) = inputs(&g, &device);
    assert_close(
        "prefixed hidden",
        bert.forward(tokens, padding).into_data(),
        golden().hidden,
    );
}

#[test]
fn hf_tokenizer_ignores_the_files_padding_and_truncation() {
    use burn_lora_demo::tokenizer::{HfTokenizer, TextEncoder};
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture().join("tokenizer.json")).unwrap())
            .unwrap();
    // As sentence-transformers ships it: pad every text to 128, truncate at 128.
    json["padding"] = serde_json::json!({"strategy": {"Fixed": 128}, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"});
    json["truncation"] = serde_json::json!({"max_length": 4, "strategy": "LongestFirst",
        "stride": 0, "direction": "Right"});
    let dir = scratch("bert", "padded_tokenizer");
    fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let tokenizer = HfTokenizer::load(dir.join("tokenizer.json"), "[PAD]").unwrap();
    assert_eq!(tokenizer.padding_id(), 0);
    // "[CLS] dull and far too long [SEP]": 7 ids, no padding, no truncation at 4.
    let (ids, truncated) = tokenizer
        .encode_for_classifier("dull and far too long", 64)
        .unwrap();
    assert_eq!((ids.len(), truncated), (7, false));
    // Our own truncation keeps [SEP] last and says so.
    let (short, truncated) = tokenizer
        .encode_for_classifier("dull and far too long", 4)
        .unwrap();
    assert!(truncated);
    assert_eq!(short, [ids[0], ids[1], ids[2], ids[6]]);
}

/// Writes `tensors` as `dir/model.safetensors` beside a copy of the tiny fixture's config.
fn write_with_fixture_config(dir: &Path, tensors: Vec<(String, TensorView)>) {
    let file = safetensors::serialize(tensors, None).unwrap();
    fs::write(dir.join("model.safetensors"), file).unwrap();
    fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
}

/// The tiny checkpoint with every float tensor stored as float16, as `fixtures/minilm` is.
fn float16_copy() -> PathBuf {
    let dir = scratch("bert", "float16");
    let bytes = fs::read(fixture().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let converted: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| match view.dtype() {
            safetensors::Dtype::F32 => {
                let halves: Vec<u8> = view
                    .data()
                    .chunks_exact(4)
                    .flat_map(|b| {
                        let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        half::f16::from_f32(x).to_le_bytes()
                    })
                    .collect();
                (name, view.shape().to_vec(), safetensors::Dtype::F16, halves)
            }
            dtype => (name, view.shape().to_vec(), dtype, view.data().to_vec()),
        })
        .collect();
    let views: Vec<(String, TensorView)> = converted
        .iter()
        .map(|(name, shape, dtype, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    write_with_fixture_config(&dir, views);
    dir
}

#[test]
fn a_float16_checkpoint_computes_in_float32_and_every_weight_trains() {
    let dir = float16_copy();
    let device = Device::default();
    let (_, bert, _) = Bert::load(&dir, &device).unwrap();
    let word = bert.embeddings.word_embeddings.weight.val();
    assert_eq!(word.dtype(), burn::tensor::DType::F32);
    // float16 keeps about three significant digits.
    let g = golden();
    let (tokens, padding) = inputs(&g, &device);
    assert_close_within(
        "float16 hidden states",
        bert.forward(tokens, padding).into_data(),
        g.hidden.clone(),
        2e-2,
    );

    // Full fine-tuning: the gradient reaches the embeddings and every layer's weights.
    let device = Device::default().autodiff();
    let (config, bert, _) = Bert::load(&dir, &device).unwrap();
    let model = BertClassifier::new(bert, &config, 2, BertHead::Mean, &device);
    let (tokens, padding) = inputs(&g, &device);
    let grads = model.forward(tokens, padding).sum().backward();
    let embeddings = &model.bert.embeddings;
    assert!(embeddings.word_embeddings.weight.grad(&grads).is_some());
    assert!(embeddings.layer_norm.gamma.grad(&grads).is_some());
    for layer in &model.bert.encoder.layer {
        let query = &layer.attention.self_.query;
        assert!(query.adapter().is_none(), "a plain layer");
        assert!(query.weight.grad(&grads).is_some(), "query weight gradient");
    }
}

/// `all-linear` adapts the pooler only where it runs: with the pooler head, not with the
/// mean head, whose counted trainable parameters would otherwise include an adapter that
/// never gets a gradient.
#[test]
fn all_linear_adapts_the_pooler_only_for_the_pooler_head() {
    let device = Device::default();
    let (config, bert, _) = Bert::load(&fixture(), &device).unwrap();
    let lora = burn_lora::LoraConfig::new()
        .with_rank(2)
        .with_target_modules(vec!["all-linear".into()])
        .with_modules_to_save(vec!["classifier".into()]);
    let adapted = |head| {
        let model = BertClassifier::new(bert.clone(), &config, 2, head, &device);
        let model = FinetuneMode::Lora(lora.clone()).prepare(model).unwrap();
        let paths: Vec<String> = adapters(&model).into_iter().map(|(s, _)| s.path).collect();
        paths
    };
    let pooler = adapted(BertHead::Pooler);
    let mean = adapted(BertHead::Mean);
    // 2 layers × (query, key, value, attention output, intermediate, output).
    assert_eq!(mean.len(), 12, "{mean:?}");
    assert!(
        mean.iter().all(|p| p.starts_with("bert.encoder.layer.")),
        "{mean:?}"
    );
    assert_eq!(mean[0], "bert.encoder.layer.0.attention.self_.query");
    assert_eq!(pooler.len(), 13, "{pooler:?}");
    assert_eq!(pooler.last().unwrap(), "bert.pooler.dense");
}
