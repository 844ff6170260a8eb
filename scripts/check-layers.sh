#!/usr/bin/env bash
# Fails when a module of the library imports one above it. The layers, from the bottom:
#   0 data and utilities (data, rng, measure, metrics, plot, progress)
#   1 device (gpu) and the collectives' interface (collective)
#   2 op launchers and references (ops, but for each op's tape.rs)
#   3 the tape and the ops' tape entries (tape, ops/*/tape.rs)
#   4 models and their weight files (models, weights)
#   5 optimizer and step (optim, train, budget)
#   6 data-parallel wrapper (dist)
#   7 run (run)
#   8 study and checks against PyTorch (study, verify)
# The binary (src/bin) sits on top. Data may import only the RNG. Doc comments may link
# anywhere: only code lines count. Paths through `super::` stay inside a module's own
# folder, which has one layer (but ops/<op>/tape.rs, checked as a tape entry).
set -euo pipefail
cd "$(dirname "$0")/.."

# The layer of a path below src/ (a file) or below crate:: (a module path, `::`-separated).
layer() {
    case "$1" in
    data* | rng* | measure* | metrics* | plot* | progress*) echo 0 ;;
    gpu* | collective*) echo 1 ;;
    ops/*/tape.rs | ops::*::tape*) echo 3 ;;
    ops*) echo 2 ;;
    tape*) echo 3 ;;
    models* | weights*) echo 4 ;;
    optim* | train* | budget*) echo 5 ;;
    dist*) echo 6 ;;
    run*) echo 7 ;;
    study* | verify*) echo 8 ;;
    lib.rs) echo 9 ;;
    *) echo "unknown" ;;
    esac
}

status=0
while IFS= read -r file; do
    rel=${file#src/}
    own=$(layer "$rel")
    if [ "$own" = unknown ]; then
        echo "check-layers: $file has no layer; add it to scripts/check-layers.sh"
        status=1
        continue
    fi
    # Code lines only (no // comments), each `crate::` path up to its first non-module part.
    while IFS=: read -r line path; do
        dep=$(layer "$path")
        if [ "$dep" = unknown ]; then
            echo "check-layers: $file:$line uses crate::$path, which has no layer"
            status=1
        elif [ "$dep" -gt "$own" ]; then
            echo "check-layers: $file:$line (layer $own) uses crate::$path (layer $dep)"
            status=1
        elif [ "$own" = 0 ] && [ "${rel%%/*}" = data ] && [ "${path%%::*}" != data ] && [ "${path%%::*}" != rng ]; then
            echo "check-layers: $file:$line: data imports crate::$path; it may import only the RNG"
            status=1
        fi
    done < <(grep -nvE '^\s*//' "$file" | grep -oE '^[0-9]+:|crate::[a-z_0-9]+(::[a-z_0-9]+)*' \
        | awk '/^[0-9]+:$/ { line = substr($0, 1, length($0) - 1); next } { sub(/^crate::/, ""); print line ":" $0 }')
done < <(find src -name '*.rs' -not -path 'src/bin/*' | sort)

# An op's launchers and references never name a tape entry (`mod tape;` declares one).
launchers=$(find src/ops -name '*.rs' ! -name tape.rs | sort)
if grep -nE '(^|[^a-z_])tape::' $launchers | grep -vE '^[^:]+:[0-9]+:\s*//'; then
    echo "check-layers: an op launcher above uses a tape entry"
    status=1
fi

# Grouped paths (`use crate::{a, b}`) would hide their modules from the check above.
if grep -rnE 'crate::\{' src --include='*.rs' --exclude-dir=bin | grep -vE '^[^:]+:[0-9]+:\s*//'; then
    echo "check-layers: name each module (use crate::a::X; use crate::b::Y) so its layer can be checked"
    status=1
fi
exit $status
