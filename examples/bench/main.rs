//! Whole-model step times: full fine-tuning vs LoRA vs Burn's `apply_lora`, and inference
//! with the adapter unmerged and merged. Each case runs in a fresh process, so its peak RSS
//! is its own.
//!
//! ```sh
//! cargo run --release --example bench
//! cargo run --release --example bench -- --d-model 256 --layers 6 --out runs/bench.json
//! cargo run --release --example bench -- --floor     # also the q,v-biases-only floor
//! cargo run --release --example bench -- --scaling   # trainable, step time, adapter bytes vs r and d_model
//! ```
//!
//! `--out` writes `{"backend", "cases": [{"name", "median_seconds", "min_seconds",
//! "max_seconds", "peak_rss_bytes", "trainable_params"}]}`, the shape
//! `scripts/peft_bench.py` writes for PyTorch + PEFT; with `--floor`, the last case is
//! `floor_qv`.
//!
//! `--llm qwen2-0.5b` runs the LLM-size cases instead (see `llm.rs`): a decoder of
//! Qwen2.5-0.5B's geometry with random weights, batch 4 × 256 tokens; `--out` writes
//! `{"backend", "cpu", "model", "sizes", "cases": [{"name", "median_seconds",
//! "peak_rss_bytes", ...}]}`, with `tokens_per_second` for prefill and decode, and
//! `skipped` (the reason) for a case that could not run.
//!
//! ```sh
//! cargo run --release --example bench -- --llm qwen2-0.5b --out runs/llm.json
//! ```

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use burn_lora_demo::device::parse_one_device;
use cases::{Case, CaseResult, Sizes, run_case};

use burn_lora_demo::memory::peak_rss;
use burn_lora_demo::train::replicas_for;
use clap::Parser;

#[path = "../common/allocator.rs"]
mod allocator;
mod cases;
mod llm;

/// Step timings of a GPT-shaped classifier, one case per process.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Where to compute: auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N]
    /// (auto: Burn's default device, which honours BURN_DEVICE).
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 8192)]
    vocab: usize,
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 512)]
    d_ff: usize,
    /// Batch rows (default 32; 4 with --llm).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per row (default 64; 256 with --llm).
    #[arg(long)]
    seq: Option<usize>,
    /// LoRA rank, alpha = 2 · rank (default 8; 16 with --llm).
    #[arg(long)]
    rank: Option<usize>,
    /// The LLM-size cases on a decoder of this geometry: qwen2-0.5b (Qwen2.5-0.5B's), or
    /// tiny (a test's).
    #[arg(long)]
    llm: Option<String>,
    /// With --llm: prompt tokens per row when decoding.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// With --llm: tokens generated per row when decoding.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Training threads, each running forward and backward on its part of the batch
    /// (default: one per core on a CPU device, 1 on a GPU).
    #[arg(long)]
    replicas: Option<usize>,
    /// Instead of the cases: how trainable parameters, step time and adapter bytes grow
    /// with r in {1..64} and with d_model in {128..1024} (LoRA q,v vs full).
    #[arg(long)]
    scaling: bool,
    /// Timed steps per case (default 20; 3 with --llm).
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed steps first (default 3; 1 with --llm).
    #[arg(long)]
    warmup: Option<usize>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only this case and print it as JSON (used for the per-case processes).
    #[arg(long)]
    case: Option<String>,
    /// With --llm: run only these cases (comma-separated names), as
    /// `scripts/peft_llm_bench.py --only` does.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also time `floor_qv`: only the query and value biases trainable, the least a q,v
    /// adapter's step can cost here (the backward pass reaches every block, no weight
    /// gradient, no branch). Printed after the table, and written to `--out` as the last
    /// case.
    #[arg(long)]
    floor: bool,
    /// With --llm: the training cases take the loss through Burn's `CrossEntropyLoss` on
    /// the logits (whole, or 64 positions a chunk with checkpointing), not
    /// `linear_cross_entropy` (to measure what that is worth).
    #[arg(long)]
    plain_head_loss: bool,
    /// Keep the C allocator's defaults instead of `allocator::retain_freed_memory` (to
    /// measure what that setting is worth).
    #[arg(long)]
    malloc_defaults: bool,
}

impl Args {
    /// `value`, or its default: `llm` with `--llm`, else `plain`.
    fn or(&self, value: Option<usize>, plain: usize, llm: usize) -> usize {
        value.unwrap_or(if self.llm.is_some() { llm } else { plain })
    }

