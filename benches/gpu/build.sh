#!/usr/bin/env bash
# Builds the binaries benches/gpu/run.sh needs into .devbin/ (stripped), and fetches the
# Vulkan loader package into .gl/. Run from the repository root on an x86-64 build machine.
set -euo pipefail
cargo build --release --bins --benches --tests
rm -rf .devbin && mkdir -p .devbin .gl
newest() { ls -t target/release/deps/$1-* | grep -v '\.d$' | head -1; }
cp target/release/train .devbin/train
cp "$(newest model)" .devbin/model-test
cp "$(newest train_step)" .devbin/train_step-bench
cp "$(newest load_costs)" .devbin/load_costs-bench
# The kernels bench and the kernels test share a name prefix: tell them apart by a string
# only the bench prints.
for f in $(ls -t target/release/deps/kernels-* | grep -v '\.d$'); do
    if grep -q "measured ceilings" "$f"; then
        [ -e .devbin/kernels-bench ] || cp "$f" .devbin/kernels-bench
    else
        [ -e .devbin/kernels-test ] || cp "$f" .devbin/kernels-test
    fi
done
strip .devbin/*
# The Vulkan loader, and glvnd (the NVIDIA ICD's libGLX_nvidia needs libGLdispatch).
ls .gl/libvulkan1_*.deb >/dev/null 2>&1 ||
    (cd .gl && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .devbin .gl
