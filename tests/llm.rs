//! Hugging Face decoders (Llama, Qwen2, Qwen3) against transformers and PEFT: logits,
//! greedy generation token for token, chat templates, KV-cache generation, PEFT CAUSAL_LM
//! adapters both ways, broken checkpoints as named errors, and generative SFT on
//! burn-train (memorising pairs, resuming, conversations). Golden files:
//! `scripts/llm_golden.py write` (and `check` for the adapter we write).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_lora::{
    LoraConfig, PeftOptions, apply_lora, load_adapter_with, merge_lora, read_adapter_config,
    save_adapter_with,
};
use burn_lora_demo::Error;
use burn_lora_demo::data::SftDataset;
use burn_lora_demo::model::{
    CausalLm, Decoder, DecoderBase, GenerateOptions, Sampling, generate_batch,
};
use burn_lora_demo::tokenizer::ChatMessage;
use burn_lora_demo::train::sft::{SftMode, SftOptions, encode_sft, run_sft};
use common::{read, scratch};
use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::SafeTensors;
use serde::Deserialize;

const FAMILIES: [&str; 3] = ["llama", "qwen2", "qwen3"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llm")
        .join(name)
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Golden {
    prompts: Vec<String>,
    prompt_ids: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    eos: Vec<u32>,
    chat: Vec<Chat>,
}

#[derive(Deserialize)]
struct PeftGolden {
    greedy: Vec<Vec<u32>>,
}

fn golden(family: &str) -> Golden {
    serde_json::from_slice(&fs::read(fixture(family).join("golden.json")).unwrap()).unwrap()
}

fn load(family: &str) -> DecoderBase {
    let spec = format!("hf:{}", fixture(family).display());
    DecoderBase::load(&spec, &Device::default()).unwrap()
}

/// The golden batch's ids `[2, 7]` (the script draws the same ones for every family), and
/// the logits in `dir/file`.
fn ids_and_logits(dir: &Path, file: &str) -> (Tensor<2, Int>, TensorData) {
    let ids_file = fs::read(fixture("llama").join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&ids_file).unwrap();
    let view = st.tensor("input_ids").unwrap();
    let ids: Vec<i64> = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let ids = Tensor::from_data(TensorData::new(ids, [2, 7]), &Device::default());
    let bytes = fs::read(dir.join(file)).unwrap();
    let logits = read(&SafeTensors::deserialize(&bytes).unwrap(), "logits");
    (ids, logits)
}

/// `max |ours - transformers|` over the golden batch's logits, asserted under 1e-4.
fn check_logits<M: CausalLm>(what: &str, model: &M, dir: &Path, file: &str) -> f32 {
    let (ids, want) = ids_and_logits(dir, file);
    let [b, s] = ids.dims();
    let padding = Tensor::<2, Int>::zeros([b, s], &Device::default()).equal_elem(1);
    let got = model.logits(ids, padding).into_data();
    let (got, want) = (
        got.try_to_vec::<f32>().unwrap(),
        want.try_to_vec::<f32>().unwrap(),
    );
    assert_eq!(got.len(), want.len(), "{what}: logits shape");
    let diff = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max);
    eprintln!(
        "{what}: max |logits - transformers| = {diff:.2e} over {} logits",
        got.len()
    );
    assert!(diff < 1e-4, "{what}: logits differ by {diff}");
    diff
}

fn greedy(eos: &[u32], pad: u32, use_cache: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        eos: eos.to_vec(),
        pad,
        use_cache,
    }
}

/// Greedy continuations of the prompts, decoded as one padded batch.
fn generate<M: CausalLm>(
    model: &M,
    prompts: &[Vec<u32>],
    eos: &[u32],
    pad: u32,
    cache: bool,
) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(0);
    generate_batch(model, prompts, &greedy(eos, pad, cache), &mut rng)
        .unwrap()
        .into_iter()
        .map(|g| g.tokens)
        .collect()
}

#[test]
fn each_family_gives_transformers_logits() {
    for family in FAMILIES {
        let base = load(family);
        check_logits(family, &base.model, &fixture(family), "golden.safetensors");
    }
}

#[test]
fn tokens_and_greedy_generation_equal_transformers_with_and_without_the_cache() {
    for family in FAMILIES {
        let base = load(family);
        let g = golden(family);
        assert_eq!(
            base.eos, g.eos,
            "{family}: eos ids from generation_config.json"
        );
        let ids: Vec<Vec<u32>> = g
            .prompts
            .iter()
            .map(|p| base.tokenizer.encode(p, true).unwrap())
            .collect();
        assert_eq!(ids, g.prompt_ids, "{family}: prompt ids");
        let cached = generate(&base.model, &ids, &base.eos, base.pad, true);
        assert_eq!(cached, g.greedy, "{family}: greedy tokens, cached batch");
        let uncached = generate(&base.model, &ids, &base.eos, base.pad, false);
        assert_eq!(uncached, cached, "{family}: uncached equals cached");
    }
}

