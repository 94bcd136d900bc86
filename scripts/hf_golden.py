"""Golden files for burn-lora's BERT loading and PEFT interop (tests/bert.rs).

Writes tests/fixtures/hf_seqcls/ (see write_seq_cls) and tests/fixtures/hf_tiny/: a tiny random BERT in Hugging Face's format (config.json,
model.safetensors, tokenizer.json), the last hidden states transformers computes for a few
sentences, a PEFT LoRA adapter for BertForSequenceClassification (non-zero B, trained-looking
classifier) and PEFT's logits. Not run in CI:

    python3 -m venv .venv && .venv/bin/pip install torch transformers peft tokenizers safetensors
    .venv/bin/python scripts/hf_golden.py write
    .venv/bin/python scripts/hf_golden.py check DIR   # PEFT loads burn-lora's adapter in DIR
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, BertModel
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf_tiny"
SEQ_CLS = OUT.parent / "hf_seqcls"
LABELS = ["negative", "neutral", "positive"]
SENTENCES = ["a gem of a film", "dull and far too long", "good"]
WORDS = "a gem of film dull and far too long good bad movie great fun plot ##s ##ing".split()


def tokenizer():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


def config(vocab_size):
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        type_vocab_size=2,
        pad_token_id=0,
        architectures=["BertModel"],
    )


def batch(tok):
    encoded = [tok.encode(s).ids for s in SENTENCES]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([e + [0] * (width - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    return ids, mask


def peft_seq_cls(clf, tok, adapter_dir, **lora_options):
    """PEFT's SEQ_CLS LoRA (r=4, alpha=8, query and value, plus `lora_options`) on `clf`,
    with non-zero B and a trained-looking classifier, saved to `adapter_dir` without
    PEFT's model-card template. Returns the model and its logits on `batch(tok)`."""
    peft_cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["query", "value"], **lora_options,
    )
    peft_model = get_peft_model(clf, peft_cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    peft_model.eval()
    ids, mask = batch(tok)
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=mask).logits
    peft_model.save_pretrained(adapter_dir)
    (adapter_dir / "README.md").unlink()
    return peft_model, logits


def write():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    tok.save(str(OUT / "tokenizer.json"))
    cfg = config(tok.get_vocab_size())
    model = BertModel(cfg).eval()
    # Random everything (biases and LayerNorms too), so a transposed or misplaced tensor shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            p.copy_(base + torch.randn_like(p) * 0.1)
    model.save_pretrained(OUT, safe_serialization=True)
    ids, mask = batch(tok)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state

    # PEFT: sequence classification on the same encoder, LoRA on query/value, non-zero B.
    clf = BertForSequenceClassification(cfg.__class__(**{**cfg.to_dict(), "num_labels": 2}))
    clf.bert.load_state_dict(model.state_dict())
    _, logits = peft_seq_cls(clf, tok, OUT / "peft_adapter")
    save_file(
        {
            "input_ids": ids.to(torch.int64).contiguous(),
            "attention_mask": mask.to(torch.int64).contiguous(),
            "last_hidden_state": hidden.contiguous(),
            "peft_logits": logits.contiguous(),
        },
        OUT / "golden.safetensors",
    )
    print(f"wrote {OUT}: hidden {tuple(hidden.shape)}, logits {logits.tolist()}")


def write_seq_cls():
    """A BertForSequenceClassification checkpoint with three named classes (its own pooler
    and classifier) and a PEFT SEQ_CLS adapter on it, with PEFT's probabilities: what
    `predict --base hf:DIR --adapter DIR` must reproduce with no flags."""
    torch.manual_seed(1)
    SEQ_CLS.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    tok.save(str(SEQ_CLS / "tokenizer.json"))
    cfg = config(tok.get_vocab_size())
    cfg.architectures = ["BertForSequenceClassification"]
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {name: i for i, name in enumerate(LABELS)}
    clf = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in clf.named_parameters():
            base = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            p.copy_(base + torch.randn_like(p) * 0.1)
    clf.save_pretrained(SEQ_CLS, safe_serialization=True)
    _, logits = peft_seq_cls(clf, tok, SEQ_CLS / "peft_adapter")
    probs = logits.softmax(-1)
    save_file({"peft_probs": probs.contiguous()}, SEQ_CLS / "golden.safetensors")
    print(f"wrote {SEQ_CLS}: probs {probs.tolist()}")


def write_layers():
    """A PEFT SEQ_CLS adapter on hf_tiny's encoder that adapts only layer 1
    (layers_to_transform=[1], layers_pattern="layer"), and PEFT's logits. Written on its
    own (`write-layers`), so hf_tiny's other files stay as they are."""
    torch.manual_seed(2)
    tok = tokenizer()
    cfg = config(tok.get_vocab_size())
    clf = BertForSequenceClassification(cfg.__class__(**{**cfg.to_dict(), "num_labels": 2}))
    clf.bert.load_state_dict(BertModel.from_pretrained(OUT).state_dict())
    peft_model, logits = peft_seq_cls(
        clf, tok, OUT / "peft_adapter_layer1", layers_to_transform=[1], layers_pattern="layer"
    )
    adapted = sorted({n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if "lora_A" in n})
    save_file({"peft_logits": logits.contiguous()}, OUT / "golden_layer1.safetensors")
    print(f"wrote {OUT / 'peft_adapter_layer1'}: adapted {adapted}")


def check(adapter_dir):
    """Loads burn-lora's adapter with PEFT and compares with the logits burn-lora saved."""
    tok = tokenizer()
    cfg = config(tok.get_vocab_size())
    clf = BertForSequenceClassification.from_pretrained(OUT, num_labels=2).eval()
    model = PeftModel.from_pretrained(clf, adapter_dir).eval()
    ids, mask = batch(tok)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    ours = load_file(str(Path(adapter_dir) / "burn_logits.safetensors"))["logits"]
    diff = (logits - ours).abs().max().item()
    print(f"PEFT loaded burn-lora's BERT adapter: max |peft - burn| = {diff:.3e} over {logits.numel()} logits")
    assert diff < 1e-4, diff
    del cfg


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"]:
        write()
        write_seq_cls()
        write_layers()
    elif sys.argv[1:2] == ["write-layers"]:
        write_layers()
    elif sys.argv[1:2] == ["check"]:
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
