#!/usr/bin/env bash
# Installs what data-parallel training needs (the `mpi` cargo feature): Open MPI's runtime
# and headers from Debian's packages, and libclang for the bindings rsmpi generates at build
# time. Idempotent: does nothing when mpirun, mpi.h and libclang are there. Fails loudly
# when mpirun does not run afterwards.
#
#   sudo scripts/setup-mpi.sh      (or as root)
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

have() {
    command -v mpirun >/dev/null 2>&1 &&
        dpkg-query -W -f='${Status}' libopenmpi-dev 2>/dev/null | grep -q "ok installed" &&
        dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "ok installed"
}

if have; then
    echo "setup-mpi: Open MPI and libclang already installed"
else
    echo "setup-mpi: installing openmpi-bin, libopenmpi-dev and libclang-dev"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi

if ! mpirun --version >/dev/null 2>&1; then
    echo "setup-mpi: FAILED: mpirun does not run after the install" >&2
    exit 1
fi
mpirun --version | head -1