#[test]
fn chat_templates_render_as_transformers_apply_chat_template() {
    for family in FAMILIES {
        let base = load(family);
        let template = base.chat.as_ref().expect("the fixture has a chat template");
        for (i, chat) in golden(family).chat.iter().enumerate() {
            let text = template
                .render(&chat.messages, chat.add_generation_prompt)
                .unwrap();
            assert_eq!(text, chat.text, "{family}: conversation {i}");
            let ids = base.tokenizer.encode(&text, false).unwrap();
            assert_eq!(ids, chat.ids, "{family}: conversation {i} ids");
        }
    }
}

#[test]
fn a_role_the_template_refuses_is_a_named_error() {
    let base = load("qwen2");
    let err = base
        .chat
        .unwrap()
        .render(&[ChatMessage::new("tool", "x")], true)
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::ChatTemplate { .. }), "{message}");
    assert!(
        message.contains("chat_template.jinja") && message.contains("not tool"),
        "{message}"
    );
}

#[test]
fn cached_generation_equals_uncached_on_our_gpt() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/base_zh");
    let base = DecoderBase::load(spec.to_str().unwrap(), &Device::default()).unwrap();
    assert!(matches!(base.model, Decoder::Gpt(_)));
    let prompts: Vec<Vec<u32>> = ["这本书", "质量很差，", "很好"]
        .iter()
        .map(|p| base.tokenizer.encode(p, true).unwrap())
        .collect();
    let mut options = greedy(&base.eos, base.pad, true);
    options.max_new_tokens = 24;
    let run = |options: &GenerateOptions, prompts: &[Vec<u32>]| {
        generate_batch(&base.model, prompts, options, &mut StdRng::seed_from_u64(1)).unwrap()
    };
    let cached = run(&options, &prompts);
    options.use_cache = false;
    let uncached = run(&options, &prompts);
    for (c, u) in cached.iter().zip(&uncached) {
        assert_eq!(c.tokens, u.tokens, "cached and uncached tokens");
        let diff = c
            .logprobs
            .iter()
            .zip(&u.logprobs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "log-probabilities differ by {diff}");
    }
    assert!(cached.iter().all(|g| g.tokens.len() == 24));
    // Each prompt alone gives what it gave in the padded batch.
    for (prompt, together) in prompts.iter().zip(&cached) {
        options.use_cache = true;
        let alone = run(&options, std::slice::from_ref(prompt));
        assert_eq!(alone[0].tokens, together.tokens);
    }
}

#[test]
fn peft_causal_lm_adapters_give_peft_logits_and_greedy_tokens() {
    for (family, adapter) in [("llama", "peft_qv"), ("qwen2", "peft_all_linear")] {
        let base = load(family);
        let dir = fixture(family).join(adapter);
        let config = read_adapter_config(&dir).unwrap();
        let model = load_adapter_with(base.model, &dir, &PeftOptions::new()).unwrap();
        let what = format!("{family}/{adapter}");
        check_logits(&what, &model, &dir, "peft_golden.safetensors");
        let want: PeftGolden =
            serde_json::from_slice(&fs::read(dir.join("peft_golden.json")).unwrap()).unwrap();
        let g = golden(family);
        let tokens = generate(&model, &g.prompt_ids, &base.eos, base.pad, true);
        assert_eq!(tokens, want.greedy, "{what}: greedy tokens");
        // Merged into the base weights, the model generates the same tokens.
        let merged = merge_lora(model).unwrap();
        assert_eq!(
            generate(&merged, &g.prompt_ids, &base.eos, base.pad, true),
            want.greedy,
            "{what}: merged"
        );
        if adapter == "peft_all_linear" {
            assert_eq!(config.rank_pattern.len(), 2, "{what}: rank_pattern read");
        }
    }
}

/// Gives every LoRA factor a value from an integer formula, the same on every machine, so
/// the adapter file we write is the same bytes everywhere.
struct FormulaFactors {
    names: Vec<String>,
    count: usize,
}

impl ModuleMapper for FormulaFactors {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.names.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.names.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.names.last().map(String::as_str).unwrap_or("");
        if name != "lora_a" && name != "lora_b" {
            return param;
        }
        self.count += 1;
        let p = self.count;
        param.map(|t| {
            let grad = t.is_require_grad();
            let shape = t.shape();
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|k| (((k * 37 + p * 101) % 17) as f32 / 17.0 - 0.5) * 0.4)
                .collect();
            Tensor::<D>::from_data(TensorData::new(values, shape), &t.device())
                .set_require_grad(grad)
        })
    }
}

