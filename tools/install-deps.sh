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
# Python packages for the tools and tests go into a virtual environment of
# their own, tools/.venv, never into the system's Python: h5py reads checkpoints
# independently, tensorboard reads the event files, pyarrow writes the
# notebook-shaped fixtures, matplotlib draws plots, pyzmq speaks to our sockets
# as a stranger would, scipy gives the statistics' reference answers. Run the
# tools with tools/.venv/bin/python3 (or `. tools/.venv/bin/activate` first).
if command -v python3 >/dev/null 2>&1; then
  here="$(cd "$(dirname "$0")" && pwd)"
  venv="$here/.venv"
  if [ ! -x "$venv/bin/python3" ]; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian's python3 needs its venv module from a package of its own.
      rm -rf "$venv"
      $SUDO apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
      python3 -m venv "$venv"
    fi
  fi
  if [ $tests = 1 ]; then
    req="$here/requirements.txt"
  else
    req="$(mktemp)"; grep -E '^(numpy|h5py|matplotlib|pyarrow)' "$here/requirements.txt" > "$req"
  fi
  if "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$req"; then
    echo "python packages installed in $venv"
  else
    echo "note: could not install the Python packages into $venv; tests that need them will be skipped"
  fi
fi
