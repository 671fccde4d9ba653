#!/usr/bin/env bash
# docs/bedside.png, the README's picture of the bedside page: the browser test streams a real ICBHI recording
# through the daemon with the shipped model, stops the examination from the page and keeps this screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs
QLUNG_BEDSIDE_SCREENSHOT="$PWD/docs/bedside.png" .venv/bin/python -m pytest -q -p no:logging tests/test_bedside.py \
    -k shows_a_real_recording
