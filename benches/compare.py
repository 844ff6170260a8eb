"""Side-by-side table of the crate's benches and PyTorch's CPU time on the same machine.

    python3 benches/compare.py [RUN_DIR ...]

Each RUN_DIR holds one run's JSON lines (default: target/bench): kernels.jsonl and
train_step.jsonl from `cargo bench`, torch_cpu_kernels.jsonl and torch_cpu_steps.jsonl from
benches/torch_cpu.py, and burn_wgpu_kernels.jsonl from benches/burn_wgpu (Burn on the same
adapter; its forward+backward is taken less the time of its loss seed). With several run
folders every figure is printed as "median [min-max]" over the runs, and each ratio is taken
within a run before the range is formed, so no ratio ever mixes two runs. A run folder
without Burn's figures falls back to those measured for the project's performance issue on
a 2-core AMD EPYC with Mesa 25.0.7 lavapipe; the Burn column then says "EPYC", as those
ratios compare two machines.
"""
import json
import os
import statistics
import sys

# Burn 0.22.1 wgpu backend on lavapipe, median ms (forward, forward + backward).
BURN_EPYC = {
    "conv3x3_n8_c128_k32_s28": (180.0, 584.0),
    "conv1x1_n8_c256_k128_s56": (283.0, 1927.0),
    "conv7x7s2_n8_c3_k64_s224": (2534.0, 3461.0),
    "bn_n8_c256_s56": (249.0, 507.0),
    "relu_n8_c256_s56": (17.2, 22.0),
    "avgpool2_n8_c256_s56": (41.9, 94.4),
    "concat_n8_c256p32_s28": (16.5, 20.0),
    "matmul_512": (36.1, 148.6),
}


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_figures(d):
    """{kernel: {ours_f, ours_fb, torch_f, torch_fb, ceil_pct...}}, {step: {...}} of one run."""
    kernels = {}
    for r in load(os.path.join(d, "kernels.jsonl")):
        k = kernels.setdefault(r["name"], {"ours_f": 0.0, "ours_fb": 0.0})
        if r["pass"] == "forward":
            k["ours_f"] = r["ms"]
        k["ours_fb"] += r["ms"]
    for r in load(os.path.join(d, "torch_cpu_kernels.jsonl")):
        if r["name"] in kernels:
            kernels[r["name"]]["torch_f"] = r["forward_ms"]
            kernels[r["name"]]["torch_fb"] = r["forward_backward_ms"]
    # Burn's forward_backward includes its seed (y * g).sum(), which ours does not do.
    burn = {(r["name"], r["pass"]): r["ms"] for r in
            load(os.path.join(d, "burn_wgpu_kernels.jsonl"))}
    for name, k in kernels.items():
        if (name, "forward") in burn:
            k["burn_f"] = burn[(name, "forward")]
        if (name, "forward_backward") in burn:
            k["burn_fb"] = burn[(name, "forward_backward")] - burn.get((name, "seed"), 0.0)
    steps = {}
    for r in load(os.path.join(d, "train_step.jsonl")):
        steps[(r["name"], r["mode"])] = {"ours": r["ms"], "rss": r["peak_rss_bytes"]}
    torch_steps = {(r["name"], r["memory_efficient"]): r for r in
                   load(os.path.join(d, "torch_cpu_steps.jsonl"))}
    for (name, mode), s in steps.items():
        # torchvision's ResNet has one mode: both of ours are compared with it.
        t = torch_steps.get((name, mode == "MemoryEfficient")) or torch_steps.get((name, False))
        if t:
            s["torch"] = t["ms"]
            s["torch_rss"] = t["peak_rss_bytes"]
    return kernels, steps


def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return (fmt + " [" + fmt + "-" + fmt + "]").format(statistics.median(values), min(values),
                                                        max(values))


def ratio_text(values):
    """Time ratios ours / theirs (below 1: ours is faster)."""
    values = [v for v in values if v]
    return spread(values, "{:.2f}") if values else "-"


def main():
    dirs = sys.argv[1:] or [os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "target", "bench")]
    runs = [run_figures(d) for d in dirs]
    names = []
    for kernels, _ in runs:
        names += [n for n in kernels if n not in names]
    print(f"{len(runs)} run(s): " + ", ".join(dirs))
    print("\nratios are times, ours / theirs: below 1 ours is faster")
    same = all(any("burn_f" in v for v in k.values()) for k, _ in runs)
    burn_label = "ours/Burn" if same else "ours/Burn (EPYC)"
    print(f"\n{'kernel':<26} {'pass':<8} {'ours ms':>24} {'PyTorch ms':>24} "
          f"{'ours/PyTorch':>22} {'Burn ms':>24} {burn_label:>22}")
    for name in names:
        for col, label in (("f", "fwd"), ("fb", "fwd+bwd")):
            ours = [k[name].get("ours_" + col) for k, _ in runs if name in k]
            torch = [k[name].get("torch_" + col) for k, _ in runs if name in k]
            vs_torch = [o / t for o, t in zip(ours, torch) if o and t]
            if same:
                burn_ms = [k[name].get("burn_" + col) for k, _ in runs if name in k]
                vs_burn = [k[name].get("ours_" + col, 0) / k[name]["burn_" + col]
                           for k, _ in runs if name in k and k[name].get("burn_" + col)]
            else:
                burn = BURN_EPYC.get(name)
                burn_ms = [burn[0 if col == "f" else 1]] if burn else []
                vs_burn = [o / burn[0 if col == "f" else 1] for o in ours if o] if burn else []
            print(f"{name:<26} {label:<8} {spread(ours, '{:.1f}'):>24} "
                  f"{spread(torch, '{:.1f}'):>24} {ratio_text(vs_torch):>22} "
                  f"{spread(burn_ms, '{:.1f}'):>24} {ratio_text(vs_burn):>22}")
    keys = []
    for _, steps in runs:
        keys += [k for k in steps if k not in keys]
    if keys:
        print(f"\n{'step':<22} {'mode':<16} {'ours ms':>24} {'PyTorch ms':>24} "
              f"{'ours/PyTorch':>22} {'RSS MiB ours / PyTorch':>24}")
    for key in keys:
        ours = [s[key]["ours"] for _, s in runs if key in s]
        torch = [s[key].get("torch") for _, s in runs if key in s]
        vs = [s[key]["ours"] / s[key]["torch"] for _, s in runs if key in s and "torch" in s[key]]
        rss = [s[key]["rss"] / 2**20 for _, s in runs if key in s]
        trss = [s[key].get("torch_rss", 0) / 2**20 or None for _, s in runs if key in s]
        print(f"{key[0]:<22} {key[1]:<16} {spread(ours, '{:.0f}'):>24} "
              f"{spread(torch, '{:.0f}'):>24} {ratio_text(vs):>22} "
              f"{spread(rss, '{:.0f}') + ' / ' + spread(trss, '{:.0f}'):>24}")


if __name__ == "__main__":
    main()
