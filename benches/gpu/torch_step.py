"""PyTorch reference for benches/train_step.rs on the same GPU: one training step
(forward, cross-entropy, backward, Adam) of torchvision DenseNets, median of timed steps
after warm-up, with CUDA synchronisation, and peak CUDA memory."""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

CASES = [
    ("densenet-bc_32_b64", dict(growth_rate=12, block_config=(6, 6, 6), num_init_features=24), 32, 64),
    ("densenet121_64_b8", dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64), 64, 8),
    ("densenet121_224_b8", dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64), 224, 8),
]


def step_time(kw, size, batch, efficient, steps=10):
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(num_classes=4, memory_efficient=efficient, **kw).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = torch.arange(batch, device="cuda") % 4

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    torch.cuda.synchronize()
    t = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), first, torch.cuda.max_memory_allocated()


def main():
    print("torch", torch.__version__, "torchvision", torchvision.__version__, torch.cuda.get_device_name(0))
    out = []
    for name, kw, size, batch in CASES:
        for efficient in (False, True):
            ms, first, peak = step_time(kw, size, batch, efficient)
            row = dict(name=name, memory_efficient=efficient, ms=ms, images_per_s=batch / ms * 1e3,
                       first_step_s=first, peak_cuda_bytes=peak, device=torch.cuda.get_device_name(0))
            print(json.dumps(row))
            out.append(row)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            for r in out:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
