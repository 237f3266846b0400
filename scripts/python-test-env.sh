#!/usr/bin/env bash
# Makes the Python environment in which tests/it/peft_round_trip.rs loads umrank releases with transformers + peft:
# a venv at ${UMRANK_PYENV:-$HOME/.cache/umrank/python-test-env} holding exactly the pinned packages of
# scripts/python-test-requirements.txt, installed from PyPI. Prints the venv's python on stdout.
#
# Every package is installed with --no-deps: PyPI's torch wheel otherwise pulls several GB of nvidia-* and triton
# packages that a CPU-only run never loads; torch imports and runs on the CPU without them. The list therefore
# names every module transformers, peft and torch import, pinned.
#
# Idempotent: a venv built from the current requirements (their SHA-256 is recorded in it) is reused; one built
# from other requirements, or left half-built, is rebuilt. Concurrent runs wait for each other on a lock file.
#
# Usage: scripts/python-test-env.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
requirements="$here/python-test-requirements.txt"
venv="${UMRANK_PYENV:-$HOME/.cache/umrank/python-test-env}"
python="${PYTHON:-python3}"

die() {
  echo "python-test-env: $*" >&2
  exit 1
}

want="$(sha256sum "$requirements" | cut -d ' ' -f 1)"
ready() {
  [[ -f "$venv/.complete" ]] && [[ "$(cat "$venv/.complete")" == "$want" ]]
}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ! ready; then
  echo "python-test-env: installing $requirements into $venv (a few minutes, once)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv" || die "$python -m venv failed (Python 3.10+ with the venv module is needed)"
  "$venv/bin/python" -m pip install --no-deps --disable-pip-version-check --quiet -r "$requirements" ||
    die "pip install failed (PyPI must be reachable)"
  "$venv/bin/python" -c 'import torch, transformers, peft; torch.ones(2, 2) @ torch.ones(2, 2)' ||
    die "the installed packages do not import"
  echo "$want" >"$venv/.complete"
fi
echo "$venv/bin/python"
