#!/usr/bin/env python3
"""Golden files from PEFT 0.21 for the LoRA features beyond linears (issue "The library at
its edges", item 6): LoRA on Embedding, Conv1d and Conv2d, bias="all" / "lora_only",
fan_in_fan_out on GPT-2's Conv1D layers, and LoRA+ (create_loraplus_optimizer).

Not run by CI. Rebuild the committed files with:

    python3 -m venv .venv && .venv/bin/pip install torch peft transformers safetensors numpy
    .venv/bin/python scripts/peft_edges_golden.py

which writes crates/burn-lora/tests/fixtures/peft_edges/:
  layers/      base.safetensors, adapter/ (PEFT save_pretrained, r 2, alpha 6, on embed,
               conv1, conv2, every factor non-zero) and io.safetensors (ids, x1, x2 and each
               layer's output with the adapter, and PEFT's fresh factors' zero pattern)
  bias_all/, bias_lora_only/
               base.safetensors (peft_golden.py's Tiny), adapter/ with the biases PEFT saves
               for that bias setting (changed from the base's), io.safetensors (x, out)
  fan_in/      a Tiny whose linears are transformers' Conv1D ([d_in, d_out] weights), its
               base written in nn.Linear layout, an adapter with fan_in_fan_out=True, io
  loraplus/    Tiny, adapter_before/, one SGD step of create_loraplus_optimizer (lr 0.05,
               loraplus_lr_ratio 8) on loss = sum(out * w), adapter_after/, io (x, w)

Everything is float32 and PyTorch layout. A re-run writes the same tensors byte for byte;
the order of `target_modules` in adapter_config.json varies (PEFT keeps a Python set).
"""
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "burn-lora" / "tests" / "fixtures" / "peft_edges"


class Layers(torch.nn.Module):
    """Mirrored in crates/burn-lora/tests/lora/layers.rs."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        self.conv1 = torch.nn.Conv1d(4, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(3, 5, (3, 2), padding=1)


class Attention(torch.nn.Module):
    def __init__(self, d, linear):
        super().__init__()
        self.query = linear(d, d)
        self.key = linear(d, d)
        self.value = linear(d, d)


class Tiny(torch.nn.Module):
    """peft_golden.py's Tiny (common.rs in the tests), with linears of a given type."""

    def __init__(self, d=8, classes=2, linear=torch.nn.Linear):
        super().__init__()
        self.attn = Attention(d, linear)
        self.head = linear(d, classes)

    def forward(self, x):
        h = torch.tanh(self.attn.query(x) + self.attn.key(x) + self.attn.value(x))
        return self.head(h)


def gpt2_linear(d_in, d_out):
    return Conv1D(d_out, d_in)  # nf, nx: weight [d_in, d_out]


def save_state(model, path):
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, path)


def save_adapter(model, path):
    model.save_pretrained(path)
    (path / "README.md").unlink()  # PEFT's generated model card


def save_adapter_and_io(model, out):
    """The adapter in `out/adapter`, and a random x with the adapted model's output."""
    save_adapter(model, out / "adapter")
    x = torch.randn(3, 8)
    save_file({"x": x, "out": model(x).detach()}, out / "io.safetensors")


def fresh(out):
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def write_layers():
    out = fresh(OUT / "layers")
    torch.manual_seed(11)
    base = Layers()
    save_state(base, out / "base.safetensors")
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["embed", "conv1", "conv2"])
    model = get_peft_model(base, config)
    zero = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                key = name.removeprefix("base_model.model.").replace(".default", "")
                zero[key] = torch.tensor([float(bool((param == 0).all()))])
                param.copy_(torch.randn_like(param) * 0.3)
    save_adapter(model, out / "adapter")
    inner = model.base_model.model
    ids = torch.tensor([[1, 5, 19, 0, 7], [3, 3, 12, 8, 2]])
    x1 = torch.randn(2, 4, 7)
    x2 = torch.randn(2, 3, 6, 5)
    io = {"ids": ids.float(), "x1": x1, "x2": x2, "embed": inner.embed(ids).detach(),
          "conv1": inner.conv1(x1).detach(), "conv2": inner.conv2(x2).detach()}
    io.update({f"zero.{k}": v for k, v in zero.items()})
    save_file(io, out / "io.safetensors")


def randomize(model, select):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if select(name):
                param.copy_(torch.randn_like(param) * 0.3)


def write_bias(bias):
    out = fresh(OUT / f"bias_{bias}")
    torch.manual_seed(13)
    base = Tiny()
    save_state(base, out / "base.safetensors")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], bias=bias)
    model = get_peft_model(base, config)
    # Stand-ins for trained values: every trainable parameter (factors, and the biases
    # this setting trains) moves away from its initial value.
    randomize(model, lambda name: dict(model.named_parameters())[name].requires_grad)
    save_adapter_and_io(model, out)


def write_fan_in():
    out = fresh(OUT / "fan_in")
    torch.manual_seed(17)
    base = Tiny(linear=gpt2_linear)
    # In nn.Linear layout ([d_out, d_in]), as the tests read every base.
    save_file({k: (v.t() if v.dim() == 2 else v).detach().clone().contiguous()
               for k, v in base.state_dict().items()}, out / "base.safetensors")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], fan_in_fan_out=True)
    model = get_peft_model(base, config)
    randomize(model, lambda name: "lora_B" in name)
    save_adapter_and_io(model, out)


def write_loraplus():
    out = fresh(OUT / "loraplus")
    torch.manual_seed(19)
    base = Tiny()
    save_state(base, out / "base.safetensors")
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    randomize(model, lambda name: "lora_" in name)
    save_adapter(model, out / "adapter_before")
    optimizer = create_loraplus_optimizer(model, torch.optim.SGD, lr=0.05, loraplus_lr_ratio=8.0)
    x, w = torch.randn(3, 8), torch.randn(3, 2)
    (model(x) * w).sum().backward()
    optimizer.step()
    save_adapter(model, out / "adapter_after")
    save_file({"x": x, "w": w}, out / "io.safetensors")


def main():
    write_layers()
    write_bias("all")
    write_bias("lora_only")
    write_fan_in()
    write_loraplus()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
