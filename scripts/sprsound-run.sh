#!/usr/bin/env bash
# One seed of one recipe on the real SPRSound recordings, as RESULTS.md's figures need it: train, export the
# bundle, stream the inter-patient test set through it, judge how the verdict rule's calibration, the quality
# gate and window decision offsets fitted on validation patients carry to the test patients, and whether pooling
# neighbouring windows or decision rules fixed in advance help, how sure the gap between window and cycle level is
# over resamples of the patients, how often the run calls an annotated event in other surroundings (repeated, in its
# recording, laid once over normal breathing), how often it still calls an abnormal window abnormal once the window's
# events are removed, what the annotated edges of the events tell the cycle level, whether scanning each window
# with short crops scored as cycles calls it better, whether windows composed from a learned event segmenter's
# segments do (the segmenter of the same seed, trained once per seed by scripts/event_segments.py train), and (a run
# trained with train.event_timing) whether its step detector calls windows better than its window head. A step
# whose output is already there is skipped, so a stopped series resumes where it stopped.
# Usage: bash scripts/sprsound-run.sh RECIPE SEED [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=$1
seed=$2
data=${3:-../shared/data/sprsound}
q=.venv/bin/qlung-edge
run="runs/$recipe/seed$seed"
bundle="bundles/$recipe-seed$seed"
[ -f "$run/best.pt" ] || $q train --config "$recipe" "data.root=$data" --seeds "$seed" --out "runs/$recipe"
[ -f "$bundle/manifest.json" ] || $q export "$run/best.pt" --out "$bundle" --force --check-audio "$data/test_wav"
[ -f "$run/eval-stream/eval_stream.json" ] || $q eval-stream "$bundle" --data "$data" --out "$run/eval-stream"
[ -f "$run/verdict_transfer.json" ] || .venv/bin/python scripts/verdict_transfer.py "$run"
[ -f "$run/gate_transfer.json" ] || .venv/bin/python scripts/gate_transfer.py "$run" --later 0.2
[ -f "$run/window_decision.json" ] || .venv/bin/python scripts/window_decision_transfer.py "$run"
[ -f "$run/window_smoothing.json" ] || .venv/bin/python scripts/window_smoothing.py "$run"
[ -f "$run/window_rules.json" ] || .venv/bin/python scripts/window_rules.py "$run"
[ -f "$run/window_gap.json" ] || .venv/bin/python scripts/window_gap.py "$run"
[ -f "$run/event_context.json" ] || .venv/bin/python scripts/event_context.py "$run"
[ -f "$run/event_removal.json" ] || .venv/bin/python scripts/event_removal.py "$run"
[ -f "$run/event_edges.json" ] || .venv/bin/python scripts/event_edges.py "$run"
[ -f "$run/crop_scan.json" ] || .venv/bin/python scripts/crop_scan.py "$run"
[ -f "$run/label_overlap.json" ] || .venv/bin/python scripts/label_overlap.py "$run"
segmenter="runs/event-segmenter/seed$seed"
[ -f "$segmenter/segmenter.pt" ] || .venv/bin/python scripts/event_segments.py train --seed "$seed" --out "$segmenter" \
  --data "$data"
[ -f "$run/event_segments.json" ] || .venv/bin/python scripts/event_segments.py measure --segmenter "$segmenter" "$run"
if .venv/bin/python -c 'import sys, yaml; sys.exit(yaml.safe_load(open(sys.argv[1]))["train"].get("event_timing", 0) <= 0)' \
    "$run/config.yaml"; then
  [ -f "$run/step_detector.json" ] || .venv/bin/python scripts/step_detector.py "$run"
fi
