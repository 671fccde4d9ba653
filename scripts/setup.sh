#!/usr/bin/env bash
# Makes .venv with the toolkit and everything the demo and the tests need.
# Quick when nothing changed: pip runs again only when setup.cfg or constraints.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv}

bash scripts/install-system-packages.sh

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.qlung-edge-installed"
want=$(cat setup.cfg constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  # torch first, pinned: any looser requirement would pull several GB of CUDA wheels.
  echo "installing torch (pinned in constraints.txt)"
  "${pip[@]}" -c constraints.txt torch 2>&1 | { grep -v "is neither a file nor a directory" || true; }
  echo "installing qlung-edge with its train, export, mic, serial, mqtt and dev extras"
  "${pip[@]}" -c constraints.txt -e ".[train,export,mic,serial,mqtt,dev]" 2>&1 | { grep -v "is neither a file nor a directory" || true; }
  "$venv/bin/python" -c "import torch, onnxruntime, soundfile, soxr, sounddevice" || { echo "error: set-up finished but imports fail" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