    fn steps(&self) -> usize {
        self.or(self.steps, 20, 3)
    }

    fn warmup(&self) -> usize {
        self.or(self.warmup, 3, 1)
    }

    fn replicas(&self) -> usize {
        self.replicas.unwrap_or_else(|| {
            parse_one_device(&self.device, "bench").map_or(1, |d| replicas_for(&d))
        })
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            vocab: self.vocab,
            d_model: self.d_model,
            layers: self.layers,
            heads: self.heads,
            d_ff: self.d_ff,
            batch: self.or(self.batch, 32, 4),
            seq: self.or(self.seq, 64, 256),
            rank: self.or(self.rank, 8, 16),
            replicas: self.replicas(),
        }
    }

    fn llm_sizes(&self) -> llm::LlmSizes {
        let sizes = self.sizes();
        llm::LlmSizes {
            batch: sizes.batch,
            seq: sizes.seq,
            rank: sizes.rank,
            replicas: sizes.replicas,
            prompt: self.prompt_tokens,
            new_tokens: self.new_tokens,
            plain_head_loss: self.plain_head_loss,
        }
    }

    fn flags(&self) -> Vec<String> {
        let pairs = [
            ("--vocab", self.vocab),
            ("--d-model", self.d_model),
            ("--layers", self.layers),
            ("--heads", self.heads),
            ("--d-ff", self.d_ff),
            ("--batch", self.sizes().batch),
            ("--seq", self.sizes().seq),
            ("--rank", self.sizes().rank),
            ("--replicas", self.sizes().replicas),
            ("--steps", self.steps()),
            ("--warmup", self.warmup()),
            ("--prompt-tokens", self.prompt_tokens),
            ("--new-tokens", self.new_tokens),
        ];
        let mut flags: Vec<String> = pairs
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect();
        if self.malloc_defaults {
            flags.push("--malloc-defaults".into());
        }
        if self.plain_head_loss {
            flags.push("--plain-head-loss".into());
        }
        flags.extend(["--device".to_string(), self.device.clone()]);
        if let Some(llm) = &self.llm {
            flags.extend(["--llm".to_string(), llm.clone()]);
        }
        flags
    }
}

fn child(args: &Args, name: &str) -> Result<(), String> {
    let device = parse_one_device(&args.device, "bench").map_err(|e| e.to_string())?;
    if let Some(llm) = &args.llm {
        let config = llm::geometry(llm)?;
        let sizes = args.llm_sizes();
        let mut json = llm::run(name, &config, &sizes, args.warmup(), args.steps(), &device)?;
        json["peak_rss_bytes"] = peak_rss().unwrap_or(0).into();
        println!("{json}");
        return Ok(());
    }
    let case = Case::from_name(name).ok_or(format!("unknown case {name}"))?;
    let result = run_case(case, &args.sizes(), args.warmup(), args.steps(), &device)
        .map_err(|e| e.to_string())?;
    let mut json = serde_json::to_value(&result).map_err(|e| e.to_string())?;
    json["peak_rss_bytes"] = peak_rss().unwrap_or(0).into();
    println!("{json}");
    Ok(())
}

/// This program run again with `args`' flags and `--case case`, to its end.
fn child_process(args: &Args, case: &str) -> Result<std::process::Output, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(&exe)
        .args(args.flags())
        .args(["--case", case])
        .output()
        .map_err(|e| e.to_string())
}