#[test]
fn our_causal_lm_adapter_loads_in_peft_with_the_same_outputs() {
    let base = load("llama");
    let config = LoraConfig::new()
        .with_rank(4)
        .with_alpha(8.0)
        .with_target_modules(vec![burn_lora::ALL_LINEAR.into()])
        .with_rank_pattern(vec![("down_proj".into(), 2)]);
    let model = apply_lora(base.model, &config).unwrap();
    let model = model.map(&mut FormulaFactors {
        names: Vec::new(),
        count: 0,
    });
    let options = PeftOptions::new()
        .with_task_type("CAUSAL_LM")
        .with_base_model_name_or_path("tests/fixtures/llm/llama");
    let written = scratch("llm", "ours");
    save_adapter_with(&model, &written, &options).unwrap();
    let committed = fixture("ours").join("adapter");
    if !committed.exists() {
        fs::create_dir_all(fixture("ours")).unwrap();
        save_adapter_with(&model, &committed, &options).unwrap();
        panic!(
            "wrote {}: run `scripts/llm_golden.py check` for PEFT's outputs",
            committed.display()
        );
    }
    // What PEFT loaded is what we write today, byte for byte.
    for file in [burn_lora::CONFIG_FILE, burn_lora::WEIGHTS_FILE] {
        assert_eq!(
            fs::read(written.join(file)).unwrap(),
            fs::read(committed.join(file)).unwrap(),
            "{file} differs from the committed adapter PEFT loaded"
        );
    }
    let saved = read_adapter_config(&written).unwrap();
    assert_eq!(saved.target_modules.len(), 7, "{:?}", saved.target_modules);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(written.join(burn_lora::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(json["task_type"], "CAUSAL_LM");
    assert_eq!(json["base_model_name_or_path"], "tests/fixtures/llm/llama");
    check_logits(
        "ours in PEFT",
        &model,
        &fixture("ours"),
        "peft_golden.safetensors",
    );
    let want: PeftGolden =
        serde_json::from_slice(&fs::read(fixture("ours").join("peft_golden.json")).unwrap())
            .unwrap();
    let g = golden("llama");
    let eos = g.eos.clone();
    assert_eq!(
        generate(&model, &g.prompt_ids, &eos, eos[0], true),
        want.greedy
    );
}

/// LoRA r 4 (alpha 8) on every linear, with factors set by formula: B is not zero, so A's
/// gradient is not zero either.
fn formula_lora<M: Module>(model: M) -> M {
    let config = LoraConfig::new()
        .with_rank(4)
        .with_alpha(8.0)
        .with_target_modules(vec![burn_lora::ALL_LINEAR.into()]);
    apply_lora(model, &config)
        .unwrap()
        .map(&mut FormulaFactors {
            names: Vec::new(),
            count: 0,
        })
}

/// The qwen2 golden prompts as one right-padded batch (padding id 0) and its padding mask.
fn qwen2_prompt_batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, burn::tensor::Bool>) {
    let ids = &golden("qwen2").prompt_ids;
    let width = ids.iter().map(Vec::len).max().unwrap();
    let rows: Vec<i64> = ids
        .iter()
        .flat_map(|row| (0..width).map(|i| *row.get(i).unwrap_or(&0) as i64))
        .collect();
    let pads: Vec<bool> = ids
        .iter()
        .flat_map(|row| (0..width).map(move |i| i >= row.len()))
        .collect();
    assert!(pads.contains(&true), "a padded row");
    let shape = [ids.len(), width];
    (
        Tensor::from_data(TensorData::new(rows, shape), device),
        Tensor::from_data(TensorData::new(pads, shape), device),
    )
}

/// Burn's autodiff gradient checkpointing (`Device::autodiff().gradient_checkpointing()`:
/// the backward pass recomputes memory-bound activations instead of keeping them) gives the
/// gradients the plain tape gives, on a LoRA-adapted Qwen2 built on that device, for a
/// batch with a padded row.
#[test]
fn checkpointed_and_plain_gradients_agree() {
    let grads_on = |device: Device| -> Vec<(String, TensorData)> {
        let spec = format!("hf:{}", fixture("qwen2").display());
        let base = DecoderBase::load(&spec, &device).unwrap();
        let model = formula_lora(base.model);
        let (tokens, padding) = qwen2_prompt_batch(&device);
        let logits = model.logits(tokens, padding);
        let grads = (logits.clone() * logits).mean().backward();
        burn_lora::adapters(&model)
            .into_iter()
            .flat_map(|(site, adapter)| {
                let a = adapter.lora_a().grad(&grads).unwrap().into_data();
                let b = adapter.lora_b().grad(&grads).unwrap().into_data();
                [
                    (format!("{}.A", site.path), a),
                    (format!("{}.B", site.path), b),
                ]
            })
            .collect()
    };
    let plain = grads_on(Device::default().autodiff());
    let device = Device::default().autodiff().gradient_checkpointing();
    assert!(
        device
            .gradient_checkpointing_strategy()
            .is_some_and(|s| format!("{s:?}") == "Balanced")
    );
    let checkpointed = grads_on(device);
    assert_eq!(
        plain.len(),
        2 * 7 * 2,
        "q, k, v, o, gate, up, down in 2 layers"
    );
    let mut worst = 0.0f32;
    for ((name, want), (_, got)) in plain.iter().zip(&checkpointed) {
        let want: Vec<f32> = want.iter::<f32>().collect();
        let got: Vec<f32> = got.iter::<f32>().collect();
        assert!(
            want.iter().any(|g| *g != 0.0),
            "{name}: a zero gradient proves nothing"
        );
        for (w, g) in want.iter().zip(&got) {
            worst = worst.max((w - g).abs() / w.abs().max(1.0));
        }
    }
    println!("checkpointed vs plain LoRA gradients: max difference {worst:e}");
    assert!(worst <= 1e-5, "{worst}");
}

/// Per-block recomputation (`train::recompute::backward_per_block`, transformers' kind of
/// gradient checkpointing) gives the plain tape's loss and gradients: for LoRA on every
/// linear, and for full fine-tuning, where the tied embedding gets gradients from both the
/// head and the input. One row is padded, so the padding mask takes part. The same for
/// next-token cross-entropy through `backward_per_block_cross_entropy`.
#[test]
fn per_block_recomputation_gives_the_plain_gradients() {
    use burn::nn::loss::CrossEntropyLoss;
    use burn_lora_demo::train::recompute::{
        backward_per_block, backward_per_block_chunked, backward_per_block_cross_entropy,
    };

    let device = Device::default().autodiff();
    let spec = format!("hf:{}", fixture("qwen2").display());
    let Decoder::Llama(base) = DecoderBase::load(&spec, &device).unwrap().model else {
        panic!("qwen2 is a Llama-family model");
    };
    let lora = formula_lora(base.clone());
    let (tokens, padding) = qwen2_prompt_batch(&device);
    let loss = |logits: Tensor<3>| (logits.clone() * logits).mean();
    // Full: per layer q, k, v (weight and bias), o, gate, up, down and two norms; then the
    // embedding and the final norm.
    for (what, model, count) in [("LoRA", lora, 2 * 7 * 2), ("full", base, 2 * 12 + 2)] {
        let logits = model.logits(tokens.clone(), padding.clone());
        let total = logits.dims().iter().product::<usize>() as f32;
        let plain_loss = loss(logits);
        let want = by_path(
            &model,
            &GradientsParams::from_grads(plain_loss.backward(), &model),
        );
        assert_eq!(
            want.len(),
            count,
            "{what}: {:?}",
            want.iter().map(|(p, _)| p)
        );
        let plain_loss = plain_loss.into_scalar::<f32>();
        // Whole, and with the head run 2 positions at a time (the mean's share per chunk).
        let whole = backward_per_block(&model, tokens.clone(), padding.clone(), loss).unwrap();
        let chunked =
            backward_per_block_chunked(&model, tokens.clone(), padding.clone(), 2, |logits, _| {
                (logits.clone() * logits).sum().div_scalar(total)
            })
            .unwrap();
        for (how, (got_loss, grads)) in [("whole", whole), ("2 positions a chunk", chunked)] {
            let got = (got_loss.into_scalar::<f32>(), by_path(&model, &grads));
            agree(&format!("{what}, {how}"), (plain_loss, &want), got);
        }

        // Next-token cross-entropy with the gradient from `linear_cross_entropy`, 3
        // positions a chunk, weighted by 0.5: Burn's `CrossEntropyLoss` on the plain tape.
        let [rows, seq] = tokens.dims();
        let targets = tokens.clone().add_scalar(1); // in the vocabulary: ids < vocab - 1
        let logits = model.logits(tokens.clone(), padding.clone());
        let vocab = logits.dims()[2];
        let plain_loss = CrossEntropyLoss::new(None, &device)
            .forward(
                logits.reshape([rows * seq, vocab]),
                targets.clone().reshape([rows * seq]),
            )
            .mul_scalar(0.5);
        let want = by_path(
            &model,
            &GradientsParams::from_grads(plain_loss.backward(), &model),
        );
        let plain_loss = plain_loss.into_scalar::<f32>();
        let (got_loss, grads) = backward_per_block_cross_entropy(
            &model,
            tokens.clone(),
            padding.clone(),
            targets,
            0.5,
            3,
        )
        .unwrap();
        let got = (got_loss.into_scalar::<f32>(), by_path(&model, &grads));
        agree(&format!("{what}, cross-entropy"), (plain_loss, &want), got);
    }
}

/// The same parameters get gradients, the losses agree, and every gradient is within 1e-5
/// of the plain tape's (relative to the larger of itself, 1 and a tenth of its tensor's
/// largest), none of those all zero.
fn agree(label: &str, (plain_loss, want): (f32, &Grads), (got_loss, got): (f32, Grads)) {
    assert_eq!(
        want.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        got.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "{label}: the same parameters get gradients"
    );
    assert!(
        (plain_loss - got_loss).abs() <= 1e-5 * plain_loss.abs(),
        "{label}: loss {plain_loss} vs {got_loss}"
    );
    let mut worst = 0.0f32;
    for ((path, w), (_, g)) in want.iter().zip(&got) {
        assert!(
            w.iter().any(|v| *v != 0.0),
            "{label} {path}: a zero gradient proves nothing"
        );
        // A sum's rounding is relative to its terms, not to its result: an element that
        // nearly cancels (the tied embedding's gradient adds the head's and the lookup's)
        // is compared relative to a tenth of its tensor's largest gradient.
        let floor = w.iter().fold(1.0f32, |m, v| m.max(0.1 * v.abs()));
        for (w, g) in w.iter().zip(g) {
            worst = worst.max((w - g).abs() / w.abs().max(floor));
        }
    }
    println!("{label}: recomputed vs plain gradients, max difference {worst:e}");
    assert!(worst <= 1e-5, "{label}: {worst}");
}

/// Gradients by parameter path.
/// Every trainable parameter's gradient, by path.
fn by_path<M: Module>(model: &M, grads: &GradientsParams) -> Grads {
    struct Collect<'a>(&'a GradientsParams, Vec<String>, Vec<(String, Vec<f32>)>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let values = g.into_data().iter::<f32>().collect();
                self.2.push((self.1.join("."), values));
            }
        }
    }
    let mut visitor = Collect(grads, Vec::new(), Vec::new());
    model.visit(&mut visitor);
    visitor.2
}

