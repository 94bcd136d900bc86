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
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// LoRA rank (alpha = 2 · rank).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Training threads, each running forward and backward on its part of the batch
    /// (default: one per core on a CPU device, 1 on a GPU).
    #[arg(long)]
    replicas: Option<usize>,
    /// Instead of the cases: how trainable parameters, step time and adapter bytes grow
    /// with r in {1..64} and with d_model in {128..1024} (LoRA q,v vs full).
    #[arg(long)]
    scaling: bool,
    /// Timed steps per case.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only this case and print it as JSON (used for the per-case processes).
    #[arg(long)]
    case: Option<String>,
    /// Also time `floor_qv`: only the query and value biases trainable, the least a q,v
    /// adapter's step can cost here (the backward pass reaches every block, no weight
    /// gradient, no branch). Printed after the table, and written to `--out` as the last
    /// case.
    #[arg(long)]
    floor: bool,
    /// Keep the C allocator's defaults instead of `allocator::retain_freed_memory` (to
    /// measure what that setting is worth).
    #[arg(long)]
    malloc_defaults: bool,
}

impl Args {
    fn sizes(&self) -> Sizes {
        Sizes {
            vocab: self.vocab,
            d_model: self.d_model,
            layers: self.layers,
            heads: self.heads,
            d_ff: self.d_ff,
            batch: self.batch,
            seq: self.seq,
            rank: self.rank,
            replicas: self.replicas.unwrap_or_else(|| {
                parse_one_device(&self.device, "bench").map_or(1, |d| replicas_for(&d))
            }),
        }
    }

    fn flags(&self) -> Vec<String> {
        let pairs = [
            ("--vocab", self.vocab),
            ("--d-model", self.d_model),
            ("--layers", self.layers),
            ("--heads", self.heads),
            ("--d-ff", self.d_ff),
            ("--batch", self.batch),
            ("--seq", self.seq),
            ("--rank", self.rank),
            ("--replicas", self.sizes().replicas),
            ("--steps", self.steps),
            ("--warmup", self.warmup),
        ];
        let mut flags: Vec<String> = pairs
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect();
        if self.malloc_defaults {
            flags.push("--malloc-defaults".into());
        }
        flags.extend(["--device".to_string(), self.device.clone()]);
        flags
    }
}

fn child(args: &Args, name: &str) -> Result<(), String> {
    let case = Case::from_name(name).ok_or(format!("unknown case {name}"))?;
    let result = run_case(
        case,
        &args.sizes(),
        args.warmup,
        args.steps,
        &parse_one_device(&args.device, "bench").map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut json = serde_json::to_value(&result).map_err(|e| e.to_string())?;
    json["peak_rss_bytes"] = peak_rss().unwrap_or(0).into();
    println!("{json}");
    Ok(())
}

/// Runs `case` in a fresh process with `args`' sizes; its result and peak RSS.
fn in_process(args: &Args, case: Case) -> Result<(CaseResult, u64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(&exe)
        .args(args.flags())
        .args(["--case", case.name()])
        .output()
        .map_err(|e| e.to_string())?;
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
        args.steps,
        args.warmup
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
        let json = serde_json::json!({"backend": backend(), "cases": cases});
        std::fs::write(
            out,
            serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// Trainable parameters, step time and adapter bytes against the rank, then against the
/// width (full fine-tuning beside LoRA q,v).
fn scaling(args: &Args) -> Result<(), String> {
    let steps = args.steps.min(5);
    let quick = Args {
        steps,
        warmup: 1,
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
                rank,
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
        Some(name) => child(&args, name),
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
