#!/usr/bin/env bash
# The clinical figures of RESULTS.md, from scratch: train QLung and cross-entropy on the real SPRSound training
# recordings, export each seed's bundle, stream the inter-patient test set through it, judge the verdict rule's
# calibration on the same stream (scripts/verdict_transfer.py) and how the quality gate carries over to unseen
# patients (scripts/gate_transfer.py), average the seeds (scripts/seed_ensemble.py), write RESULTS.md.
# Seeds are taken in turn, one of each loss at a time, so a run stopped early still leaves paired seeds.
# About 25 minutes per seed pair on a 2-core CPU. Usage: bash scripts/sprsound-results.sh [DATA] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/sprsound}
seeds=${2:-0,1,2,3,4}
q=.venv/bin/qlung-edge
for seed in ${seeds//,/ }; do
  for recipe in qlung-edge-sprsound-windows ce-edge-sprsound-windows; do
    run="runs/$recipe/seed$seed"
    $q train --config "$recipe" "data.root=$data" --seeds "$seed" --out "runs/$recipe"
    $q export "$run/best.pt" --out "bundles/$recipe-seed$seed" --force --check-audio "$data/test_wav"
    $q eval-stream "bundles/$recipe-seed$seed" --data "$data" --out "$run/eval-stream"
    .venv/bin/python scripts/verdict_transfer.py "$run"
    .venv/bin/python scripts/gate_transfer.py "$run"
  done
done
.venv/bin/python scripts/seed_ensemble.py runs/qlung-edge-sprsound-windows runs/ce-edge-sprsound-windows
.venv/bin/python scripts/results.py --group "QLung=runs/qlung-edge-sprsound-windows" \
    --group "cross-entropy=runs/ce-edge-sprsound-windows" --out RESULTS.md
.venv/bin/python scripts/readme_figures.py
