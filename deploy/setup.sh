#!/usr/bin/env bash
# Sets up ast-edge on a Debian/Ubuntu machine: system packages (GStreamer, Mosquitto, the real
# images the demo and tests use), then the npm dependencies from the lockfile, then the default
# backbone. Safe to run again: it only installs what is missing.
#
#   deploy/setup.sh                 everything the agent, demo and tests need
#   deploy/setup.sh --reference     also python3-torch, to regenerate parity fixtures and time PyTorch
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # gstreamer-superficial builds against these; the agent's camera pipelines run on them
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-tools
  # node-gyp toolchain for the native addon
  build-essential python3
  # a real MQTT broker (tests start their own)
  mosquitto
  # systemd-notify (the agent's sd_notify sender; its test listens with python3) and systemd-analyze
  # (unit check); present on any systemd machine, missing from minimal container images
  systemd
  # real images: CC0 textures (skimage data) and Fashion-MNIST
  python3-skimage dataset-fashion-mnist
)
if [[ "${1:-}" == "--reference" ]]; then APT_PACKAGES+=(python3-torch python3-numpy); fi

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup: Node.js >= 20 and npm >= 11 are required (https://nodejs.org or your distribution)" >&2
    exit 1
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if ((major < 20)); then
    echo "setup: Node.js >= 20 is required, found $(node --version)" >&2
    exit 1
  fi
}

install_system_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "setup: system packages present"
    return
  fi
  echo "setup: installing ${missing[*]}"
  local sudo=()
  if ((EUID != 0)); then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

need_node
install_system_packages
# .npmrc skips onnxruntime-node's CUDA download (offline); see README "GPU hosts" to enable it.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
else
  echo "setup: npm dependencies up to date"
fi
node bin/ast-agent.js backbone build >/dev/null
echo "setup: done"
