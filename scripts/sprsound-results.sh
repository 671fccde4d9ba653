#!/usr/bin/env bash
# The clinical figures of RESULTS.md, from scratch: train QLung and cross-entropy on the real SPRSound training
# recordings, export each seed's bundle, stream the inter-patient test set through it, judge the verdict rule's
# calibration on the same stream (scripts/verdict_transfer.py) and how the quality gate carries over to unseen
# patients (scripts/gate_transfer.py), average the seeds (scripts/seed_ensemble.py), write RESULTS.md.
# Seeds are taken in turn, one of each loss at a time, so a run stopped early still leaves paired seeds, and a
# rerun resumes (scripts/sprsound-run.sh skips what is done). Each seed's reports are kept in seed-reports/
# (scripts/archive_runs.py).
# About 25 minutes per seed pair on a 2-core CPU. Usage: bash scripts/sprsound-results.sh [DATA] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/sprsound}
seeds=${2:-0,1,2,3,4}
for seed in ${seeds//,/ }; do
  for recipe in qlung-edge-sprsound-windows ce-edge-sprsound-windows; do
    bash scripts/sprsound-run.sh "$recipe" "$seed" "$data"
  done
done
.venv/bin/python scripts/seed_ensemble.py runs/qlung-edge-sprsound-windows runs/ce-edge-sprsound-windows
.venv/bin/python scripts/archive_runs.py runs/qlung-edge-sprsound-windows runs/ce-edge-sprsound-windows --to seed-reports
.venv/bin/python scripts/results.py --group "QLung=runs/qlung-edge-sprsound-windows" \
    --group "cross-entropy=runs/ce-edge-sprsound-windows" --out RESULTS.md
.venv/bin/python scripts/readme_figures.py
