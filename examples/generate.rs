//! What "autoregressive" means: the pre-trained base continues a prompt one token at a time,
//! each token predicted from all the tokens before it. Prints the model's top candidates at
//! every step, then the continuation.
//!
//! `--context-demo N` measures how much the model uses its context: the perplexity of the
//! second half of N English test reviews, alone and after the review's own first half.
//!
//! ```sh
//! cargo run --release --example generate
//! cargo run --release --example generate -- "这本书" --top-k 20 --seed 3
//! cargo run --release --example generate -- --context-demo 300
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn_lora_demo::Error;
use burn_lora_demo::data::SentimentDataset;
use burn_lora_demo::device::parse_one_device;
use burn_lora_demo::model::{Gpt, Sampling, continuation_nll, generate, top_next};
use burn_lora_demo::tokenizer::BpeTokenizer;
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Continue a prompt with the pre-trained base, showing each step's candidates.
#[derive(Parser, Debug)]
struct Args {
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N]
    /// (auto: Burn's default device, which honours BURN_DEVICE).
    #[arg(long, default_value = "auto")]
    device: String,
    /// The prompt.
    #[arg(default_value = "The movie is")]
    prompt: String,
    /// Base model directory.
    #[arg(long, default_value = "fixtures/base")]
    base: PathBuf,
    /// Tokens to generate.
    #[arg(long, default_value_t = 12)]
    max_new: usize,
    /// Sample from the k most likely tokens (0: always take the most likely).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Instead: the perplexity of N test reviews' second halves, with and without the
    /// first half before them.
    #[arg(long)]
    context_demo: Option<usize>,
}

fn piece(tokenizer: &BpeTokenizer, id: u32) -> String {
    match tokenizer.token(id) {
        Some(token) if token.starts_with('<') && token.ends_with('>') => token,
        _ => format!("{:?}", tokenizer.decode(&[id]).unwrap_or_default()),
    }
}

fn show_steps(args: &Args, model: &Gpt, tokenizer: &BpeTokenizer) -> Result<(), Error> {
    let prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(Error::Usage("the prompt is empty".into()));
    }
    let sampling = match args.top_k {
        0 => Sampling::Greedy,
        k => Sampling::TopK {
            k,
            temperature: 1.0,
        },
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut context = prompt.clone();
    println!("prompt {:?}: {} tokens", args.prompt, prompt.len());
    for step in 1..=args.max_new {
        let candidates = top_next(model, &context, 3)
            .into_iter()
            .map(|(id, p)| format!("{} {:.3}", piece(tokenizer, id), p))
            .collect::<Vec<_>>()
            .join(", ");
        let next = generate(
            model,
            &context,
            1,
            Some(tokenizer.eos_id()),
            sampling,
            &mut rng,
        );
        let Some(&next) = next.first() else { break };
        println!(
            "step {step:>2}: top 3 [{candidates}] -> {}",
            piece(tokenizer, next)
        );
        if next == tokenizer.eos_id() {
            break;
        }
        context.push(next);
    }
    println!(
        "\n{:?} + {:?}",
        args.prompt,
        tokenizer.decode(&context[prompt.len()..])?
    );
    Ok(())
}

fn context_demo(n: usize, model: &Gpt, tokenizer: &BpeTokenizer) -> Result<(), Error> {
    let test = SentimentDataset::load("fixtures/data/en/test.tsv")?;
    let max = model.max_seq_len();
    let (mut alone, mut with_prefix, mut count) = (0.0, 0.0, 0usize);
    for text in test.texts() {
        if count == n {
            break;
        }
        let ids = tokenizer.encode(text)?;
        // Reviews long enough to split, short enough that <eos> + both halves fit.
        if ids.len() < 16 || ids.len() + 1 > max {
            continue;
        }
        let (first, second) = ids.split_at(ids.len() / 2);
        let eos = [tokenizer.eos_id()];
        alone += continuation_nll(model, &eos, second);
        let context: Vec<u32> = eos.iter().chain(first).copied().collect();
        with_prefix += continuation_nll(model, &context, second);
        count += 1;
    }
    if count == 0 {
        return Err(Error::Usage("no test review has 16 to 63 tokens".into()));
    }
    let (alone, with_prefix) = (alone / count as f64, with_prefix / count as f64);
    println!(
        "{count} English test reviews (16-{} tokens; never seen in pre-training), second half:",
        max - 1
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
    let tokenizer = BpeTokenizer::load(args.base.join("tokenizer.json"))?;
    let (_, model) = Gpt::load(&args.base, "model.bpk", &device)?;
    match args.context_demo {
        Some(n) => context_demo(n, &model, &tokenizer),
        None => show_steps(args, &model, &tokenizer),
    }
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
