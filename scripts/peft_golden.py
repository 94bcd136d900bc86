#!/usr/bin/env python3
"""Golden files from Hugging Face PEFT, the reference LoRA implementation.

Not run by CI. Rebuild the committed files with:

    python3 -m venv .venv && .venv/bin/pip install torch peft safetensors numpy
    .venv/bin/python scripts/peft_golden.py write

which writes
  crates/burn-lora/tests/fixtures/peft_layers.safetensors   single-layer parity cases (inputs, weights,
                                           outputs, gradients of a fixed loss, merged weights)
  crates/burn-lora/tests/fixtures/peft_tiny/ a tiny model with named linears: its base weights,
                                           an adapter written by PEFT save_pretrained, and
                                           the input and PEFT's output

and, with `write-patterns` (on its own, so the files above stay as they are),
  crates/burn-lora/tests/fixtures/peft_tiny/adapter_patterns/, io_patterns.safetensors
                                           an adapter with per-module ranks and alphas
                                           (rank_pattern, alpha_pattern) and PEFT's output

with `write-dora`, DoRA (use_dora=True) cases:
  crates/burn-lora/tests/fixtures/peft_dora.safetensors   single-layer cases as above, plus the
                                           magnitude, its initial value and its gradient
  crates/burn-lora/tests/fixtures/peft_tiny/adapter_dora/, io_dora.safetensors
                                           a DoRA adapter on peft_tiny's base and PEFT's output

and with `write-weighted`, PEFT's add_weighted_adapter:
  crates/burn-lora/tests/fixtures/peft_tiny/weighted/     adapters first, second (rank 4) and third
                                           (rank 2, rsLoRA), and the combinations lin (linear:
                                           first 0.7, second -0.4) and cat (cat: first 0.6,
                                           third 1.5), as save_pretrained
                                           writes several adapters
  crates/burn-lora/tests/fixtures/peft_tiny/io_weighted.safetensors  x and the output with each

The other direction (an adapter written by burn-lora, loaded by PEFT):

    cargo test -p burn-lora --test lora      # writes target/tmp/peft-export/ and peft-export-dora/
    .venv/bin/python scripts/peft_golden.py check target/tmp/peft-export
    .venv/bin/python scripts/peft_golden.py check target/tmp/peft-export-dora

Everything is float32 and PyTorch layout ([d_out, d_in] weights).
"""
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "burn-lora" / "tests" / "fixtures"

# (d_in, d_out, r, alpha, use_rslora, bias, input shape prefix)
LAYER_CASES = [
    (16, 24, 1, 2.0, False, True, (5,)),
    (32, 16, 4, 8.0, False, False, (7,)),
    (24, 40, 4, 6.0, True, True, (2, 3)),
    (64, 48, 8, 32.0, False, True, (9,)),
    (48, 64, 8, 4.0, True, True, (4,)),
]


class Holder(torch.nn.Module):
    """One named linear, so PEFT can target it."""

    def __init__(self, d_in, d_out, bias):
        super().__init__()
        self.layer = torch.nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x):
        return self.layer(x)


def forward_backward(model, lora, key, prefix, d_in, bias, tensors):
    """Runs a random input of shape `prefix + (d_in,)` through `model`, backpropagates a
    random weighting of its output, and records under `key` what every layer case holds:
    the input, the base weights, the factors, the output, the loss weights and the
    gradients of the input and the factors."""
    x = torch.randn(*prefix, d_in, requires_grad=True)
    out = model(x)
    loss_weight = torch.randn_like(out)
    (out * loss_weight).sum().backward()
    a, b = lora.lora_A["default"].weight, lora.lora_B["default"].weight
    tensors[key + "x"] = x.detach()
    tensors[key + "weight"] = lora.base_layer.weight.detach().clone()
    if bias:
        tensors[key + "bias"] = lora.base_layer.bias.detach().clone()
    tensors[key + "lora_A"] = a.detach().clone()
    tensors[key + "lora_B"] = b.detach().clone()
    tensors[key + "out"] = out.detach()
    tensors[key + "loss_weight"] = loss_weight
    tensors[key + "grad_x"] = x.grad.clone()
    tensors[key + "grad_A"] = a.grad.clone()
    tensors[key + "grad_B"] = b.grad.clone()