type Grads = Vec<(String, Vec<f32>)>;

/// QLoRA with the tied embedding quantized as well (Q8 per block of 32, as `bench --llm`'s
/// `llm_lora_q8_embed_*` cases): the lookup and the tied head read the quantized table and
/// give the logits, the loss and LoRA's gradients (per-block recomputation with the fused
/// cross-entropy) of a twin whose table is the dequantized one, in float. Greedy decoding
/// through the cache gives the twin's tokens.
#[test]
fn a_q8_tied_embedding_gives_its_dequantized_twins_logits_and_gradients() {
    use burn::module::Quantizer;
    use burn::tensor::quantization::Calibration;
    use burn_lora_demo::model::llama::Llama;
    use burn_lora_demo::train::quantize::BaseQuant;
    use burn_lora_demo::train::recompute::backward_per_block_cross_entropy;

    let device = Device::default().autodiff();
    let spec = format!("hf:{}", fixture("qwen2").display());
    let Decoder::Llama(base) = DecoderBase::load(&spec, &device).unwrap().model else {
        panic!("qwen2 is a Llama-family model");
    };
    assert!(base.lm_head.is_none(), "the fixture ties its head");
    let mut q8 = formula_lora(base);
    let mut quantizer = Quantizer::new(Calibration::MinMax, BaseQuant::Q8.scheme());
    q8.model.embed_tokens = q8.model.embed_tokens.quantize_weights(&mut quantizer);
    assert!(matches!(
        q8.model.embed_tokens.weight.val().dtype(),
        burn::tensor::DType::QFloat(_)
    ));
    let mut twin = q8.clone();
    twin.model.embed_tokens.weight = twin.model.embed_tokens.weight.map(|w| w.dequantize());

    let (tokens, padding) = qwen2_prompt_batch(&device);
    let close = |a: Tensor<3>, b: Tensor<3>| {
        let scale = b.clone().abs().max().into_scalar::<f32>();
        (a - b).abs().max().into_scalar::<f32>() / scale
    };
    let diff = close(
        q8.logits(tokens.clone(), padding.clone()),
        twin.logits(tokens.clone(), padding.clone()),
    );
    assert!(diff <= 1e-5, "logits differ by {diff} of their largest");

    let targets = tokens.clone().add_scalar(1);
    let run = |model: &Llama| {
        let (loss, grads) = backward_per_block_cross_entropy(
            model,
            tokens.clone(),
            padding.clone(),
            targets.clone(),
            1.0,
            3,
        )
        .unwrap();
        (loss.into_scalar::<f32>(), by_path(model, &grads))
    };
    let ((got_loss, got), (want_loss, want)) = (run(&q8), run(&twin));
    assert_eq!(got.len(), 2 * 7 * 2, "A and B of 7 linears in 2 layers");
    agree("Q8 embedding", (want_loss, &want), (got_loss, got));

    let prompts = &golden("qwen2").prompt_ids;
    assert_eq!(
        generate(&q8.valid(), prompts, &[], 0, true),
        generate(&twin.valid(), prompts, &[], 0, true)
    );
}

