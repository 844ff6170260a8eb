#!/usr/bin/env bash
# Installs a CPU Vulkan device for machines without a GPU: Mesa's lavapipe from Debian 12's
# bookworm-backports (Mesa 25; Debian 12's own Mesa 22 is several times slower for
# compute), with the Vulkan loader and vulkaninfo. Idempotent: does nothing when Mesa >= 25
# is already installed. Fails loudly when no llvmpipe device is visible afterwards.
#
#   sudo scripts/setup-lavapipe.sh      (or as root)
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

mesa_version() {
    dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true
}

recent_mesa() {
    case "$(mesa_version)" in
        25.*|26.*|27.*) return 0 ;;
        *) return 1 ;;
    esac
}

if recent_mesa; then
    echo "setup-lavapipe: mesa-vulkan-drivers $(mesa_version) already installed"
else
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "setup-lavapipe: adding the bookworm-backports apt source"
        $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    echo "setup-lavapipe: installing mesa-vulkan-drivers, libvulkan1 and vulkan-tools from bookworm-backports"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
        mesa-vulkan-drivers libvulkan1 vulkan-tools >/dev/null
    if ! recent_mesa; then
        echo "setup-lavapipe: FAILED to install Mesa >= 25 (have '$(mesa_version)')" >&2
        exit 1
    fi
fi

if ! vulkaninfo --summary 2>/dev/null | grep -q llvmpipe; then
    echo "setup-lavapipe: FAILED: no llvmpipe Vulkan device visible after the install" >&2
    vulkaninfo --summary >&2 || true
    exit 1
fi
vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverInfo" || true
