#!/usr/bin/env bash
# What a CPU-only CI cannot show, in one run on a CUDA box: the gpu-marked tests (the front end against
# torchaudio's Kaldi fbank; the TensorRT ones skip where TensorRT is not installed), a SPRSound-layout recipe
# trained on CUDA under autocast through its quality head and record-level verdicts, with its training
# throughput on CUDA and on the box's CPU in the same run, the training, model and export tests (they pick CUDA
# by themselves), and the demo end to end.
# Usage: bash scripts/gpu-check.sh [OUT]   (python3 with CUDA torch and the project's requirements, or PYTHON=...)
#        STEPS="tests throughput" DEVICES=cuda bash scripts/gpu-check.sh OUT   (a part of it, e.g. on a short lease)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-out}
python=${PYTHON:-python3}
q=("$python" -m qlung_edge.cli)
steps=${STEPS:-tests throughput demo}
devices=${DEVICES:-cuda cpu}
mkdir -p "$out/throughput"
failed=()
step() { echo; echo "== $1 ($(date +%T))"; }
wants() { [[ " $steps " == *" $1 "* ]]; }

step "machine"
nvidia-smi -L || true
"$python" - <<'PY' || failed+=(machine)
import onnxruntime, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device", torch.cuda.get_device_name(0))
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
try:
    import torchaudio
    print("torchaudio", torchaudio.__version__)
except Exception as err:  # the gpu-marked front-end test then skips, and says so
    print("torchaudio does not import:", err)
PY

if wants tests; then
  step "gpu-marked tests"  # only the files that hold any: the others may import what a GPU box lacks
  mapfile -t marked < <(grep -l "pytest.mark.gpu" tests/test_*.py)
  if [ ${#marked[@]} -eq 0 ]; then
    echo "no test file holds a gpu-marked test"; failed+=(gpu-tests)
  else
    "$python" -m pytest -q -p no:cacheprovider -rs -m gpu "${marked[@]}" || failed+=(gpu-tests)
  fi
fi

if wants throughput; then
  step "a SPRSound-layout recipe on synthetic recordings: training throughput, quality head, record verdicts"
  "${q[@]}" synth "$out/synth" --recordings 120 --layout sprsound > /dev/null 2>&1 || failed+=(synth)
  for recipe in ce-edge-sprsound-windows-event-mix ce-edge-sprsound-windows-event-mix-fine-time; do
    for device in $devices; do
      run="$out/throughput/$recipe-$device"
      "${q[@]}" train --config "$recipe" "data.root=$out/synth/sprsound" "data.cache_dir=$out/cache" \
        train.epochs=3 "train.device=$device" train.threads=0 --seeds 0 --out "$run" > "$run.log" 2>&1 \
        || { failed+=("train-$recipe-$device"); tail -n 20 "$run.log"; continue; }
      "$python" - "$run/seed0" "$recipe" "$device" <<'PY' || failed+=("summary-$recipe-$device")
import csv, json, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/metrics.csv")))
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
fitted = "cv_record_auroc" in summary.get("quality_estimate", {}).get("figures", {})
print(f"{sys.argv[2]} on {sys.argv[3]}: {float(rows[-1]['examples_per_second']):.0f} training examples/s "
      f"(epoch 3, the last); quality head fitted: {fitted}; record verdicts: {'test_records' in summary}")
sys.exit(0 if fitted and "test_records" in summary else 1)
PY
    done
  done
fi

if wants tests; then
  step "training, model and export tests (CUDA where the code picks it: train.device=auto)"
  "$python" -m pytest -q -p no:cacheprovider -rs tests/test_models.py tests/test_training.py tests/test_export.py \
    || failed+=(cuda-tests)
fi

if wants demo; then
  step "demo end to end (synthetic data, CUDA)"
  "${q[@]}" demo --out "$out/demo" > "$out/demo.log" 2>&1 || failed+=(demo)
  tail -n 25 "$out/demo.log"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
echo "all GPU checks passed"
