"""Interleaved rounds of burn-lora's bench and PyTorch + PEFT's, side by side, on one machine.

Each round runs `target/release/examples/bench --floor` (every case in a process of its own)
and then `scripts/peft_bench.py` (the same), so both sides see the same moment of the
machine. The summary gives, per case, the median over rounds of each round's median step,
the spread (min-max of the rounds' medians), and the median of the same-round ratios
ours / PyTorch. Writes every round's JSON and `summary.md` under --out. Not run in CI:

    cargo build --release --example bench
    .venv/bin/python scripts/bench_rounds.py --rounds 5 --out runs/bench-rounds

Both sides use two cores: PyTorch with `torch.set_num_threads(2)`; ours with two
data-parallel replicas for training (one thread each) and gemm's rayon pool of two threads.
Extra arguments after `--` go to both benches (sizes, steps).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Ours -> PyTorch's case of the same name, where there is one.
PAIRS = [
    ("full", "full"),
    ("lora_qv", "lora_qv"),
    ("lora_qv_dense", None),
    ("lora_all_linear", "lora_all_linear"),
    ("burn_apply_lora_qv", None),
    ("floor_qv", None),
    ("infer_base", "infer_base"),
    ("infer_lora_unmerged", "infer_lora_unmerged"),
    ("infer_lora_merged", "infer_lora_merged"),
]


def cases(path):
    with open(path) as f:
        return {c["name"]: c for c in json.load(f)["cases"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="runs/bench-rounds")
    parser.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = ROOT / "target/release/examples/bench"
    ours, theirs = [], []
    for r in range(args.rounds):
        o = out / f"ours-{r}.json"
        t = out / f"peft-{r}.json"
        subprocess.run([str(bench), "--floor", "--out", str(o), *args.extra], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        subprocess.run([args.python, str(ROOT / "scripts/peft_bench.py"), "--threads", "2",
                        "--out", str(t), *args.extra], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        ours.append(cases(o))
        theirs.append(cases(t))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    def ms(x):
        return f"{1e3 * x:.1f}"

    cpu = json.loads(Path(o).read_text()).get("cpu", "unknown")
    lines = [
        f"{args.rounds} interleaved rounds, median of the rounds' medians (min-max of the rounds), "
        f"and the median of the same-round ratios. CPU: {cpu}.",
        "",
        "| case | burn-lora | spread | PyTorch + PEFT | spread | ours / PyTorch | peak RSS ours / PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for name, peer in PAIRS:
        if name not in ours[0]:
            continue
        mine = [rnd[name]["median_seconds"] for rnd in ours]
        row = [name, ms(statistics.median(mine)), f"{ms(min(mine))}-{ms(max(mine))}"]
        entry = {"ours_median_seconds": statistics.median(mine), "ours_rounds": mine}
        if peer and peer in theirs[0]:
            other = [rnd[peer]["median_seconds"] for rnd in theirs]
            ratios = [a / b for a, b in zip(mine, other)]
            rss = statistics.median(rnd[name]["peak_rss_bytes"] for rnd in ours) / 1e6
            rss_t = statistics.median(rnd[peer]["peak_rss_bytes"] for rnd in theirs) / 1e6
            row += [ms(statistics.median(other)), f"{ms(min(other))}-{ms(max(other))}",
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                    f"{rss:.0f} / {rss_t:.0f} MB"]
            entry.update(peft_median_seconds=statistics.median(other), peft_rounds=other,
                         same_round_ratios=ratios)
        else:
            row += ["", "", "", ""]
        summary[name] = entry
        lines.append("| " + " | ".join(row) + " |")

    def same_round(a, b):
        return statistics.median(r[a]["median_seconds"] / r[b]["median_seconds"] for r in ours)

    lines += [
        "",
        f"- LoRA q,v / floor_qv (same round): {same_round('lora_qv', 'floor_qv'):.3f}",
        f"- merged / base inference (same round): {same_round('infer_lora_merged', 'infer_base'):.3f}",
        f"- unmerged / base inference (same round): {same_round('infer_lora_unmerged', 'infer_base'):.3f}",
        f"- LoRA q,v / full (same round): {same_round('lora_qv', 'full'):.3f}",
    ]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(text)


if __name__ == "__main__":
    main()