/// Runs `case` in a fresh process with `args`' sizes; its result and peak RSS.
fn in_process(args: &Args, case: Case) -> Result<(CaseResult, u64), String> {
    let output = child_process(args, case.name())?;
    if !output.status.success() {
        return Err(format!(
            "case {} failed: {}",
            case.name(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let result = CaseResult {
        case: case.name(),
        median_s: json["median_s"].as_f64().unwrap_or(0.0),
        min_s: json["min_s"].as_f64().unwrap_or(0.0),
        max_s: json["max_s"].as_f64().unwrap_or(0.0),
        trainable: json["trainable"].as_u64().unwrap_or(0) as usize,
        adapter_bytes: json["adapter_bytes"].as_u64(),
    };
    Ok((result, json["peak_rss_bytes"].as_u64().unwrap_or(0)))
}

fn backend() -> &'static str {
    if cfg!(feature = "flex") {
        "burn 0.22 flex"
    } else {
        "burn 0.22 ndarray"
    }
}

fn parent(args: &Args) -> Result<(), String> {
    let mut rows: Vec<(CaseResult, u64)> = Vec::new();
    println!(
        "{}; sizes: {:?}; {} timed steps after {} warm-up, each case in its own process\n",
        backend(),
        args.sizes(),
        args.steps(),
        args.warmup()
    );
    for case in Case::ALL {
        let row = in_process(args, case)?;
        eprintln!("{:<20} median {:.1} ms", case.name(), row.0.median_s * 1e3);
        rows.push(row);
    }
    let median = |name: &str| {
        rows.iter()
            .find(|(r, _)| r.case == name)
            .map_or(f64::NAN, |(r, _)| r.median_s)
    };
    let full = median("full");
    let base = median("infer_base");
    println!(
        "\n{:<20} {:>10} {:>10} {:>10} {:>9} {:>10} {:>11}",
        "case", "median ms", "min ms", "max ms", "ratio", "peak MB", "trainable"
    );
    let mut cases = Vec::new();
    for (r, rss) in &rows {
        let ratio = if r.case.starts_with("infer") {
            r.median_s / base
        } else {
            r.median_s / full
        };
        println!(
            "{:<20} {:>10.1} {:>10.1} {:>10.1} {:>8.2}x {:>10.0} {:>11}",
            r.case,
            r.median_s * 1e3,
            r.min_s * 1e3,
            r.max_s * 1e3,
            ratio,
            *rss as f64 / 1e6,
            r.trainable
        );
        cases.push(serde_json::json!({
            "name": r.case,
            "median_seconds": r.median_s,
            "min_seconds": r.min_s,
            "max_seconds": r.max_s,
            "peak_rss_bytes": rss,
            "trainable_params": r.trainable,
        }));
    }
    println!(
        "\nratio: training cases against full fine-tuning, inference cases against infer_base"
    );
    if args.floor {
        let (floor, rss) = in_process(args, Case::FloorQv)?;
        cases.push(serde_json::json!({
            "name": floor.case,
            "median_seconds": floor.median_s,
            "min_seconds": floor.min_s,
            "max_seconds": floor.max_s,
            "peak_rss_bytes": rss,
            "trainable_params": floor.trainable,
        }));
        let (lora, builtin) = (median("lora_qv"), median("burn_apply_lora_qv"));
        println!(
            "\nfloor_qv (q,v biases only) median {:.1} ms: lora_qv {:.2}x of it, \
             burn_apply_lora_qv {:.2}x; so lora_qv / burn_apply_lora_qv can be no lower \
             than {:.2} with a free branch",
            floor.median_s * 1e3,
            lora / floor.median_s,
            builtin / floor.median_s,
            floor.median_s / builtin
        );
    }
    if let Some(out) = &args.out {
        let json = serde_json::json!({"backend": backend(), "cpu": cpu_model(), "cases": cases});
        write_json(out, &json)?;
    }
    Ok(())
}

/// Trainable parameters, step time and adapter bytes against the rank, then against the
/// width (full fine-tuning beside LoRA q,v).
fn scaling(args: &Args) -> Result<(), String> {
    let steps = args.steps().min(5);
    let quick = Args {
        steps: Some(steps),
        warmup: Some(1),
        ..args.clone()
    };
    println!(
        "{}; LoRA r on query/value, alpha = 2r; median of {steps} steps after 1 warm-up\n",
        backend()
    );
    println!(
        "{:>6} {:>11} {:>10} {:>14}",
        "r", "trainable", "step ms", "adapter bytes"
    );
    for rank in [1, 2, 4, 8, 16, 32, 64] {
        let (r, _) = in_process(
            &Args {
                rank: Some(rank),
                ..quick.clone()
            },
            Case::LoraQv,
        )?;
        println!(
            "{rank:>6} {:>11} {:>10.1} {:>14}",
            r.trainable,
            r.median_s * 1e3,
            r.adapter_bytes.unwrap_or(0)
        );
    }
    println!(
        "\n{:>8} {:>11} {:>10} {:>11} {:>10} {:>7} {:>14}",
        "d_model", "full train", "full ms", "LoRA train", "LoRA ms", "ratio", "adapter bytes"
    );
    for d_model in [128, 256, 512, 1024] {
        let sized = Args {
            d_model,
            d_ff: 4 * d_model,
            ..quick.clone()
        };
        let (full, _) = in_process(&sized, Case::Full)?;
        let (lora, _) = in_process(&sized, Case::LoraQv)?;
        println!(
            "{d_model:>8} {:>11} {:>10.1} {:>11} {:>10.1} {:>6.2}x {:>14}",
            full.trainable,
            full.median_s * 1e3,
            lora.trainable,
            lora.median_s * 1e3,
            lora.median_s / full.median_s,
            lora.adapter_bytes.unwrap_or(0)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.malloc_defaults {
        allocator::retain_freed_memory();
    }
    let result = match &args.case {
        _ if args.steps() == 0 => Err("--steps must be at least 1".into()),
        Some(name) => child(&args, name),
        None if args.llm.is_some() => llm_parent(&args),
        None if args.scaling => scaling(&args),
        None => parent(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The median of sorted `times`: the middle one, or the mean of the middle two, as
/// Python's `statistics.median` takes it in the peer scripts (before 2026-12-04 this took
/// the upper of the two, so a 2-step case reported its slower step against PyTorch's mean).
fn median(times: &[f64]) -> f64 {
    let n = times.len();
    match n % 2 {
        1 => times[n / 2],
        _ => (times[n / 2 - 1] + times[n / 2]) / 2.0,
    }
}

/// Writes `json` to `out`, pretty-printed, and says so.
fn write_json(out: &std::path::Path, json: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(json).map_err(|e| e.to_string())?;
    std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The CPU's model name, from /proc/cpuinfo ("unknown" elsewhere).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `case` of `--llm` in a fresh process: its JSON with its peak RSS, or the case
/// marked `skipped` with the reason when its process failed (out of memory, a panic).
fn llm_in_process(args: &Args, case: &str) -> serde_json::Value {
    let output = match child_process(args, case) {
        Ok(output) => output,
        Err(e) => return serde_json::json!({"name": case, "skipped": e}),
    };
    // The JSON is the last line: a case may print a note before it.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let parsed = serde_json::from_str::<serde_json::Value>(last);
    match (output.status.success(), parsed) {
        (true, Ok(json)) => json,
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .rev()
                .find(|l| l.contains("panicked") || l.starts_with("error"))
                .map(str::to_string)
                .unwrap_or_else(|| format!("the case's process ended with {}", output.status));
            serde_json::json!({"name": case, "skipped": reason})
        }
    }
}

/// The `--llm` cases, one process each, as a table and, with `--out`, JSON.
fn llm_parent(args: &Args) -> Result<(), String> {
    let name = args.llm.clone().expect("called with --llm");
    let config = llm::geometry(&name)?;
    let sizes = args.llm_sizes();
    println!(
        "{}; {}; {name}: {} parameters; {sizes:?}; {} timed steps after {} warm-up, each case in its own process\n",
        backend(),
        cpu_model(),
        config.num_params(),
        args.steps(),
        args.warmup()
    );
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "case", "median s", "min s", "max s", "peak MB", "tokens/s"
    );
    if let Some(unknown) = args.only.iter().find(|c| !llm::CASES.contains(&c.as_str())) {
        return Err(format!(
            "--only {unknown}: no such case; the cases are {}",
            llm::CASES.join(", ")
        ));
    }
    let mut cases = Vec::new();
    for case in llm::CASES {
        if !args.only.is_empty() && !args.only.iter().any(|c| c == case) {
            continue;
        }
        let json = llm_in_process(args, case);
        match json["skipped"].as_str() {
            Some(reason) => println!("{case:<20} skipped: {reason}"),
            None => println!(
                "{case:<20} {:>10.3} {:>10.3} {:>10.3} {:>10.0} {:>11}",
                json["median_seconds"].as_f64().unwrap_or(f64::NAN),
                json["min_seconds"].as_f64().unwrap_or(f64::NAN),
                json["max_seconds"].as_f64().unwrap_or(f64::NAN),
                json["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6,
                json["tokens_per_second"]
                    .as_f64()
                    .map_or(String::new(), |t| format!("{t:.1}")),
            ),
        }
        cases.push(json);
    }
    if let Some(out) = &args.out {
        let json = serde_json::json!({
            "backend": backend(),
            "cpu": cpu_model(),
            "model": name,
            "sizes": sizes,
            "cases": cases,
        });
        write_json(out, &json)?;
    }
    Ok(())
}
