"""Makes a golden reference file for one training step of a torchvision DenseNet, in the
format of the small reference shipped in tests/data (see docs/training.md):
state_dict before the step, input, labels, logits, loss, grad.<param>,
after.<bn>.running_{mean,var}, adam1.<param>; plus the same computation in float64.

usage: python3 make_golden.py OUT_DIR [densenet121]"""
import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file


def run(model, x, labels, dtype):
    model = model.to(dtype).train()
    x = x.to(dtype)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    out = dict(before)
    out["input"] = x.detach().clone()
    out["labels"] = labels.to(dtype)
    out["logits"] = logits.detach().clone()
    out["loss"] = loss.detach().reshape(1).clone()
    for n, p in model.named_parameters():
        out["grad." + n] = p.grad.detach().clone()
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            out["after." + k] = v.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    opt.step()
    for n, p in model.named_parameters():
        out["adam1." + n] = p.detach().clone()
    return {k: v.contiguous() for k, v in out.items()}


def main():
    out_dir = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "densenet121"
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    save_file(run(model, x, labels, torch.float32), os.path.join(out_dir, f"{name}_golden.safetensors"))
    model64 = getattr(torchvision.models, name)(num_classes=4)
    model64.load_state_dict(state)
    save_file(run(model64, x, labels, torch.float64), os.path.join(out_dir, f"{name}_golden_f64.safetensors"))
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
