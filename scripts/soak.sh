#!/usr/bin/env bash
# 2,000 training steps (or $1) of densenet-tiny on the embedded dataset, printing the crate's
# held device bytes and the process RSS at the first, middle and last step.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --example soak -- "${1:-2000}" "${2:-densenet-tiny}" "${3:-32}" "${4:-32}"