/// Per-block recomputation on our GPT with dropout everywhere (embedding, attention,
/// residual, MLP, LoRA's input): on a CPU each block's recomputed pass draws the masks its
/// first pass drew. The reference is a plain tape whose embedding and blocks run under the
/// seeds `backward_per_block` takes, in its order; recomputing with other masks would
/// give other gradients.
#[test]
fn per_block_recomputation_redraws_the_first_passes_dropout_masks() {
    use burn_lora_demo::model::{GptConfig, with_dropout_seed};
    use burn_lora_demo::train::recompute::{BlockStack, backward_per_block};

    let device = Device::flex().autodiff();
    device.seed(7);
    let config = GptConfig::new(64)
        .with_d_model(32)
        .with_n_layers(3)
        .with_n_heads(2)
        .with_d_ff(64)
        .with_max_seq_len(16)
        .with_dropout(0.2);
    let lora = LoraConfig::new()
        .with_rank(4)
        .with_alpha(8.0)
        .with_dropout(0.3)
        .with_target_modules(vec![burn_lora::ALL_LINEAR.into()]);
    let model = apply_lora(config.init(&device), &lora)
        .unwrap()
        .map(&mut FormulaFactors {
            names: Vec::new(),
            count: 0,
        });
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new((0..24).map(|i| (i * 7 % 64) as i64).collect(), [2, 12]),
        &device,
    );
    let padding = tokens.clone().equal_elem(-1);
    let loss = |logits: Tensor<3>| (logits.clone() * logits).mean();
    let grads_of = |grads: &GradientsParams| -> Vec<f32> {
        burn_lora::adapters(&model)
            .into_iter()
            .flat_map(|(_, a)| {
                let mut v: Vec<f32> = grads
                    .get::<2>(a.lora_a().id)
                    .unwrap()
                    .into_data()
                    .iter()
                    .collect();
                v.extend(
                    grads
                        .get::<2>(a.lora_b().id)
                        .unwrap()
                        .into_data()
                        .iter::<f32>(),
                );
                v
            })
            .collect()
    };
    let (_, grads) = with_dropout_seed(42, || {
        backward_per_block(&model, tokens.clone(), padding.clone(), loss).unwrap()
    });
    let got = grads_of(&grads);
    let want = with_dropout_seed(42, || {
        let seeds: Vec<u64> = (0..=3)
            .map(|_| burn_lora::dropout::next_seed(&device))
            .collect();
        let context = model.context(&tokens, padding.clone());
        let mut x = with_dropout_seed(seeds[0], || model.embed(tokens.clone(), &context));
        for i in 0..3 {
            x = with_dropout_seed(seeds[i + 1], || model.block(i, x, &context));
        }
        let tape = loss(model.finish(x)).backward();
        grads_of(&GradientsParams::from_grads(tape, &model))
    });
    let unseeded = {
        let tape = loss(model.logits(tokens.clone(), padding.clone())).backward();
        grads_of(&GradientsParams::from_grads(tape, &model))
    };
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
            .fold(0.0f32, f32::max)
    };
    println!(
        "same masks: {:e}; other masks: {:e}",
        worst(&want, &got),
        worst(&unseeded, &got)
    );
    assert_eq!(want.len(), got.len());
    assert!(worst(&want, &got) <= 1e-5);
    assert!(
        worst(&unseeded, &got) > 1e-3,
        "other masks must give other gradients"
    );
}