def layer_cases():
    tensors, cases = {}, []
    for i, (d_in, d_out, r, alpha, rslora, bias, prefix) in enumerate(LAYER_CASES):
        torch.manual_seed(100 + i)
        model = get_peft_model(
            Holder(d_in, d_out, bias),
            LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["layer"]),
        )
        lora = model.base_model.model.layer
        with torch.no_grad():
            # Non-zero B, so the branch and its gradients are exercised.
            lora.lora_B["default"].weight.copy_(torch.randn_like(lora.lora_B["default"].weight) * 0.2)
        key = f"case{i}."
        forward_backward(model, lora, key, prefix, d_in, bias, tensors)
        tensors[key + "merged_weight"] = model.merge_and_unload().layer.weight.detach().clone()
        cases.append({"d_in": d_in, "d_out": d_out, "r": r, "alpha": alpha,
                      "use_rslora": rslora, "bias": bias, "scaling": lora.scaling["default"]})
    return tensors, cases


class Attention(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.query = torch.nn.Linear(d, d)
        self.key = torch.nn.Linear(d, d)
        self.value = torch.nn.Linear(d, d)


class Tiny(torch.nn.Module):
    """Mirrored in crates/burn-lora/tests/lora/common.rs: attn.{query,key,value}, head."""

    def __init__(self, d=8, classes=2):
        super().__init__()
        self.attn = Attention(d)
        self.head = torch.nn.Linear(d, classes)

    def forward(self, x):
        h = torch.tanh(self.attn.query(x) + self.attn.key(x) + self.attn.value(x))
        return self.head(h)


def tiny_config():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["head"])


def write_tiny(out_dir):
    torch.manual_seed(7)
    base = Tiny()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, out_dir / "base.safetensors")
    model = get_peft_model(base, tiny_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Stand-ins for trained values: non-zero B, and a head that differs from the base.
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    model.save_pretrained(out_dir / "adapter")
    (out_dir / "adapter" / "README.md").unlink()  # PEFT's generated model card
    x = torch.randn(3, 8)
    save_file({"x": x, "out": model(x).detach()}, out_dir / "io.safetensors")


def patterns_config():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value"],
                      modules_to_save=["head"], rank_pattern={"key": 2, "attn.value": 6},
                      alpha_pattern={"value": 3})


def write_patterns():
    """An adapter whose layers have different ranks and alphas, on peft_tiny's base."""
    out_dir = FIXTURES / "peft_tiny"
    torch.manual_seed(11)
    base = Tiny()
    base.load_state_dict(load_file(out_dir / "base.safetensors"))
    model = get_peft_model(base, patterns_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    ranks = {n: tuple(p.shape) for n, p in model.named_parameters() if "lora_A" in n}
    model.save_pretrained(out_dir / "adapter_patterns")
    (out_dir / "adapter_patterns" / "README.md").unlink()
    x = torch.randn(3, 8)
    save_file({"x": x, "out": model(x).detach()}, out_dir / "io_patterns.safetensors")
    print(f"wrote {out_dir / 'adapter_patterns'}: A shapes {ranks}")


# (d_in, d_out, r, alpha, use_rslora, bias, input shape prefix)
DORA_CASES = [
    (16, 24, 2, 4.0, False, True, (5,)),
    (32, 16, 4, 8.0, False, False, (7,)),
    (24, 40, 4, 6.0, True, True, (2, 3)),
]


def dora_cases():
    tensors, cases = {}, []
    for i, (d_in, d_out, r, alpha, rslora, bias, prefix) in enumerate(DORA_CASES):
        torch.manual_seed(300 + i)
        model = get_peft_model(
            Holder(d_in, d_out, bias),
            LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, use_dora=True,
                       target_modules=["layer"]),
        )
        lora = model.base_model.model.layer
        magnitude = lora.lora_magnitude_vector["default"].weight
        key = f"case{i}."
        tensors[key + "lora_A_init"] = lora.lora_A["default"].weight.detach().clone()
        tensors[key + "magnitude_init"] = magnitude.detach().clone()
        with torch.no_grad():
            # Non-zero B and a magnitude away from the weight's norm, as after training.
            lora.lora_B["default"].weight.copy_(torch.randn_like(lora.lora_B["default"].weight) * 0.2)
            magnitude.mul_(1.0 + 0.1 * torch.randn_like(magnitude))
        forward_backward(model, lora, key, prefix, d_in, bias, tensors)
        tensors[key + "magnitude"] = magnitude.detach().clone()
        tensors[key + "grad_magnitude"] = magnitude.grad.clone()
        model.eval()
        with torch.no_grad():
            model.merge_adapter()
            tensors[key + "merged_weight"] = lora.base_layer.weight.detach().clone()
            model.unmerge_adapter()
            tensors[key + "unmerged_weight"] = lora.base_layer.weight.detach().clone()
        cases.append({"d_in": d_in, "d_out": d_out, "r": r, "alpha": alpha,
                      "use_rslora": rslora, "bias": bias, "scaling": lora.scaling["default"]})
    return tensors, cases


