#!/usr/bin/env bash
# README command 2: set up, lint, then the whole test suite (GPU tests skip where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
