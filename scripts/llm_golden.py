#!/usr/bin/env python3
"""Golden files for the Hugging Face decoders (tests/llm.rs): tiny random Llama, Qwen2 and
Qwen3 checkpoints in Hugging Face's format, transformers' logits and greedy generations,
its chat-template renderings, and PEFT CAUSAL_LM adapters with PEFT's outputs.

Not run in CI. Rebuild the committed files with:

    python3 -m venv .venv && .venv/bin/pip install torch transformers peft tokenizers safetensors
    .venv/bin/python scripts/llm_golden.py write

which writes, under tests/fixtures/llm/:
  llama/   LlamaForCausalLM: GQA (4 query, 2 key/value heads), untied head, Llama 3 RoPE
           scaling, a BOS-adding tokenizer and a Llama-3-style chat template; float32
  qwen2/   Qwen2ForCausalLM: GQA (4 and 1), tied head, q/k/v biases, a ChatML template;
           stored in bfloat16
  qwen3/   Qwen3ForCausalLM: q/k norms, head_dim 24 (not hidden/heads), untied; stored in
           float16 as five shards with model.safetensors.index.json
each with golden.safetensors (the input ids and float32 logits) and golden.json (prompts,
their ids, greedy continuations, chat renderings), and PEFT adapters:
  llama/peft_qv/          CAUSAL_LM, q_proj and v_proj, r 4
  qwen2/peft_all_linear/  CAUSAL_LM, all-linear, r 4 with a rank_pattern and alpha_pattern
each with peft_golden.safetensors / peft_golden.json (PEFT's logits and greedy tokens).

The other direction, an adapter burn-lora wrote, loaded by PEFT:

    cargo test --test llm                       # writes tests/fixtures/llm/ours/ if absent
    .venv/bin/python scripts/llm_golden.py check

loads tests/fixtures/llm/ours/adapter with PeftModel.from_pretrained on the llama base and
writes PEFT's logits and greedy tokens beside it (peft_golden.*). tests/llm.rs checks that
the committed adapter is byte for byte what burn-lora writes today, and that ours gives
PEFT's outputs. Half-precision checkpoints are compared in float32 after upcasting, which
is what burn-lora computes in.

An adapter the sft example trained, in PEFT (greedy completions, unmerged and merged,
written to peft_golden.json beside the adapter); tests/fixtures/llm/ours_sft/ was made with:

    cargo build --example sft
    F=tests/fixtures/llm/ours_sft
    target/debug/examples/sft --base hf:tests/fixtures/llm/qwen2 --data-file $F/train.jsonl \
        --test-file $F/pairs.jsonl --epochs 20 --batch-size 2 --lr 2e-2 --rank 8 --alpha 16 \
        --lora-dropout 0 --seed 7 --out /tmp/ours_sft
    cp -r /tmp/ours_sft/lora/adapter $F/
    .venv/bin/python scripts/llm_golden.py sft-check $F/adapter $F/pairs.jsonl
"""
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, PreTrainedTokenizerFast,
    Qwen2Config, Qwen3Config,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "llm"
VOCAB = 320
MAX_NEW = 10
CORPUS = [
    "The movie was surprisingly good.", "A gem of a film.", "Dull and far too long.",
    "I loved the music and the actors.", "The plot makes no sense at all.",
    "这本书写得很好，值得一读。", "质量很差，不推荐。", "Hello, how are you today?",
    "Tell me a story about a cat.", "What is the capital of France?",
] * 20
PROMPTS = ["The movie was", "A gem", "Tell me a story about a cat and a dog"]
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
]

# A ChatML template in the style of Qwen's: a default system turn, trimmed contents.
CHATML = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' and loop.first %}{% continue %}{% endif %}\n"
    "    {%- if message.role not in ['user', 'assistant'] %}"
    "{{ raise_exception('roles are user and assistant, not ' + message.role) }}{% endif %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
# A template in the style of Llama 3's: BOS, header ids, a namespace, tojson, strip().
LLAMA3 = (
    "{{- bos_token }}\n"
    "{%- set ns = namespace(turns=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- set ns.turns = ns.turns + 1 %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "    {%- if message['content'].startswith('{') %}\n"
    "        {{- message['content'] | tojson }}\n"
    "    {%- else %}\n"
    "        {{- message['content'].strip() }}\n"
    "    {%- endif %}\n"
    "    {{- '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "  Is this review positive? A gem of a film.  "},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "{\"text\": \"质量很差\"}"},
    ],
]


def base_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 16, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def hf_tokenizer(family):
    tok = base_tokenizer()
    if family == "llama":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
            chat_template=LLAMA3)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHATML)