def write_dora():
    tensors, cases = dora_cases()
    save_file(tensors, FIXTURES / "peft_dora.safetensors", metadata={"cases": json.dumps(cases)})
    out_dir = FIXTURES / "peft_tiny"
    torch.manual_seed(13)
    base = Tiny()
    base.load_state_dict(load_file(out_dir / "base.safetensors"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                        modules_to_save=["head"], use_dora=True)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn_like(param) * 0.3)
            if "lora_magnitude_vector" in name:
                param.mul_(1.0 + 0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir / "adapter_dora")
    (out_dir / "adapter_dora" / "README.md").unlink()
    x = torch.randn(3, 8)
    save_file({"x": x, "out": model(x).detach()}, out_dir / "io_dora.safetensors")
    print(f"wrote {len(cases)} DoRA layer cases and {out_dir / 'adapter_dora'}")


def write_weighted():
    """Three adapters on peft_tiny's base, and PEFT's linear and cat combinations."""
    out_dir = FIXTURES / "peft_tiny"
    torch.manual_seed(17)
    base = Tiny()
    base.load_state_dict(load_file(out_dir / "base.safetensors"))
    targets = ["query", "value"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets), adapter_name="first")
    model.add_adapter("second", LoraConfig(r=4, lora_alpha=16, target_modules=targets))
    model.add_adapter("third", LoraConfig(r=2, lora_alpha=3, use_rslora=True, target_modules=targets))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    model.add_weighted_adapter(["first", "second"], [0.7, -0.4], "lin", combination_type="linear")
    model.add_weighted_adapter(["first", "third"], [0.6, 1.5], "cat", combination_type="cat")
    x = torch.randn(3, 8)
    io = {"x": x}
    with torch.no_grad():
        for name in ["first", "second", "third", "lin", "cat"]:
            model.set_adapter(name)
            io[f"out_{name}"] = model(x).detach()
    model.save_pretrained(out_dir / "weighted")
    for readme in (out_dir / "weighted").rglob("README.md"):
        readme.unlink()
    save_file(io, out_dir / "io_weighted.safetensors")
    print(f"wrote {out_dir / 'weighted'}")


def write():
    tensors, cases = layer_cases()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    save_file(tensors, FIXTURES / "peft_layers.safetensors", metadata={"cases": json.dumps(cases)})
    tiny = FIXTURES / "peft_tiny"
    tiny.mkdir(exist_ok=True)
    write_tiny(tiny)
    print(f"wrote {len(cases)} layer cases and {tiny}")


def check(export_dir):
    """Loads an adapter that burn-lora saved into PEFT and compares outputs."""
    export_dir = Path(export_dir)
    base = Tiny()
    base.load_state_dict(load_file(export_dir / "base.safetensors"))
    model = PeftModel.from_pretrained(base, export_dir / "adapter")
    io = load_file(export_dir / "io.safetensors")
    with torch.no_grad():
        out = model(io["x"])
    err = (out - io["out"]).abs().max().item()
    print(f"PEFT loaded burn-lora's adapter: max |peft - burn| = {err:.3e} over {out.numel()} logits")
    if err > 1e-5:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "write":
        write()
    elif len(sys.argv) >= 2 and sys.argv[1] == "write-patterns":
        write_patterns()
    elif len(sys.argv) >= 2 and sys.argv[1] == "write-dora":
        write_dora()
    elif len(sys.argv) >= 2 and sys.argv[1] == "write-weighted":
        write_weighted()
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
