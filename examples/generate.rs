//! What "autoregressive" means, and generation as an LLM user runs it.
//!
//! With a positional prompt (or none), the base continues it one token at a time and the
//! model's top candidates are printed at every step. With `--prompt` (repeatable), the
//! prompts decode together as one padded batch through a KV cache, with LoRA adapters,
//! a chat template, sampling, and `--json` output.
//!
//! `--context-demo N` measures how much the model uses its context: the perplexity of the
//! second half of N English test reviews, alone and after the review's own first half.
//!
//! ```sh
//! cargo run --release --example generate
//! cargo run --release --example generate -- "这本书" --top-k 20 --seed 3 --base fixtures/base_zh
//! cargo run --release --example generate -- --context-demo 300
//! cargo run --release --example generate -- --base fixtures/base_zh --prompt "这本书" --prompt "质量" --json
//! cargo run --release --example generate -- --base hf:PATH/Qwen2.5-0.5B-Instruct --chat --prompt "Hello!"
//! ```
//!
//! With several `--adapter NAME=DIR`, a prompt may start with an adapter's name and a tab
//! (`en<TAB>text`, or `__base__` for none); one without goes to the first adapter. All
//! prompts decode in one mixed batch through one base.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn_lora::{PeftOptions, load_adapter_with, merge_lora, with_adapter_names};
use burn_lora_demo::Error;
use burn_lora_demo::data::SentimentDataset;
use burn_lora_demo::device::parse_one_device;
use burn_lora_demo::model::{
    CausalLm, Decoder, DecoderBase, GenerateOptions, Generation, LmTokenizer, Sampling,
    continuation_nll, generate, generate_batch, top_next,
};
use burn_lora_demo::tokenizer::ChatMessage;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[path = "common/allocator.rs"]
mod allocator;

/// Continue prompts with a base (ours or a Hugging Face decoder), with or without LoRA
/// adapters.
#[derive(Parser, Debug)]
struct Args {
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N]
    /// (auto: Burn's default device, which honours BURN_DEVICE).
    #[arg(long, default_value = "auto")]
    device: String,
    /// A prompt to continue step by step, showing each step's candidates.
    #[arg(default_value = "The movie is")]
    text: String,
    /// Prompts to continue together as one batch (repeatable); turns off the step view.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// The base: a directory made by the pretrain example, or `hf:DIR`, a Hugging Face
    /// Llama, Qwen2 or Qwen3 checkpoint.
    #[arg(long, default_value = "fixtures/base")]
    base: String,
    /// A PEFT-format LoRA adapter directory (ours or PEFT's); repeat as `NAME=DIR` to
    /// serve several on one base.
    #[arg(long)]
    adapter: Vec<String>,
    /// Merge the adapter into the base weights first (same tokens, plain linears).
    #[arg(long)]
    merge: bool,
    /// Apply the base's chat template: each prompt is a user turn, and the assistant
    /// answers.
    #[arg(long)]
    chat: bool,
    /// A system turn before each prompt (with `--chat`).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// The most tokens to add to each prompt.
    #[arg(
        long = "max-new-tokens",
        visible_alias = "max-new",
        default_value_t = 12
    )]
    max_new_tokens: usize,
    /// Always take the most likely token (the default unless --temperature, --top-p or
    /// --top-k is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    greedy: bool,
    /// Sample from softmax(logits / temperature).
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample from the smallest set of most likely tokens whose probability reaches P.
    #[arg(long, conflicts_with = "top_k")]
    top_p: Option<f64>,
    /// Sample from the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute the whole sequence at every step instead of keeping a KV cache (same
    /// tokens, slower: to see what the cache saves).
    #[arg(long)]
    no_cache: bool,
    /// Print one JSON object per prompt: prompt, completion, tokens, token_logprobs,
    /// tokens_per_second, finish_reason.
    #[arg(long)]
    json: bool,
    /// Instead: the perplexity of N test reviews' second halves, with and without the
    /// first half before them.
    #[arg(long)]
    context_demo: Option<usize>,
}

