#!/usr/bin/env bash
# Installs the system libraries metatrain links against (Debian/Ubuntu):
# libzmq (with CURVE), OpenBLAS and HDF5, plus pkg-config to find them.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  libzmq3-dev libopenblas-dev libhdf5-dev pkg-config >/dev/null
echo "system libraries installed: libzmq3-dev libopenblas-dev libhdf5-dev pkg-config"
