"""Before and after: several builds of the bench example, interleaved, case by case.

Each round runs every case once with every binary (`BINARY --case NAME`, a process of its
own, 20 timed steps after 3 warm-up by default), in turn, so the builds see the same moments
of the machine. Prints, per case, each build's median over rounds of its per-round median,
the spread, and the median same-round ratio to the first build. Not run in CI:

    cargo build --release --example bench && cp target/release/examples/bench /tmp/bench-before
    # ... change the code ...
    cargo build --release --example bench && cp target/release/examples/bench /tmp/bench-after
    python3 scripts/bench_ab.py --rounds 5 --cases infer_base,full /tmp/bench-before /tmp/bench-after
"""

import argparse
import json
import statistics
import subprocess


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default="full,lora_qv,floor_qv,infer_base,infer_lora_merged")
    parser.add_argument("--extra", default="", help="more bench flags, space-separated")
    parser.add_argument("--ratio", help="also CASE_A/CASE_B: their same-round ratio per build")
    parser.add_argument("binaries", nargs="+")
    args = parser.parse_args()
    cases = args.cases.split(",")
    extra = args.extra.split()
    times = {(b, c): [] for b in args.binaries for c in cases}
    for r in range(args.rounds):
        for c in cases:
            for b in args.binaries:
                out = subprocess.run([b, "--case", c, *extra], check=True,
                                     capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                times[(b, c)].append(result["median_s"])
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    first = args.binaries[0]
    print(f"| case | build | median ms | spread | same-round ratio to {first} |")
    print("|---|---|---|---|---|")
    for c in cases:
        for b in args.binaries:
            t = times[(b, c)]
            ratios = [x / y for x, y in zip(t, times[(first, c)])]
            print(f"| {c} | {b} | {1e3 * statistics.median(t):.1f} | "
                  f"{1e3 * min(t):.1f}-{1e3 * max(t):.1f} | "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")


    if args.ratio:
        a, b = args.ratio.split("/")
        for bin_ in args.binaries:
            r = [x / y for x, y in zip(times[(bin_, a)], times[(bin_, b)])]
            print(f"{a} / {b}, {bin_}: median {statistics.median(r):.3f}, rounds "
                  + " ".join(f"{x:.3f}" for x in r))


if __name__ == "__main__":
    main()