impl Args {
    fn sampling(&self) -> Result<Sampling, Error> {
        let temperature = self.temperature.unwrap_or(1.0);
        if temperature <= 0.0 {
            return Err(Error::Usage(format!(
                "--temperature {temperature} must be positive (use --greedy for the most likely token)"
            )));
        }
        Ok(match (self.top_k, self.top_p) {
            (k, _) if k > 0 => Sampling::TopK { k, temperature },
            (_, Some(p)) if !(p > 0.0 && p <= 1.0) => {
                return Err(Error::Usage(format!("--top-p {p} is not in (0, 1]")));
            }
            (_, Some(top_p)) => Sampling::TopP { temperature, top_p },
            _ if self.temperature.is_some() => Sampling::TopP {
                temperature,
                top_p: 1.0,
            },
            _ => Sampling::Greedy,
        })
    }
}

/// `--adapter` values as (name, directory); a bare `DIR` is PEFT's `default`.
fn named_adapters(args: &Args) -> Vec<(String, PathBuf)> {
    args.adapter
        .iter()
        .map(|a| match a.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !name.contains('/') => {
                (name.to_string(), PathBuf::from(dir))
            }
            _ => (burn_lora::DEFAULT_ADAPTER.to_string(), PathBuf::from(a)),
        })
        .collect()
}

/// The base with the adapters loaded, and merged when asked.
fn with_adapters(args: &Args, base: DecoderBase) -> Result<DecoderBase, Error> {
    let name = base.name.clone();
    base.map_model(|mut model| {
        for (adapter, dir) in named_adapters(args) {
            let options = PeftOptions::new().with_adapter_name(&adapter);
            model = load_adapter_with(model, &dir, &options)?;
            eprintln!("adapter {adapter}: {} (on {name})", dir.display());
        }
        if args.merge {
            model = merge_lora(model)?;
        }
        Ok(model)
    })
}

fn piece(tokenizer: &LmTokenizer, id: u32) -> String {
    format!("{:?}", tokenizer.decode(&[id]).unwrap_or_default())
}

fn show_steps(args: &Args, model: &Decoder, base: &DecoderBase) -> Result<(), Error> {
    let prompt = base.tokenizer.encode(&args.text, true)?;
    if prompt.is_empty() {
        return Err(Error::Usage("the prompt is empty".into()));
    }
    let sampling = args.sampling()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut context = prompt.clone();
    println!("prompt {:?}: {} tokens", args.text, prompt.len());
    for step in 1..=args.max_new_tokens {
        let candidates = top_next(model, &context, 3)
            .into_iter()
            .map(|(id, p)| format!("{} {:.3}", show(base, id), p))
            .collect::<Vec<_>>()
            .join(", ");
        let next = generate(model, &context, 1, None, sampling, &mut rng);
        let Some(&next) = next.first() else { break };
        println!(
            "step {step:>2}: top 3 [{candidates}] -> {}",
            show(base, next)
        );
        if base.eos.contains(&next) {
            break;
        }
        context.push(next);
    }
    println!(
        "\n{:?} + {:?}",
        args.text,
        base.tokenizer.decode(&context[prompt.len()..])?
    );
    Ok(())
}

/// A token as the step view prints it: its text, or `<eos>` for an end-of-sequence id.
fn show(base: &DecoderBase, id: u32) -> String {
    match base.eos.contains(&id) {
        true => "<eos>".into(),
        false => piece(&base.tokenizer, id),
    }
}

/// Each prompt's adapter name (with several adapters) and its text.
fn route(args: &Args, names: &[String]) -> Vec<(Option<String>, String)> {
    args.prompts
        .iter()
        .map(|p| match (names.len(), p.split_once('\t')) {
            (0 | 1, _) => (names.first().cloned(), p.clone()),
            (_, Some((name, text)))
                if name == burn_lora::BASE_ADAPTER || names.iter().any(|n| n == name) =>
            {
                (Some(name.to_string()), text.to_string())
            }
            _ => (names.first().cloned(), p.clone()),
        })
        .collect()
}

fn encode(args: &Args, base: &DecoderBase, text: &str) -> Result<Vec<u32>, Error> {
    if !args.chat {
        return base.tokenizer.encode(text, true);
    }
    let template = base.chat.as_ref().ok_or_else(|| {
        Error::Usage(format!(
            "--chat: {} has no chat template (tokenizer_config.json's chat_template or chat_template.jinja)",
            base.name
        ))
    })?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", text));
    base.tokenizer
        .encode(&template.render(&messages, true)?, false)
}

