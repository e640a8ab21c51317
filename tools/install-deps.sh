#!/usr/bin/env bash
# Installs the system libraries metatrain links against (Debian/Ubuntu):
# libzmq (with CURVE), OpenBLAS and HDF5, plus pkg-config to find them.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  libzmq3-dev libopenblas-dev libhdf5-dev pkg-config iproute2 >/dev/null
echo "system packages installed: libzmq3-dev libopenblas-dev libhdf5-dev pkg-config iproute2 (namespaces as hosts in tests)"
# h5py lets the tests read checkpoints independently (tools/check_checkpoint.py).
if command -v python3 >/dev/null 2>&1; then
  python3 -m pip install --quiet h5py numpy 2>/dev/null || echo "note: could not pip install h5py; its checkpoint test will be skipped"
fi
