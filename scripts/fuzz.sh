#!/usr/bin/env bash
# Longer fuzzing than the unit suite: the link decoder (arbitrary bytes; real frames damaged by bit flips,
# deletions and inserted garbage, fed in random chunks) and the WAV reader (real ICBHI recordings with flipped,
# cut, inserted and zeroed bytes), through the same hypothesis properties as tests/test_link.py and
# tests/test_audio.py with EXAMPLES examples each. Prints how many inputs each property tried.
# Usage: bash scripts/fuzz.sh [EXAMPLES]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."
QLUNG_FUZZ_EXAMPLES=${1:-20000} .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 0 \
    tests/test_link.py tests/test_audio.py -k "arbitrary_bytes or corrupted_streams or mutated_real_wav" \
    --hypothesis-show-statistics --hypothesis-seed="${FUZZ_SEED:-$RANDOM}"
