#!/usr/bin/env bash
# Builds the binaries benches/gpu/run.sh needs into .devbin/ (stripped), and fetches the
# Vulkan loader package into .gl/. Run from the repository root on an x86-64 build machine.
set -euo pipefail
cargo build --release --bins --benches --tests
mkdir -p .devbin .gl
newest() { ls -t target/release/deps/$1-* | grep -v '\.d$' | head -1; }
cp target/release/train .devbin/train
cp "$(newest kernels)" .devbin/kernels-test
cp "$(newest model)" .devbin/model-test
cp "$(newest train_step)" .devbin/train_step-bench
# The kernels bench and the kernels test share a name prefix: pick the bench by its size-independent marker.
for f in $(ls -t target/release/deps/kernels-* | grep -v '\.d$'); do
    if strings "$f" | grep -q "measured ceilings"; then cp "$f" .devbin/kernels-bench; break; fi
done
strip .devbin/*
ls .gl/libvulkan1_*.deb >/dev/null 2>&1 || (cd .gl && apt-get download libvulkan1)
du -sh .devbin .gl
