"""The PyTorch + PEFT side of `cargo run --release --example bench -- --llm qwen2-0.5b`: a
Qwen2ForCausalLM of Qwen2.5-0.5B's geometry (24 layers, d 896, 14 heads, 2 KV heads, FFN
4864, vocab 151,936, tied) from a `Qwen2Config` with random init, the same cases, the same
shapes (batch 4 x 256 tokens, LoRA r 16 alpha 32 on all linears, one AdamW step), the same
JSON. Not run in CI:

    python3 -m venv .venv && .venv/bin/pip install torch transformers peft bitsandbytes
    .venv/bin/python scripts/peft_llm_bench.py --llm qwen2-0.5b --threads 2 --out runs/llm-peft.json

Each case runs in a fresh process, so its peak RSS (ru_maxrss) is its own. A case that cannot
run (bitsandbytes' 8-bit on a CPU, out of memory) is written with `skipped` and the reason.
`scripts/llm_rounds.py` runs this and ours interleaved and prints the ratios.
"""

import argparse
import json
import sys

# The timing loop and the CPU's name, shared with the encoder bench beside this file.
from peft_bench import child_cases, cpu_model, timed

CASES = [
    "llm_lora_step",
    "llm_lora_q8_step",
    "llm_lora_ckpt_step",
    "llm_lora_q8_ckpt_step",
    "llm_lora_q8_embed_step",
    "llm_lora_q8_embed_ckpt_step",
    "llm_full_step",
    "llm_prefill",
    "llm_decode_b1",
    "llm_decode_b4",
]

# Ours quantize the tied embedding as well; bitsandbytes keeps embeddings (and lm_head) in
# float, so these are written as skipped, not run.
NO_PEER = {
    "llm_lora_q8_embed_step": "bitsandbytes' 8-bit keeps embeddings and the tied head float",
    "llm_lora_q8_embed_ckpt_step": "bitsandbytes' 8-bit keeps embeddings and the tied head float",
}

GEOMETRY = {
    # hidden, ffn, layers, heads, kv heads, vocab
    "qwen2-0.5b": (896, 4864, 24, 14, 2, 151936),
    "tiny": (64, 128, 2, 4, 2, 512),
}


def qwen2(args):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, ffn, layers, heads, kv, vocab = GEOMETRY[args.llm]
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attn_implementation="sdpa",
    )
    return config, Qwen2ForCausalLM(config)


def q8_model(config, model):
    """The random model saved and loaded back through bitsandbytes' 8-bit, on the CPU."""
    import tempfile

    from transformers import BitsAndBytesConfig, Qwen2ForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        return Qwen2ForCausalLM.from_pretrained(
            tmp,
            quantization_config=BitsAndBytesConfig(load_in_8bit=True),
            device_map="cpu",
        )


def run_case(name, args):
    import torch
    from peft import LoraConfig, get_peft_model

    if name not in CASES:
        raise SystemExit(f"unknown case {name!r}; the cases are {', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config, model = qwen2(args)
    params = sum(p.numel() for p in model.parameters())
    vocab = config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch, args.seq))
    if name in ("llm_lora_q8_step", "llm_lora_q8_ckpt_step"):
        model = q8_model(config, model)
    if name in ("llm_lora_step", "llm_lora_q8_step", "llm_lora_ckpt_step",
                "llm_lora_q8_ckpt_step"):
        if name.endswith("_ckpt_step"):
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=args.rank, lora_alpha=2 * args.rank,
            target_modules="all-linear",
        )
        model = get_peft_model(model, lora)
    tokens_out = None
    if name.startswith("llm_prefill"):
        model.eval()
        trainable = 0

        def step():
            with torch.no_grad():
                model(input_ids=tokens).logits.sum().item()

        tokens_out = args.batch * args.seq
    elif name.startswith("llm_decode"):
        model.eval()
        trainable = 0
        rows = 1 if name == "llm_decode_b1" else 4
        prompts = torch.randint(1, vocab, (rows, args.prompt_tokens))
        mask = torch.ones_like(prompts)

        def step():
            with torch.no_grad():
                out = model.generate(
                    input_ids=prompts, attention_mask=mask, do_sample=False,
                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                    pad_token_id=0, use_cache=True,
                )
            assert out.shape[1] == args.prompt_tokens + args.new_tokens

        tokens_out = rows * args.new_tokens
    else:
        model.train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)

    out = {"name": name, **timed(step, args.warmup, args.steps),
           "trainable_params": trainable, "params": params}
    if tokens_out:
        out["tokens_per_second"] = tokens_out / out["median_seconds"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="qwen2-0.5b", choices=sorted(GEOMETRY))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated cases to run (default: all)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    import peft
    import torch
    import transformers

    names = args.only.split(",") if args.only else CASES
    cases = []
    backend = (
        f"pytorch {torch.__version__} + transformers {transformers.__version__} + "
        f"peft {peft.__version__}, {args.threads} threads"
    )
    print(f"{backend}; {cpu_model()}; {args.llm}")
    print(f"{'case':<20}{'median s':>10}{'min s':>10}{'max s':>10}{'peak MB':>10}{'tokens/s':>11}")
    for name in [n for n in names if n in NO_PEER]:
        cases.append({"name": name, "skipped": NO_PEER[name]})
        print(f"{name:<20} skipped: {NO_PEER[name]}")
    runnable = [n for n in names if n not in NO_PEER]
    for case in child_cases(__file__, runnable, args, skip_failed=True):
        cases.append(case)
        name = case["name"]
        if "skipped" in case:
            print(f"{name:<20} skipped: {case['skipped']}")
        else:
            tps = case.get("tokens_per_second")
            print(
                f"{name:<20}{case['median_seconds']:>10.3f}{case['min_seconds']:>10.3f}"
                f"{case['max_seconds']:>10.3f}{case['peak_rss_bytes'] / 1e6:>10.0f}"
                f"{'' if tps is None else f'{tps:.1f}':>11}"
            )
        sys.stdout.flush()
    if args.out:
        sizes = {k: getattr(args, k) for k in ("batch", "seq", "rank", "prompt_tokens", "new_tokens")}
        with open(args.out, "w") as f:
            json.dump(
                {"backend": backend, "cpu": cpu_model(), "model": args.llm, "sizes": sizes,
                 "cases": cases},
                f, indent=2,
            )


if __name__ == "__main__":
    main()
