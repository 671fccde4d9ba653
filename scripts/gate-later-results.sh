#!/usr/bin/env bash
# The quality gate as training now fits it (budget lowered until a gate fitted without the latest fifth of the
# training patients refuses at most 5 % of their good windows; training/quality_model.py, LATER_BUDGET) on seeds
# trained before that change: `qlung-edge fit-gate` on each seed's best.pt (classifier untouched, verdict rule
# calibrated again), export, stream the inter-patient test set into eval-stream-later/, archive, and GATE.md
# beside the same seeds under the gate they were trained with. About 6 minutes per seed on a 2-core CPU.
# Usage: [SEEDS="0 1 2"] bash scripts/gate-later-results.sh [SPRSOUND-FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/sprsound}
q=.venv/bin/qlung-edge
recipes="ce-edge-sprsound-windows-event-mix-fine-time qlung-edge-sprsound-windows-event-mix-fine-time"
for recipe in $recipes; do
    for seed in ${SEEDS:-0 1 2 3 4}; do
        run="runs/$recipe/seed$seed"
        bundle="bundles/$recipe-seed$seed-later"
        [ -f "$run/best.pt" ] || bash scripts/sprsound-run.sh "$recipe" "$seed" "$data"
        [ -f "$run/gate_transfer.json" ] && grep -q '"budget_for_later_upper_share"' "$run/gate_transfer.json" ||
            .venv/bin/python scripts/gate_transfer.py "$run" --budgets 0.01 0.015 0.02 0.025 0.03 0.04 0.05 --later 0.2
        [ -f "$run/best-later.pt" ] || $q fit-gate "$run/best.pt" --out "$run/best-later.pt" --data "$data"
        [ -f "$bundle/manifest.json" ] || $q export "$run/best-later.pt" --out "$bundle" --force
        [ -f "$run/eval-stream-later/eval_stream.json" ] ||
            $q eval-stream "$bundle" --data "$data" --out "$run/eval-stream-later"
    done
    .venv/bin/python scripts/archive_runs.py "runs/$recipe" --to seed-reports
done
ce=seed-reports/ce-edge-sprsound-windows-event-mix-fine-time
ql=seed-reports/qlung-edge-sprsound-windows-event-mix-fine-time
.venv/bin/python scripts/results.py \
    --group "CE fine time at 3 %=$ce" --group "CE fine time lowered=$ce:eval-stream-later" \
    --group "QLung fine time at 3 %=$ql" --group "QLung fine time lowered=$ql:eval-stream-later" \
    --pair "CE fine time lowered,CE fine time at 3 %" --pair "QLung fine time lowered,QLung fine time at 3 %" \
    --out GATE.md