/// A copy of the llama fixture with `edit` applied to its config.json.
fn edited(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let dir = scratch("llm", name);
    for entry in fs::read_dir(fixture("llama")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    let spec = format!("hf:{}", dir.display());
    DecoderBase::load(&spec, &Device::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn an_unknown_architecture_is_named() {
    let dir = edited("gemma", |c| {
        c["architectures"] = serde_json::json!(["GemmaForCausalLM"])
    });
    let message = load_err(&dir);
    assert!(
        message.contains("GemmaForCausalLM") && message.contains("config.json"),
        "{message}"
    );
}

#[test]
fn a_shape_that_disagrees_with_the_config_is_named() {
    let dir = edited("narrow", |c| c["intermediate_size"] = serde_json::json!(80));
    let message = load_err(&dir);
    assert!(
        message.contains("model.layers.0.mlp") && message.contains("model.safetensors"),
        "{message}"
    );
}

#[test]
fn a_missing_weights_file_is_named() {
    let dir = edited("no-weights", |_| {});
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let message = load_err(&dir);
    assert!(message.contains("model.safetensors"), "{message}");
}

#[test]
fn an_unsupported_rope_type_is_named() {
    let dir = edited("yarn", |c| {
        c["rope_parameters"]["rope_type"] = serde_json::json!("yarn")
    });
    let message = load_err(&dir);
    assert!(
        message.contains("yarn") && message.contains("config.json"),
        "{message}"
    );
}

/// A short SFT run's options on `base`, with the same pairs to train, validate and test.
fn sft_options(base: &str, pairs: &[(&str, &str)], out: &Path, epochs: usize) -> SftOptions {
    let data = SftDataset::from_pairs(
        pairs.iter().map(|(p, c)| (p.to_string(), c.to_string())),
        "pairs",
    );
    SftOptions {
        base: base.to_string(),
        train: data.clone(),
        valid: data.clone(),
        test: data,
        out: out.to_path_buf(),
        mode: SftMode::Lora,
        epochs,
        batch_size: 2,
        lr: 2e-2,
        weight_decay: 0.0,
        lora: LoraConfig::new()
            .with_rank(8)
            .with_alpha(16.0)
            .with_target_modules(vec![burn_lora::ALL_LINEAR.into()]),
        max_len: 64,
        seed: 7,
        devices: vec![Device::default()],
        resume: false,
        overwrite: false,
        max_exact: None,
        stop_after: None,
        quantize: None,
        gradient_checkpointing: false,
    }
}

const PAIRS: [(&str, &str); 4] = [
    ("Colour of the sky:", " blue"),
    ("Colour of grass:", " green"),
    ("Capital of France:", " Paris"),
    ("Two plus two:", " four"),
];

#[test]
fn sft_memorises_a_few_pairs_to_exact_match_and_writes_a_causal_lm_adapter() {
    let out = scratch("llm", "sft_memorise");
    let base = format!("hf:{}", fixture("qwen2").display());
    let report = run_sft(&sft_options(&base, &PAIRS, &out, 30)).unwrap();
    // The pairs, for `scripts/llm_golden.py sft-check` (PEFT loads this adapter).
    let lines: Vec<String> = PAIRS
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string())
        .collect();
    fs::write(out.join("pairs.jsonl"), lines.join("\n")).unwrap();
    assert_eq!(report.exact_match, Some(1.0), "{report:?}");
    assert!(report.eval_loss < 0.1, "{report:?}");
    // burn-train's metrics, each epoch: loss and perplexity on the validation split.
    assert_eq!(report.valid_loss.len(), 30);
    let perplexity = *report.valid_perplexity.last().unwrap();
    assert!((1.0..1.2).contains(&perplexity), "{report:?}");
    // The adapter is PEFT's CAUSAL_LM file, and greedy decoding with it loaded gives the
    // completions.
    let adapter = out.join("lora/adapter");
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["task_type"], "CAUSAL_LM");
    assert_eq!(
        json["base_model_name_or_path"],
        fixture("qwen2").to_str().unwrap()
    );
    let targets = read_adapter_config(&adapter).unwrap().target_modules;
    assert!(targets.contains(&"q_proj".to_string()), "{targets:?}");
    let decoder = load("qwen2");
    let model = load_adapter_with(decoder.model, &adapter, &PeftOptions::new()).unwrap();
    for (prompt, completion) in PAIRS {
        let ids = decoder.tokenizer.encode(prompt, true).unwrap();
        let tokens = generate(&model, &[ids], &decoder.eos, decoder.pad, true).remove(0);
        let text = decoder.tokenizer.decode(&tokens).unwrap();
        assert_eq!(text.trim(), completion.trim());
    }
    assert!(out.join("lora/loss_curve.svg").is_file());
}

/// `--gradient-checkpointing` (per-block recomputation inside burn-train's step) gives the
/// plain tape's gradients, so it ends where the plain run ends, on one device and on two.
#[test]
fn sft_with_gradient_checkpointing_trains_as_without() {
    let base = format!("hf:{}", fixture("qwen2").display());
    for devices in [1, 2] {
        let options = |name: &str, checkpointing: bool| {
            let mut o = sft_options(
                &base,
                &PAIRS,
                &scratch("llm", &format!("{name}{devices}")),
                3,
            );
            o.devices = vec![Device::default(); devices];
            o.gradient_checkpointing = checkpointing;
            o
        };
        let plain = run_sft(&options("sft_plain", false)).unwrap();
        let checkpointed = run_sft(&options("sft_ckpt", true)).unwrap();
        println!(
            "{devices} device(s): train loss plain {} checkpointed {}",
            plain.train_loss, checkpointed.train_loss
        );
        assert!(plain.train_loss.is_finite());
        assert!(
            (plain.train_loss - checkpointed.train_loss).abs()
                <= 1e-4 * plain.train_loss.abs().max(1.0)
        );
        assert!(
            (plain.eval_loss - checkpointed.eval_loss).abs()
                <= 1e-4 * plain.eval_loss.abs().max(1.0)
        );
    }
}

#[test]
fn sft_resumes_from_burn_trains_epoch_checkpoint() {
    let out = scratch("llm", "sft_resume");
    let base = format!("hf:{}", fixture("qwen2").display());
    // A 20-epoch run stopped after epoch 3, its checkpoint written, then resumed.
    let mut options = sft_options(&base, &PAIRS, &out, 20);
    options.stop_after = Some(3);
    let first = run_sft(&options).unwrap();
    assert!(out.join("lora/train/checkpoint/model-3.bpk").is_file());
    assert_eq!(first.valid_loss.len(), 3);
    options.stop_after = None;
    options.resume = true;
    let resumed = run_sft(&options).unwrap();
    // Epochs 4 to 20 ran from the checkpoint (weights, optimizer and learning-rate
    // schedule): validation losses for those only, the first below the first run's first.
    assert_eq!(resumed.valid_loss.len(), 17, "{resumed:?}");
    assert!(
        resumed.valid_loss[0] < first.valid_loss[0],
        "{first:?}\n{resumed:?}"
    );
    assert_eq!(resumed.exact_match, Some(1.0), "{resumed:?}");
    // The same run never stopped ends at the same validation loss.
    let whole = run_sft(&sft_options(
        &base,
        &PAIRS,
        &scratch("llm", "sft_whole"),
        20,
    ))
    .unwrap();
    let (a, b) = (whole.valid_loss[19], resumed.valid_loss[16]);
    println!("valid loss after 20 epochs: whole {a}, resumed {b}");
    // Not bit for bit: burn-train restores the weights, the optimizer and the schedule, but
    // its data loader's shuffle starts again from the seed.
    assert!((a - b).abs() < 0.25 * a.max(b), "whole {a}, resumed {b}");
    // With no checkpoint, --resume is a clear error.
    let mut fresh = sft_options(&base, &PAIRS, &scratch("llm", "sft_no_ckpt"), 2);
    fresh.resume = true;
    let err = run_sft(&fresh).unwrap_err().to_string();
    assert!(err.contains("--resume: no checkpoint"), "{err}");
}

#[test]
fn sft_on_conversations_learns_the_assistant_turns_only() {
    let base = load("qwen2");
    let line = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]}"#;
    let data = SftDataset::parse(line.as_bytes(), "chat.jsonl").unwrap();
    let encoded = encode_sft(&data, &base, 512).unwrap();
    let row = &encoded.rows[0];
    let learnt: Vec<u32> = row
        .ids
        .iter()
        .zip(&row.learn)
        .filter(|(_, l)| **l)
        .map(|(i, _)| *i)
        .collect();
    let text = base.tokenizer.decode(&learnt).unwrap();
    assert!(
        text.contains("Hello!") && text.contains("See you."),
        "{text:?}"
    );
    assert!(
        !text.contains("Hi") && !text.contains("Bye") && !text.contains("user"),
        "{text:?}"
    );
    // The whole row is the template's rendering.
    let messages = match &data.records[0].1 {
        burn_lora_demo::data::SftRecord::Messages(m) => m.clone(),
        _ => unreachable!(),
    };
    let rendered = base
        .chat
        .as_ref()
        .unwrap()
        .render(&messages, false)
        .unwrap();
    assert_eq!(
        base.tokenizer.decode(&row.ids).unwrap(),
        base.tokenizer
            .decode(&base.tokenizer.encode(&rendered, false).unwrap())
            .unwrap()
    );
    // A conversation on a base without a template names the file and line.
    let gpt = DecoderBase::load("fixtures/base_zh", &Device::default()).unwrap();
    let err = encode_sft(&data, &gpt, 64).unwrap_err().to_string();
    assert!(
        err.starts_with("chat.jsonl:1: `messages` needs a chat template"),
        "{err}"
    );
}

