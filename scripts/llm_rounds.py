"""Interleaved rounds of the LLM-size benchmark: burn-lora's `bench --llm` and PyTorch + PEFT's
`scripts/peft_llm_bench.py`, back to back in each round, so both sides see the same moment of
the machine. Prints, per case, the median over rounds of each side's median time and peak RSS,
the spread (min-max over rounds) and the median of the same-round ratios ours / PyTorch, then
the issue's targets. Writes every round's JSON and `summary.md` under --out. Not run in CI:

    cargo build --release --example bench
    .venv/bin/python scripts/llm_rounds.py --rounds 2 --out runs/llm-rounds

Extra arguments after `--` go to both sides (`--steps 2`, `--batch 2`, ...). `--variant FLAG`
(repeatable) also runs our bench with FLAG in each round, right after the plain run, and
prints its cases as `name FLAG` with their ratios to PyTorch and to our plain run
(`--variant=--plain-head-loss`).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def by_name(report):
    return {c["name"]: c for c in report["cases"] if "skipped" not in c}


def spread(values):
    return f"{min(values):.3g}-{max(values):.3g}" if values else "-"


def med(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--llm", default="qwen2-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/llm-rounds")
    parser.add_argument("--variant", action="append", default=[],
                        help="a flag of ours to run as well in each round")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ours_exe = ROOT / "target" / "release" / "examples" / "bench"
    rounds = []
    for r in range(args.rounds):
        ours_json, theirs_json = out / f"ours-{r}.json", out / f"peft-{r}.json"
        print(f"round {r + 1}/{args.rounds}: burn-lora", flush=True)
        subprocess.run(
            [str(ours_exe), "--llm", args.llm, "--out", str(ours_json), *args.extra],
            check=True,
        )
        variants = {}
        for flag in args.variant:
            path = out / f"ours-{r}{flag}.json"
            print(f"round {r + 1}/{args.rounds}: burn-lora {flag}", flush=True)
            subprocess.run(
                [str(ours_exe), "--llm", args.llm, "--out", str(path), flag, *args.extra],
                check=True,
            )
            variants[flag] = json.loads(path.read_text())
        print(f"round {r + 1}/{args.rounds}: PyTorch + PEFT", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "peft_llm_bench.py"), "--llm", args.llm,
             "--threads", str(args.threads), "--out", str(theirs_json), *args.extra],
            check=True,
        )
        ours = json.loads(ours_json.read_text())
        for flag, report in variants.items():
            ours["cases"] += [dict(c, name=f"{c['name']} {flag}") for c in report["cases"]]
        rounds.append((ours, json.loads(theirs_json.read_text())))

    ours0, theirs0 = rounds[0]
    lines = [
        f"# LLM-size benchmark, {args.llm}, {args.rounds} interleaved rounds",
        "",
        f"- ours: {ours0['backend']}; theirs: {theirs0['backend']}",
        f"- CPU: {ours0['cpu']}",
        f"- sizes: {json.dumps(ours0['sizes'])}",
        "",
        "| case | ours median s (spread) | PyTorch median s (spread) | ratio time | "
        "ours peak MB | PyTorch peak MB | ratio RSS | ours tok/s | PyTorch tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = [c["name"] for c in ours0["cases"]]
    for name in names:
        o = [by_name(a).get(name) for a, _ in rounds]
        t = [by_name(b).get(name.split(" ")[0]) for _, b in rounds]
        ot = [c["median_seconds"] for c in o if c]
        tt = [c["median_seconds"] for c in t if c]
        orss = [c["peak_rss_bytes"] / 1e6 for c in o if c]
        trss = [c["peak_rss_bytes"] / 1e6 for c in t if c]
        ratio_t = [a["median_seconds"] / b["median_seconds"] for a, b in zip(o, t) if a and b]
        ratio_m = [a["peak_rss_bytes"] / b["peak_rss_bytes"] for a, b in zip(o, t) if a and b]
        otps = [c["tokens_per_second"] for c in o if c and "tokens_per_second" in c]
        ttps = [c["tokens_per_second"] for c in t if c and "tokens_per_second" in c]
        skipped = [
            f"{side}: {c['skipped']}"
            for side, report in (("ours", ours0), ("PyTorch", theirs0))
            for c in report["cases"]
            if c["name"] in (name, name.split(" ")[0]) and "skipped" in c
        ]
        lines.append(
            f"| {name} | {med(ot):.3f} ({spread(ot)}) | {med(tt):.3f} ({spread(tt)}) | "
            f"{med(ratio_t):.2f} ({spread(ratio_t)}) | {med(orss):.0f} | {med(trss):.0f} | "
            f"{med(ratio_m):.2f} | {med(otps) if otps else float('nan'):.1f} | "
            f"{med(ttps) if ttps else float('nan'):.1f} |"
        )
        for s in skipped:
            lines.append(f"|   skipped | {s} | | | | | | | |")

    def ratio(name, key, other=None):
        """Same-round ratios of our `name` to PyTorch's, or to our own `other`."""
        values = []
        for a, b in rounds:
            x = by_name(a).get(name)
            y = by_name(a if other else b).get(other or name)
            if x and y:
                values.append(x[key] / y[key])
        return values

    targets = [
        ("LoRA step, ours / PEFT (target <= 0.8)", ratio("llm_lora_step", "median_seconds")),
        ("LoRA peak RSS, ours / PEFT (target <= 0.9)", ratio("llm_lora_step", "peak_rss_bytes")),
        ("Q8-base LoRA peak RSS / our f32-base LoRA peak (target <= 0.6)",
         ratio("llm_lora_q8_step", "peak_rss_bytes", "llm_lora_step")),
        ("Q8 base with checkpointing: our peak RSS / our f32 base with it",
         ratio("llm_lora_q8_ckpt_step", "peak_rss_bytes", "llm_lora_ckpt_step")),
        ("Q8 base with checkpointing: our peak RSS / our plain f32-base LoRA step",
         ratio("llm_lora_q8_ckpt_step", "peak_rss_bytes", "llm_lora_step")),
        ("Q8 base and embedding: our peak RSS / our f32-base LoRA peak",
         ratio("llm_lora_q8_embed_step", "peak_rss_bytes", "llm_lora_step")),
        ("Q8 base and embedding with checkpointing: our peak RSS / our f32 base with it",
         ratio("llm_lora_q8_embed_ckpt_step", "peak_rss_bytes", "llm_lora_ckpt_step")),
        ("decode b1 tokens/s, ours / transformers (target >= 1.2)",
         ratio("llm_decode_b1", "tokens_per_second")),
        ("decode b4 tokens/s, ours / transformers (target >= 1.2)",
         ratio("llm_decode_b4", "tokens_per_second")),
        ("checkpointing: our peak RSS / without (target <= 0.7)",
         ratio("llm_lora_ckpt_step", "peak_rss_bytes", "llm_lora_step")),
        ("checkpointing: our step time / without (target <= 1.4)",
         ratio("llm_lora_ckpt_step", "median_seconds", "llm_lora_step")),
        ("PyTorch checkpointing: peak RSS / without", [
            by_name(b)["llm_lora_ckpt_step"]["peak_rss_bytes"]
            / by_name(b)["llm_lora_step"]["peak_rss_bytes"]
            for _, b in rounds
            if "llm_lora_step" in by_name(b) and "llm_lora_ckpt_step" in by_name(b)
        ]),
    ]
    for flag in args.variant:
        for name in names:
            if " " not in name and f"{name} {flag}" in names:
                targets.append((f"{name}: ours / ours {flag}, time",
                                ratio(name, "median_seconds", f"{name} {flag}")))
                targets.append((f"{name}: ours / ours {flag}, peak RSS",
                                ratio(name, "peak_rss_bytes", f"{name} {flag}")))
    lines += ["", "| target | median of rounds | spread |", "|---|---|---|"]
    for label, values in targets:
        lines.append(f"| {label} | {med(values):.2f} | {spread(values)} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
