#!/usr/bin/env bash
# Installs every Debian package Kiln's build, tests and benchmarks need.
# Idempotent: runs `apt-get update` and `apt-get install` only when something is missing.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

packages=(
  # build
  cmake ninja-build g++ make pkg-config git
  # libraries
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libtomlplusplus-dev
  libxxhash-dev libzstd-dev
  # LibTorch (ddp, train) and a fast BLAS for it: with only the reference
  # BLAS, matrix products run ~15x slower
  libtorch-dev libopenblas0-pthread
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev iproute2 iperf3 procps jq
  openmpi-bin libopenmpi-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# LibTorch finds BLAS through Debian's alternatives: make sure it is OpenBLAS.
blas_alt=libblas.so.3-x86_64-linux-gnu
if command -v update-alternatives >/dev/null && update-alternatives --query "$blas_alt" >/dev/null 2>&1; then
  if ! update-alternatives --query "$blas_alt" | grep -q '^Value:.*openblas'; then
    openblas=$(update-alternatives --list "$blas_alt" | grep openblas | head -n 1 || true)
    if [ -n "$openblas" ]; then
      echo "install-deps: pointing $blas_alt at $openblas"
      $SUDO update-alternatives --set "$blas_alt" "$openblas"
    else
      echo "install-deps: warning: $blas_alt does not point at OpenBLAS; LibTorch will be slow" >&2
    fi
  fi
fi
