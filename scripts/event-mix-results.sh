#!/usr/bin/env bash
# RESULTS-event-mix.md from scratch: does event mixing (training/augment.py) help, for QLung and for
# cross-entropy, and does training on the daemon's windows alone (no cycles as examples of their own) close the
# gap between window and cycle level? Each seed trains the twenty-three recipes in turn (with and without mixing,
# mixed units or windows only, both losses, cross-entropy with each event laid at its own length, both losses with
# mixing on edge-cnn's finer time axis, with and without the batch-norm statistics recomputed before each
# validation, cross-entropy on the finer axis with the best epoch picked on the balanced validation Score, both
# losses on the finer axis with a second loss on when the events happen (training/timing.py), and cross-entropy on
# the finer axis with events laid at their own length or with the max over time steps alone (steps seeing all of
# the window or under a second of it) or trained twice as long or with the events of half its abnormal windows
# removed (training/augment.py, remove_events) or with edge-cnn twice as wide or with each mel band's mean over the
# window subtracted before the network or both losses on 2 s windows instead of 4 s, these last paired
# with the fine-time seeds streamed under the gate fitted as training fits it since the drift check: their
# eval-stream-later/ from scripts/gate-later-results.sh),
# so a series stopped early still leaves every pair of the paired
# differences; a rerun resumes where it stopped. Each seed's reports are kept in seed-reports/
# (scripts/archive_runs.py), so seeds trained on another day or machine add up. About 405 minutes per seed
# (twenty-three runs) on a 2-core CPU.
# Usage: bash scripts/event-mix-results.sh [DATA] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/sprsound}
seeds=${2:-0,1,2}
mix=qlung-edge-sprsound-windows-event-mix
base=qlung-edge-sprsound-windows
ce_mix=ce-edge-sprsound-windows-event-mix
ce=ce-edge-sprsound-windows
mix_w=qlung-edge-sprsound-windows-only-event-mix
ce_mix_w=ce-edge-sprsound-windows-only-event-mix
ce_mix_e=ce-edge-sprsound-windows-event-mix-event-length
ce_mix_t=ce-edge-sprsound-windows-event-mix-fine-time
mix_t=qlung-edge-sprsound-windows-event-mix-fine-time
ce_mix_tb=ce-edge-sprsound-windows-event-mix-fine-time-recal-bn
mix_tb=qlung-edge-sprsound-windows-event-mix-fine-time-recal-bn
ce_mix_ts=ce-edge-sprsound-windows-event-mix-fine-time-balanced-selection
ce_mix_tt=ce-edge-sprsound-windows-event-mix-fine-time-event-timing
mix_tt=qlung-edge-sprsound-windows-event-mix-fine-time-event-timing
ce_mix_te=ce-edge-sprsound-windows-event-mix-fine-time-event-length
ce_mix_tm=ce-edge-sprsound-windows-event-mix-fine-time-max-pool
ce_mix_tl=ce-edge-sprsound-windows-event-mix-fine-time-local-max-pool
ce_mix_tg=ce-edge-sprsound-windows-event-mix-fine-time-long
ce_mix_tr=ce-edge-sprsound-windows-event-mix-fine-time-event-removal
ce_mix_tw=ce-edge-sprsound-windows-event-mix-fine-time-wide
ce_mix_tn=ce-edge-sprsound-windows-event-mix-fine-time-band-mean
ce_mix_t2=ce-edge-sprsound-windows-event-mix-fine-time-2s
mix_t2=qlung-edge-sprsound-windows-event-mix-fine-time-2s
for seed in ${seeds//,/ }; do
  for recipe in $mix $base $ce_mix $ce $ce_mix_w $mix_w $ce_mix_e $ce_mix_t $mix_t $ce_mix_tb $mix_tb $ce_mix_ts \
      $ce_mix_tt $mix_tt $ce_mix_te $ce_mix_tm $ce_mix_tl $ce_mix_tg $ce_mix_tr $ce_mix_tw $ce_mix_tn \
      $ce_mix_t2 $mix_t2; do
    bash scripts/sprsound-run.sh "$recipe" "$seed" "$data"
  done
done
.venv/bin/python scripts/archive_runs.py "runs/$mix" "runs/$base" "runs/$ce_mix" "runs/$ce" "runs/$ce_mix_w" "runs/$mix_w" \
    "runs/$ce_mix_e" "runs/$ce_mix_t" "runs/$mix_t" "runs/$ce_mix_tb" "runs/$mix_tb" "runs/$ce_mix_ts" \
    "runs/$ce_mix_tt" "runs/$mix_tt" "runs/$ce_mix_te" "runs/$ce_mix_tm" \
    "runs/$ce_mix_tl" "runs/$ce_mix_tg" "runs/$ce_mix_tr" "runs/$ce_mix_tw" "runs/$ce_mix_tn" \
    "runs/$ce_mix_t2" "runs/$mix_t2" --to seed-reports
.venv/bin/python scripts/results.py \
    --group "QLung + mixing=seed-reports/$mix" --group "QLung=seed-reports/$base" \
    --group "CE + mixing=seed-reports/$ce_mix" --group "cross-entropy=seed-reports/$ce" \
    --group "CE + mixing (windows only)=seed-reports/$ce_mix_w" \
    --group "QLung + mixing (windows only)=seed-reports/$mix_w" \
    --group "CE + mixing at event length=seed-reports/$ce_mix_e" \
    --group "CE + mixing on a fine time axis=seed-reports/$ce_mix_t" \
    --group "QLung + mixing on a fine time axis=seed-reports/$mix_t" \
    --group "CE + mixing on a fine time axis + batch norm recomputed=seed-reports/$ce_mix_tb" \
    --group "QLung + mixing on a fine time axis + batch norm recomputed=seed-reports/$mix_tb" \
    --group "CE + mixing on a fine time axis (gate lowered)=seed-reports/$ce_mix_t:eval-stream-later" \
    --group "CE + mixing on a fine time axis (balanced selection)=seed-reports/$ce_mix_ts" \
    --group "QLung + mixing on a fine time axis (gate lowered)=seed-reports/$mix_t:eval-stream-later" \
    --group "CE + mixing on a fine time axis + event timing=seed-reports/$ce_mix_tt" \
    --group "QLung + mixing on a fine time axis + event timing=seed-reports/$mix_tt" \
    --group "CE + mixing on a fine time axis at event length=seed-reports/$ce_mix_te" \
    --group "CE + mixing on a fine time axis + max pooling=seed-reports/$ce_mix_tm" \
    --group "CE + mixing on a fine time axis + max pooling of local steps=seed-reports/$ce_mix_tl" \
    --group "CE + mixing on a fine time axis for 40 epochs=seed-reports/$ce_mix_tg" \
    --group "CE + mixing on a fine time axis + event removal=seed-reports/$ce_mix_tr" \
    --group "CE + mixing on a fine time axis + twice as wide=seed-reports/$ce_mix_tw" \
    --group "CE + mixing on a fine time axis + band means subtracted=seed-reports/$ce_mix_tn" \
    --group "CE + mixing on a fine time axis with 2 s windows=seed-reports/$ce_mix_t2" \
    --group "QLung + mixing on a fine time axis with 2 s windows=seed-reports/$mix_t2" \
    --pair "QLung + mixing,QLung" --pair "CE + mixing,cross-entropy" --pair "QLung + mixing,CE + mixing" \
    --pair "CE + mixing (windows only),CE + mixing" --pair "QLung + mixing (windows only),QLung + mixing" \
    --pair "CE + mixing at event length,CE + mixing" --pair "CE + mixing on a fine time axis,CE + mixing" \
    --pair "QLung + mixing on a fine time axis,QLung + mixing" \
    --pair "QLung + mixing on a fine time axis,CE + mixing on a fine time axis" \
    --pair "QLung + mixing on a fine time axis (gate lowered),CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + batch norm recomputed,CE + mixing on a fine time axis" \
    --pair "QLung + mixing on a fine time axis + batch norm recomputed,QLung + mixing on a fine time axis" \
    --pair "CE + mixing on a fine time axis (balanced selection),CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + event timing,CE + mixing on a fine time axis (gate lowered)" \
    --pair "QLung + mixing on a fine time axis + event timing,QLung + mixing on a fine time axis (gate lowered)" \
    --pair "QLung + mixing on a fine time axis + event timing,CE + mixing on a fine time axis + event timing" \
    --pair "CE + mixing on a fine time axis at event length,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + max pooling,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + max pooling of local steps,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis for 40 epochs,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + event removal,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + twice as wide,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis + band means subtracted,CE + mixing on a fine time axis (gate lowered)" \
    --pair "CE + mixing on a fine time axis with 2 s windows,CE + mixing on a fine time axis (gate lowered)" \
    --pair "QLung + mixing on a fine time axis with 2 s windows,QLung + mixing on a fine time axis (gate lowered)" \
    --pair "QLung + mixing on a fine time axis with 2 s windows,CE + mixing on a fine time axis with 2 s windows" \
    --out RESULTS-event-mix.md --skip-empty
.venv/bin/python scripts/readme_figures.py