fn run_batch(args: &Args, model: &Decoder, base: &DecoderBase) -> Result<(), Error> {
    let names: Vec<String> = named_adapters(args).into_iter().map(|(n, _)| n).collect();
    let routed = route(args, &names);
    let prompts = routed
        .iter()
        .map(|(_, text)| encode(args, base, text))
        .collect::<Result<Vec<_>, _>>()?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: args.sampling()?,
        eos: base.eos.clone(),
        pad: base.pad,
        use_cache: !args.no_cache,
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let generated: Vec<Generation> = match names.len() > 1 && !args.merge {
        true => {
            let per_row: Vec<&str> = routed
                .iter()
                .map(|(n, _)| n.as_deref().unwrap_or(""))
                .collect();
            with_adapter_names(model, &per_row, || {
                generate_batch(model, &prompts, &options, &mut rng)
            })??
        }
        false => generate_batch(model, &prompts, &options, &mut rng)?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let total: usize = generated.iter().map(|g| g.tokens.len()).sum();
    eprintln!(
        "{total} tokens for {} prompts in {seconds:.2} s ({:.1} tokens/s, KV cache {})",
        prompts.len(),
        total as f64 / seconds,
        if options.use_cache { "on" } else { "off" }
    );
    for ((name, text), g) in routed.iter().zip(&generated) {
        let completion = base.tokenizer.decode(&g.tokens)?;
        if args.json {
            let mut line = serde_json::json!({
                "prompt": text,
                "completion": completion,
                "tokens": g.tokens,
                "token_logprobs": g.logprobs,
                "tokens_per_second": g.tokens.len() as f64 / seconds,
                "finish_reason": g.finish.as_str(),
            });
            if let Some(name) = name {
                line["adapter"] = name.clone().into();
            }
            println!("{line}");
        } else {
            println!(
                "{text:?} + {completion:?} ({}, {} tokens)",
                g.finish.as_str(),
                g.tokens.len()
            );
        }
    }
    Ok(())
}

fn context_demo(n: usize, model: &Decoder, base: &DecoderBase) -> Result<(), Error> {
    let test = SentimentDataset::load("fixtures/data/en/test.tsv")?;
    let max = model.context_len().unwrap_or(usize::MAX);
    let eos = base.eos[0];
    let (mut alone, mut with_prefix, mut count) = (0.0, 0.0, 0usize);
    for text in test.texts() {
        if count == n {
            break;
        }
        let ids = base.tokenizer.encode(text, false)?;
        // Reviews long enough to split, short enough that <eos> + both halves fit.
        if ids.len() < 16 || ids.len() + 1 > max {
            continue;
        }
        let (first, second) = ids.split_at(ids.len() / 2);
        alone += continuation_nll(model, &[eos], second);
        let context: Vec<u32> = std::iter::once(eos).chain(first.iter().copied()).collect();
        with_prefix += continuation_nll(model, &context, second);
        count += 1;
    }
    if count == 0 {
        return Err(Error::Usage("no test review has 16 to 63 tokens".into()));
    }
    let (alone, with_prefix) = (alone / count as f64, with_prefix / count as f64);
    println!(
        "{count} English test reviews (16-{} tokens; never seen in pre-training), second half:",
        max.min(9999) - 1
    );
    println!("  alone:                    perplexity {:.1}", alone.exp());
    println!(
        "  after its own first half: perplexity {:.1}",
        with_prefix.exp()
    );
    Ok(())
}

fn run(args: &Args) -> Result<(), Error> {
    let device = parse_one_device(&args.device, "generate")?;
    let base = with_adapters(args, DecoderBase::load(&args.base, &device)?)?;
    let model = &base.model;
    match (args.context_demo, args.prompts.is_empty()) {
        (Some(n), _) => context_demo(n, model, &base),
        (None, true) if named_adapters(args).len() > 1 => Err(Error::Usage(
            "several adapters decode as a batch: give the prompts with --prompt".into(),
        )),
        (None, true) => show_steps(args, model, &base),
        (None, false) => run_batch(args, model, &base),
    }
}

fn main() -> ExitCode {
    allocator::retain_freed_memory();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