#[test]
fn sft_trains_on_two_devices_through_burn_trains_multi_device_strategy() {
    let out = scratch("llm", "sft_multi");
    let base = format!("hf:{}", fixture("qwen2").display());
    let mut options = sft_options(&base, &PAIRS, &out, 30);
    // flex and ndarray: two CPU backends, each a device of its own to burn-train (Burn
    // deprecates ndarray in favour of flex, which has only one device).
    #[allow(deprecated)]
    let second = Device::ndarray();
    options.devices = vec![Device::default(), second];
    let report = run_sft(&options).unwrap();
    assert_eq!(report.exact_match, Some(1.0), "{report:?}");
}

#[derive(Deserialize)]
struct SftGolden {
    prompt_ids: Vec<Vec<u32>>,
    greedy: Vec<Vec<u32>>,
    merged_greedy: Vec<Vec<u32>>,
}

#[test]
fn an_adapter_sft_trained_decodes_in_peft_as_it_does_here() {
    // tests/fixtures/llm/ours_sft/adapter: what `sft` trained on the tiny Qwen2; PEFT's
    // greedy tokens for it, unmerged and merged (`scripts/llm_golden.py sft-check`).
    let dir = fixture("ours_sft");
    let want: SftGolden =
        serde_json::from_slice(&fs::read(dir.join("peft_golden.json")).unwrap()).unwrap();
    assert_eq!(
        want.greedy, want.merged_greedy,
        "PEFT: merged equals unmerged"
    );
    let base = load("qwen2");
    let data = SftDataset::load(dir.join("pairs.jsonl")).unwrap();
    for ((_, record), ids) in data.records.iter().zip(&want.prompt_ids) {
        let burn_lora_demo::data::SftRecord::PromptCompletion { prompt, .. } = record else {
            unreachable!()
        };
        assert_eq!(&base.tokenizer.encode(prompt, true).unwrap(), ids);
    }
    let model = load_adapter_with(base.model, dir.join("adapter"), &PeftOptions::new()).unwrap();
    let ours = generate(&model, &want.prompt_ids, &base.eos, base.pad, true);
    assert_eq!(
        ours, want.greedy,
        "our greedy tokens with our adapter = PEFT's"
    );
    let merged = merge_lora(model).unwrap();
    let ours_merged = generate(&merged, &want.prompt_ids, &base.eos, base.pad, true);
    assert_eq!(ours_merged, want.greedy, "merged, then generated");
}

/// QLoRA SFT: the tiny Qwen2's linears quantized to Q8 (per block of 32), LoRA on top, the
/// pairs memorised as on the float base; the base is still quantized at the end. With
/// `--modes full` a quantized base is refused.
#[test]
fn sft_on_a_q8_base_memorises_the_pairs() {
    use burn_lora_demo::train::quantize::BaseQuant;
    let out = scratch("llm", "sft_q8");
    let base = format!("hf:{}", fixture("qwen2").display());
    let mut options = sft_options(&base, &PAIRS, &out, 30);
    options.quantize = Some(BaseQuant::Q8);
    let report = run_sft(&options).unwrap();
    assert_eq!(report.exact_match, Some(1.0), "{report:?}");
    assert_eq!(report.quantize, Some(BaseQuant::Q8));
    options.mode = burn_lora_demo::train::sft::SftMode::Full;
    options.overwrite = true;
    let err = run_sft(&options).unwrap_err().to_string();
    assert!(err.contains("--quantize q8"), "{err}");
}
