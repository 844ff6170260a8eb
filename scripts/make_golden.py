"""Makes a golden reference for one training step of a torchvision model, in the format
of shared/golden/README.md: the state_dict before the step, input, labels, logits, loss,
grad.<param>, after.<bn>.running_{mean,var} and adam1.<param>; the same computation in
float64 (<name>_golden_f64.safetensors); and architecture_<name>.txt (repr and the
input/output shape of every leaf module).

usage: python3 scripts/make_golden.py OUT_DIR MODEL [--input N,C,H,W] [--classes K]

MODEL is a torchvision constructor (densenet121, resnet18, resnet50, ...), a timm
pre-activation ResNet (resnetv2_18, resnetv2_34, resnetv2_50, resnetv2_101), or one of the
small models of tests/data: densenet_bc_small, resnet_basic_small, resnet_bottleneck_small,
resnetv2_basic_small, resnetv2_bottleneck_small.

Its dependencies, pinned (timm only for the resnetv2 models):
    python3 -m venv .venv-golden
    .venv-golden/bin/pip install -r scripts/golden-requirements.txt
The recipe: torch.manual_seed(0), build the model; torch.manual_seed(1), x = randn(input);
labels 1, 4, 7, ... mod K; train-mode forward, mean cross-entropy, backward, one step of
Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)."""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck


class NarrowResNet(torchvision.models.ResNet):
    """torchvision's ResNet with stage widths w, 2w, 4w, 8w instead of 64, ..., 512: the
    same blocks (BasicBlock / Bottleneck), `_make_layer`, forward and initialisation;
    only the channel counts differ, so the reference files stay small."""

    def __init__(self, block, layers, width, num_classes):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def narrow_resnetv2(layers, channels, width, basic, classes):
    """timm's ResNetV2 as resnetv2_18 / resnetv2_50 build it (BatchNormAct2d, create_conv2d,
    7x7 stem), with stem width `width` and stage channels `channels` instead of 64 and
    64..512 / 256..2048. Channels are multiples of 8, which timm's rounding keeps."""
    from timm.layers import BatchNormAct2d, create_conv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers,
        channels=channels,
        stem_chs=width,
        basic=basic,
        bottle_ratio=1.0 if basic else 0.25,
        conv_layer=create_conv2d,
        norm_layer=BatchNormAct2d,
        num_classes=classes,
    )


SMALL = {
    "densenet_bc_small": lambda k: torchvision.models.DenseNet(
        growth_rate=12, block_config=(6, 6, 6), num_init_features=24, bn_size=4, num_classes=k
    ),
    "resnet_basic_small": lambda k: NarrowResNet(BasicBlock, [2, 1, 1, 2], 8, k),
    "resnet_bottleneck_small": lambda k: NarrowResNet(Bottleneck, [1, 2, 1, 1], 8, k),
    # Stage 0's first basic block keeps the raw shortcut (8 -> 8, stride 1); every
    # bottleneck stage starts with a 1x1 shortcut convolution, strided from stage 1 on.
    "resnetv2_basic_small": lambda k: narrow_resnetv2([2, 1, 1, 2], (8, 16, 32, 64), 8, True, k),
    "resnetv2_bottleneck_small": lambda k: narrow_resnetv2(
        [1, 2, 1, 1], (32, 64, 128, 256), 8, False, k
    ),
}


def build(name, classes):
    if name in SMALL:
        return SMALL[name](classes)
    if name.startswith("resnetv2_"):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=classes)
    return getattr(torchvision.models, name)(num_classes=classes)


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


def architecture(model, x):
    lines = [repr(model), "", "leaf module: input shape -> output shape"]
    hooks = []
    for name, m in model.named_modules():
        if not list(m.children()):
            hooks.append(
                m.register_forward_hook(
                    lambda m, i, o, name=name: lines.append(f"{name}: {tuple(i[0].shape)} -> {tuple(o.shape)}")
                )
            )
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("model", nargs="?", default="densenet121")
    ap.add_argument("--input", default="2,3,64,64", help="N,C,H,W")
    ap.add_argument("--classes", type=int, default=4)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    shape = [int(v) for v in a.input.split(",")]
    torch.manual_seed(0)
    model = build(a.model, a.classes)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    x = torch.randn(shape)
    labels = torch.tensor([(1 + 3 * i) % a.classes for i in range(shape[0])])
    path = os.path.join(a.out_dir, f"{a.model}_golden.safetensors")
    save_file(run(model, x, labels, torch.float32), path)
    model64 = build(a.model, a.classes)
    model64.load_state_dict(state)
    save_file(run(model64, x, labels, torch.float64), path.replace("_golden", "_golden_f64"))
    fresh = build(a.model, a.classes)
    fresh.load_state_dict(state)
    with open(os.path.join(a.out_dir, f"architecture_{a.model}.txt"), "w") as f:
        f.write(architecture(fresh, x))
    print("wrote", path, "and its _f64 twin; model", a.model, "input", shape)


if __name__ == "__main__":
    main()
