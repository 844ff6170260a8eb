"""PyTorch's CPU time for the cases of benches/kernels.rs and benches/train_step.rs, measured
on the machine the crate's own benches run on, so that every "ours vs PyTorch" figure is a
ratio of two measurements made side by side.

    python3 benches/torch_cpu.py [kernels|steps|all] [FILTER]

Kernels: median over 9 samples (each >= 40 ms of back-to-back calls, after a warm-up call),
forward alone and forward + backward (the gradient of every input the crate's backward pass
produces, from a fixed random output gradient). Steps: one training step of the torchvision
DenseNet or ResNet (forward, cross-entropy, backward, Adam), median of timed steps after one
untimed step, DenseNet both default and memory_efficient=True (torchvision's ResNet has no
such mode), with the process's peak RSS measured in a fresh child process per configuration. Threads: torch.set_num_threads(os.cpu_count()).
Writes JSON lines to target/bench/torch_cpu_kernels.jsonl / torch_cpu_steps.jsonl.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "target", "bench")


def timed(fn, samples=9, min_s=0.04):
    """Median seconds per call of fn (after one warm-up call)."""
    fn()
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-6)
    per = max(1, min(50, int(min_s / once + 0.999)))
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(per):
            fn()
        times.append((time.perf_counter() - t) / per)
    return statistics.median(times)


def rand(*shape, grad=False):
    return torch.empty(*shape).uniform_(-1.0, 1.0).requires_grad_(grad)


def kernel_cases():
    """(name, forward fn, forward+backward fn); shapes as in benches/kernels.rs."""
    torch.manual_seed(0)
    cases = []

    def conv(name, n, c, s, k, ks, stride, pad, data_grad):
        x = rand(n, c, s, s, grad=data_grad)
        w = rand(k, c, ks, ks, grad=True)
        with torch.no_grad():
            g = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad))
        fwd = lambda: F.conv2d(x, w, stride=stride, padding=pad)

        def fwd_bwd():
            y = F.conv2d(x, w, stride=stride, padding=pad)
            y.backward(g)

        cases.append((name, fwd, fwd_bwd))

    conv("conv3x3_n8_c128_k32_s28", 8, 128, 28, 32, 3, 1, 1, True)
    conv("conv1x1_n8_c256_k128_s56", 8, 256, 56, 128, 1, 1, 0, True)
    conv("conv7x7s2_n8_c3_k64_s224", 8, 3, 224, 64, 7, 2, 3, False)

    # Batch norm in training mode followed by ReLU (the crate's kernel fuses the ReLU).
    x = rand(8, 256, 56, 56, grad=True)
    gamma, beta = torch.ones(256, requires_grad=True), torch.zeros(256, requires_grad=True)
    rm, rv = torch.zeros(256), torch.ones(256)
    g = torch.randn(8, 256, 56, 56)
    bn = lambda: F.relu(F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5))
    cases.append(("bn_n8_c256_s56", bn, lambda: bn().backward(g)))

    x1 = rand(8, 256, 56, 56, grad=True)
    cases.append(("relu_n8_c256_s56", lambda: F.relu(x1), lambda: F.relu(x1).backward(g)))

    g2 = torch.randn(8, 256, 28, 28)
    ap = lambda: F.avg_pool2d(x1, 2, 2)
    cases.append(("avgpool2_n8_c256_s56", ap, lambda: ap().backward(g2)))

    a, b = rand(8, 256, 28, 28, grad=True), rand(8, 32, 28, 28, grad=True)
    g3 = torch.randn(8, 288, 28, 28)
    cat = lambda: torch.cat([a, b], 1)
    cases.append(("concat_n8_c256p32_s28", cat, lambda: cat().backward(g3)))

    x2 = rand(8, 64, 112, 112, grad=True)
    g4 = torch.randn(8, 64, 56, 56)
    mp = lambda: F.max_pool2d(x2, 3, 2, 1)
    cases.append(("maxpool3s2_n8_c64_s112", mp, lambda: mp().backward(g4)))

    x3, w3, bias = rand(8, 1024, grad=True), rand(4, 1024, grad=True), rand(4, grad=True)
    g5 = torch.randn(8, 4)
    lin = lambda: F.linear(x3, w3, bias)
    cases.append(("linear_n8_1024_4", lin, lambda: lin().backward(g5)))

    ma, mb = rand(512, 512, grad=True), rand(512, 512, grad=True)
    g6 = torch.randn(512, 512)
    mm = lambda: ma @ mb
    cases.append(("matmul_512", mm, lambda: mm().backward(g6)))
    return cases


def run_kernels(flt):
    rows = []
    print(f"{'kernel':<26} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for name, fwd, fwd_bwd in kernel_cases():
        if flt and flt not in name:
            continue
        with torch.no_grad():
            f = timed(fwd) * 1e3
        fb = timed(fwd_bwd) * 1e3
        print(f"{name:<26} {f:>11.3f} {fb:>11.3f}")
        rows.append(dict(name=name, forward_ms=f, forward_backward_ms=fb))
    return rows


STEPS = [
    ("densenet-bc_32_b64", dict(growth_rate=12, block_config=(6, 6, 6), num_init_features=24), 32, 64),
    ("densenet121_64_b8", dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64), 64, 8),
    ("densenet121_224_b8", dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64), 224, 8),
    ("resnet18_64_b8", "resnet18", 64, 8),
    ("resnet50_64_b8", "resnet50", 64, 8),
    ("resnet18_224_b8", "resnet18", 224, 8),
    ("resnet50_224_b8", "resnet50", 224, 8),
]


def step_child(name, efficient, steps):
    import torchvision

    kw, size, batch = next((kw, s, b) for n, kw, s, b in STEPS if n == name)
    torch.manual_seed(0)
    if isinstance(kw, str):
        model = getattr(torchvision.models, kw)(num_classes=4).train()
    else:
        model = torchvision.models.DenseNet(num_classes=4, memory_efficient=efficient, **kw).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 4

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(name=name, memory_efficient=efficient, ms=statistics.median(times),
                          images_per_s=batch / statistics.median(times) * 1e3, first_step_s=first,
                          peak_rss_bytes=rss, threads=torch.get_num_threads(),
                          torch=torch.__version__)))


def run_steps(flt):
    steps = int(os.environ.get("BENCH_STEPS", "5"))
    rows = []
    print(f"{'config':<22} {'mode':<17} {'ms/step':>9} {'peak RSS MiB':>13}")
    for name, kw, _, _ in STEPS:
        if flt and flt not in name:
            continue
        for efficient in (False, True) if not isinstance(kw, str) else (False,):
            out = subprocess.run([sys.executable, __file__, "--child", name, str(int(efficient)),
                                  str(steps)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            mode = "memory_efficient" if efficient else "default"
            print(f"{name:<22} {mode:<17} {row['ms']:>9.1f} {row['peak_rss_bytes'] / 2**20:>13.1f}")
            rows.append(row)
    return rows


def write(path, rows):
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, path), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    if sys.argv[1:2] == ["--child"]:
        step_child(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))
        return
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    flt = sys.argv[2] if len(sys.argv) > 2 else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if what in ("kernels", "all"):
        write("torch_cpu_kernels.jsonl", run_kernels(flt))
    if what in ("steps", "all"):
        write("torch_cpu_steps.jsonl", run_steps(flt))


if __name__ == "__main__":
    main()
