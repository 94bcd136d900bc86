"""The PyTorch + PEFT side of `cargo run --release --example bench`: the same sizes (a
BERT-style encoder, vocab 8192, d_model 128, 4 layers, 4 heads, d_ff 512, batch 32 x 64
tokens, one AdamW step), the same cases, the same JSON shape. Not run in CI:

    python3 -m venv .venv && .venv/bin/pip install torch transformers peft
    .venv/bin/python scripts/peft_bench.py --threads 2 --out runs/bench-peft.json

Each case runs in a fresh process, so its peak RSS (ru_maxrss) is its own.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = [
    "full",
    "lora_qv",
    "lora_all_linear",
    "infer_base",
    "infer_lora_unmerged",
    "infer_lora_merged",
]


def run_case(name, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.d_ff,
        max_position_embeddings=max(args.seq, 64),
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    targets = {
        "lora_qv": ["query", "value"],
        "infer_lora_unmerged": ["query", "value"],
        "infer_lora_merged": ["query", "value"],
        "lora_all_linear": ["query", "key", "value", "dense"],
    }.get(name)
    if targets:
        lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=targets)
        model = get_peft_model(model, lora)
        if name == "infer_lora_merged":
            model = model.merge_and_unload()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if name.startswith("infer"):
        trainable = 0  # as burn-lora's bench reports inference cases
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq))
    labels = torch.randint(0, 2, (args.batch,))
    infer = name.startswith("infer")
    if infer:
        model.eval()
        def step():
            with torch.no_grad():
                model(input_ids=tokens).logits.sum().item()
    else:
        model.train()
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        def step():
            loss = model(input_ids=tokens, labels=labels).loss
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
    return {"name": name, **timed(step, args.warmup, args.steps), "trainable_params": trainable}


def timed(step, warmup, steps):
    """Runs `step` `warmup` times untimed, then `steps` times timed: the median, min and max
    seconds and this process's peak RSS so far."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "median_seconds": statistics.median(times),
        "min_seconds": min(times),
        "max_seconds": max(times),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, as the Rust bench records it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def child_cases(script, names, args, skip_failed=False):
    """Runs each case of `names` in a process of its own (`script --case NAME`, the other
    flags forwarded), so each has its own peak RSS; yields the JSON line each prints as it
    ends. With `skip_failed`, a case that fails is `{"name", "skipped": its last error
    line}`; otherwise its failure raises."""
    forward = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("case", "out", "only") and v is not None
    ]
    for name in names:
        run = subprocess.run(
            [sys.executable, script, "--case", name, *forward],
            check=not skip_failed, capture_output=True, text=True,
        )
        lines = run.stdout.strip().splitlines()
        try:
            yield json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            err = [l for l in run.stderr.strip().splitlines() if l.strip()]
            reason = err[-1] if err else f"exit status {run.returncode}"
            yield {"name": name, "skipped": reason}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    import torch, peft
    cases = list(child_cases(__file__, CASES, args))
    backend = f"pytorch {torch.__version__} + peft {peft.__version__}, {args.threads} threads"
    full = cases[0]["median_seconds"]
    base = cases[3]["median_seconds"]
    print(f"{backend}; {cpu_model()}")
    print(f"{'case':<22}{'median ms':>10}{'min':>8}{'max':>8}{'ratio':>7}{'peak MB':>9}{'trainable':>11}")
    for c in cases:
        ref = base if c["name"].startswith("infer") else full
        print(
            f"{c['name']:<22}{1e3 * c['median_seconds']:>10.1f}{1e3 * c['min_seconds']:>8.1f}"
            f"{1e3 * c['max_seconds']:>8.1f}{c['median_seconds'] / ref:>7.2f}"
            f"{c['peak_rss_bytes'] / 1e6:>9.0f}{c['trainable_params']:>11}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"backend": backend, "cpu": cpu_model(), "cases": cases}, f, indent=2)


if __name__ == "__main__":
    main()
