#!/usr/bin/env bash
# Installs the system libraries metatrain links against (Debian/Ubuntu):
# libzmq (with CURVE), OpenBLAS and HDF5, plus pkg-config to find them, and
# iproute2 (the multi-host test makes network namespaces as hosts).
# With --tests, also what only the test suite needs: munge and Slurm (the
# sbatch recipe runs under a throwaway single-node cluster).
set -euo pipefail
tests=0
for a in "$@"; do
  case "$a" in
    --tests) tests=1 ;;
    *) echo "usage: tools/install-deps.sh [--tests]" >&2; exit 2 ;;
  esac
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
packages=(libzmq3-dev libopenblas-dev libhdf5-dev pkg-config iproute2)
if [ $tests = 1 ]; then packages+=(munge slurmctld slurmd slurm-client); fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "system packages installed: ${packages[*]}"
# h5py lets the tests read checkpoints independently (tools/check_checkpoint.py).
if command -v python3 >/dev/null 2>&1; then
  python3 -m pip install --quiet h5py numpy 2>/dev/null || echo "note: could not pip install h5py; its checkpoint test will be skipped"
  # TensorBoard reads a run's tb/ event files in a test, as a user's tensorboard would.
  if [[ " $* " == *" --tests "* ]]; then
    python3 -m pip install --quiet tensorboard 2>/dev/null || echo "note: could not pip install tensorboard; its event-file test will be skipped"
    # pyarrow writes the notebook-shaped parquet fixtures that tools/import_notebooks.py reads.
    python3 -m pip install --quiet pyarrow 2>/dev/null || echo "note: could not pip install pyarrow; the notebook import test will be skipped"
    # matplotlib draws a study's plots (tools/plot_study.py) in the study test.
    python3 -m pip install --quiet matplotlib 2>/dev/null || echo "note: could not pip install matplotlib; the study plot check will be skipped"
  fi
fi
