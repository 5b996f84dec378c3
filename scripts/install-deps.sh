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
  libxxhash-dev libzstd-dev zlib1g-dev libcurl4-openssl-dev libcpp-httplib-dev libxml2-dev
  # data: the Fashion-MNIST IDX files `kiln data convert fashion-mnist` reads,
  # and the Debian text `kiln data convert text` tokenizes for the GPT example
  dataset-fashion-mnist fortunes
  # elastic rendezvous backend (tests start a real etcd on 127.0.0.1)
  etcd-server etcd-client
  # LibTorch (ddp, train) and a fast BLAS for it: with only the reference
  # BLAS, matrix products run ~15x slower
  libtorch-dev libopenblas0-pthread
  # oneDNN's headers for serve's CNN forward on its own API (the libdnnl2
  # LibTorch links, same version: kiln/serve/onednn_cnn.h)
  libdnnl-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev iproute2 iperf3 procps jq curl
  openmpi-bin libopenmpi-dev
  # bench/ddp_vs_pytorch.sh: PyTorch DDP (gloo) as the baseline
  python3-torch
  # kiln diagnose --html is checked by rendering it headless (tests/diag)
  chromium
  # keeps rebuilds across build directories (build/, build-asan/) cheap
  ccache
  # the kiln_torch PyTorch backend (python/) and the stock-PyTorch launcher tests
  python3-torch pybind11-dev python3-dev
  # tests/slurm starts a real single-host Slurm
  munge slurmctld slurmd slurm-client
  # the job token's HMAC-SHA256 and CSPRNG (kiln/base/auth); `make fuzz`:
  # clang and its libFuzzer runtime (docs/security.md)
  libssl-dev clang libclang-rt-14-dev
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

# s3rver: the S3-compatible server the object-store tests start on 127.0.0.1.
# Installed from npm into .deps/node (git-ignored), pinned.
S3RVER_VERSION=3.7.1
root=$(cd "$(dirname "$0")/.." && pwd)
node_dir="$root/.deps/node"
if [ ! -x "$node_dir/node_modules/.bin/s3rver" ] || \
   ! grep -q "\"version\": \"$S3RVER_VERSION\"" "$node_dir/node_modules/s3rver/package.json" 2>/dev/null; then
  if ! command -v npm >/dev/null; then
    echo "install-deps: installing nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  echo "install-deps: installing s3rver@$S3RVER_VERSION into $node_dir"
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "s3rver@$S3RVER_VERSION"
fi