def config(family, tok):
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, initializer_range=0.2,
                  rms_norm_eps=1e-6)
    if family == "llama":
        return LlamaConfig(
            **common, num_key_value_heads=2, tie_word_embeddings=False,
            rope_theta=10000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=[ids["<|eot_id|>"], ids["<|endoftext|>"]])
    if family == "qwen2":
        return Qwen2Config(
            **common, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6,
            use_sliding_window=False, eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"])
    return Qwen3Config(
        **common, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False,
        rope_theta=1e6, use_sliding_window=False, eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"])


def greedy(model, ids_list, eos):
    out = []
    for ids in ids_list:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW,
                               do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
        out.append(y[0, len(ids):].tolist())
    return out


def outputs(model, ids, prompt_ids, eos):
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return logits, greedy(model, prompt_ids, eos)


def write_family(family, dtype, shard):
    torch.manual_seed({"llama": 1, "qwen2": 2, "qwen3": 3}[family])
    tok = hf_tokenizer(family)
    cfg = config(family, tok)
    cfg.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                          "qwen3": "Qwen3ForCausalLM"}[family]]
    model = AutoModelForCausalLM.from_config(cfg).eval()
    out = OUT / family
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    model.to(dtype).save_pretrained(out, max_shard_size="60KB" if shard else "1GB")
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    GenerationConfig(eos_token_id=eos, bos_token_id=cfg.bos_token_id,
                     pad_token_id=cfg.pad_token_id, do_sample=False).save_pretrained(out)
    tok.save_pretrained(out)
    # Compare in float32, from the weights as stored.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    logits, generated = outputs(model, ids, prompt_ids, eos)
    save_file({"input_ids": ids.to(torch.int64), "logits": logits.contiguous()},
              str(out / "golden.safetensors"))
    chats = []
    for conversation in CONVERSATIONS:
        for gen in [False, True]:
            text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
            ids_chat = tok.apply_chat_template(conversation, tokenize=True,
                                               add_generation_prompt=gen, return_dict=False)
            chats.append({"messages": conversation, "add_generation_prompt": gen,
                          "text": text, "ids": list(ids_chat)})
    golden = {"prompts": PROMPTS, "prompt_ids": prompt_ids, "greedy": generated,
              "eos": eos, "chat": chats}
    (out / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")
    print(f"{family}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"greedy {generated}")
    return model, tok, ids, prompt_ids, eos


def write_peft(family, model, ids, prompt_ids, eos, name, **lora):
    torch.manual_seed(10)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **lora))
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn_like(p) * 0.3)
    peft_model.eval()
    out = OUT / family / name
    peft_model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    logits, generated = outputs(peft_model, ids, prompt_ids, eos)
    save_file({"logits": logits.contiguous()}, str(out / "peft_golden.safetensors"))
    (out / "peft_golden.json").write_text(json.dumps({"greedy": generated}) + "\n")
    print(f"{family}/{name}: greedy {generated}")


def write():
    llama = write_family("llama", torch.float32, shard=False)
    qwen2 = write_family("qwen2", torch.bfloat16, shard=False)
    write_family("qwen3", torch.float16, shard=True)
    model, _, ids, prompt_ids, eos = llama
    write_peft("llama", model, ids, prompt_ids, eos, "peft_qv", r=4, lora_alpha=8,
               target_modules=["q_proj", "v_proj"])
    model, _, ids, prompt_ids, eos = qwen2
    write_peft("qwen2", model, ids, prompt_ids, eos, "peft_all_linear", r=4, lora_alpha=8,
               target_modules="all-linear",
               rank_pattern={"down_proj": 2, "model.layers.1.self_attn.q_proj": 6},
               alpha_pattern={"o_proj": 3.0})


def check():
    """PEFT loads burn-lora's adapter (tests/fixtures/llm/ours/adapter) onto the llama base
    and records its outputs beside it."""
    base = OUT / "llama"
    ours = OUT / "ours"
    golden = json.loads((base / "golden.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, ours / "adapter").eval()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, generated = outputs(model, ids, golden["prompt_ids"], golden["eos"])
    save_file({"logits": logits.contiguous()}, str(ours / "peft_golden.safetensors"))
    (ours / "peft_golden.json").write_text(json.dumps({"greedy": generated}) + "\n")
    print(f"PEFT loaded burn-lora's adapter: greedy {generated}")


def sft_check(adapter, prompts_file):
    """An adapter the sft example or tests/llm.rs trained on a tiny checkpoint, loaded by
    PeftModel.from_pretrained from its adapter_config.json's base_model_name_or_path:
    prints each prompt's greedy completion, unmerged and merged, and whether they agree."""
    adapter = Path(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    base_dir = Path(config["base_model_name_or_path"])
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, adapter).eval()
    eos = json.loads((base_dir / "generation_config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    records = [json.loads(line) for line in Path(prompts_file).read_text().splitlines() if line]
    prompt_ids = [tok(r["prompt"])["input_ids"] for r in records]
    unmerged = greedy(model, prompt_ids, eos)
    merged = greedy(model.merge_and_unload(), prompt_ids, eos)
    exact = 0
    for r, u, m in zip(records, unmerged, merged):
        text = tok.decode([t for t in u if t not in eos], skip_special_tokens=True)
        exact += text.strip() == r["completion"].strip()
        print(f"{r['prompt']!r} -> {text!r} (want {r['completion']!r}); merged equal: {u == m}")
    print(f"PEFT {config['peft_type']} {config['task_type']}: exact match {exact}/{len(records)}, "
          f"merged == unmerged: {unmerged == merged}")
    golden = adapter.parent / "peft_golden.json"
    golden.write_text(json.dumps({"prompt_ids": prompt_ids, "greedy": unmerged,
                                  "merged_greedy": merged}) + "\n")
    print(f"wrote {golden}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"]:
        write()
    elif sys.argv[1:2] == ["check"]:
        check()
    elif sys.argv[1:2] == ["sft-check"] and len(sys.argv) == 4:
        sft_check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
