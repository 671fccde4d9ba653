#!/usr/bin/env bash
# README command 1: set up, then run the whole pipeline on synthetic data made on the spot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/qlung-edge demo "$@"
