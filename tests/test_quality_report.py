from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from qlung_edge.quality import QualityConfig, QualityReport
from training.quality_report import (
    RecordingQuality,
    calibrate,
    plot_distribution,
    plot_refused_records,
    rescore,
    score_recordings,
    separation,
)
from training.sprsound import scan_sprsound


def _row(i: int, level: float, poor: bool, clipped: float = 0.0) -> RecordingQuality:
    report = QualityReport(0.5, 0.4, 0.4, level, 0.5, clipped, 0.0, 100, ())
    return RecordingQuality(f"r{i}", "train", "Poor Quality" if poor else "Normal", report)


def test_calibration_takes_percentiles_of_acceptable_training_records() -> None:
    rows = [_row(i, -60.0 + 0.3 * i, poor=False) for i in range(101)] + [_row(200, -90.0, poor=True)]
    config = calibrate(rows)
    levels = -60.0 + 0.3 * np.arange(101)
    assert config.rms_floor_dbfs == np.floor(np.percentile(levels, 1))
    assert config.rms_ceil_dbfs == np.ceil(np.percentile(levels, 99))
    assert config.quiet_dbfs == np.floor(np.percentile(levels, 1))  # the poor record at -90 dB does not count
    assert config.max_clipped_fraction == 0.001 and config.max_dropout_seconds == 0.1
    with pytest.raises(ValueError, match="at least 10"):
        calibrate(rows[:5])


def test_rescore_and_separation() -> None:
    rows = [_row(i, -40.0, poor=False) for i in range(30)] + [_row(100 + i, -70.0, poor=True) for i in range(5)]
    rescored = rescore(rows, QualityConfig())
    assert all(r.report.reasons == ("too_quiet",) for r in rescored if r.poor)
    assert all(r.report.reasons == () for r in rescored if not r.poor)
    result = separation(rescored)
    assert result["auroc"]["quietness (-dBFS)"] == 1.0 and result["auroc"]["1 - AQS"] == 1.0
    assert result["gate"]["too_quiet"] == {"auroc": 1.0, "gated_poor": 5, "gated_other": 0}
    assert separation(rows[:30]) == {}


def test_scores_match_the_synthetic_ground_truth(synth_root: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_sprsound(synth_root / "sprsound", progress=False)
    rows = score_recordings(scan.recordings, progress=False)
    truth = json.loads((synth_root / "sprsound" / "ground_truth.json").read_text())["recordings"]
    kinds = {r["name"]: {d["kind"]: d["params"] for d in r["degradations"]} for r in truth}
    for row in rows:
        k = kinds[row.recording]
        if "dropout" in k:
            gap = sum(e - s for s, e in k["dropout"]["intervals"])
            assert row.report.dropout_seconds == pytest.approx(gap, abs=0.05 + 0.1 * gap)
        if "low_gain" in k and float(k["low_gain"]["gain_db"]) < -40:
            assert "too_quiet" in row.report.reasons
        if not k:
            assert row.report.reasons == ()
    assert plot_distribution(rows, tmp_path / "q.png").stat().st_size > 5000
    refused = [(r, share) for r, share in zip(scan.recordings[:3], (0.9, 0.5, 0.25))]
    sheet = plot_refused_records(refused, tmp_path / "refused.png", "most refused")
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 20000
    with pytest.raises(ValueError, match="no refused recordings"):
        plot_refused_records([], tmp_path / "none.png")


def test_quality_scan_command(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    args = ["quality-scan", str(synth_root / "sprsound"), "--calibrate-on", "train", "--list"]
    args += ["--json", str(out), "--png", str(tmp_path / "figures" / "h.png")]  # a folder not made yet
    result = subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert len(doc["recordings"]) == 40 and set(doc["separation"]) == {"train", "test"}
    assert "calibrated on" in result.stdout and (tmp_path / "figures" / "h-train.png").exists()
    levels = [r["rms_dbfs"] for r in doc["recordings"] if r["split"] == "train" and r["label"] != "Poor Quality"]
    assert doc["config"]["quiet_dbfs"] == np.floor(np.percentile(levels, 1))
    from click.testing import CliRunner

    from qlung_edge.cli import cli

    only = tmp_path / "test-only.json"
    result = CliRunner().invoke(
        cli, ["quality-scan", str(synth_root / "sprsound"), "--split", "test", "--json", str(only)]
    )
    assert result.exit_code == 0, result.output
    scanned = json.loads(only.read_text())["recordings"]
    assert {r["split"] for r in scanned} == {"test"} and len(scanned) == sum(
        r["split"] == "test" for r in doc["recordings"]
    )
    result = CliRunner().invoke(cli, ["quality-scan", str(synth_root / "sprsound"), "--split", "dev"])
    assert result.exit_code == 2 and "no recordings in split 'dev' (there are: test, train)" in result.output


def test_model_info_and_bench_commands() -> None:
    info = subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", "model-info"], capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 0, info.stderr
    params = int(next(ln for ln in info.stdout.splitlines() if "parameters" in ln).split()[1].replace(",", ""))
    gflops = float(re.search(r"\(([0-9.]+) GFLOPs; multiply-add", info.stdout).group(1))
    assert params <= 1_500_000 and gflops <= 0.5
    args = ["bench", "quality", "--quick"]
    bench = subprocess.run([sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True, timeout=120)
    assert bench.returncode == 0, bench.stderr
    figures = [ln for ln in bench.stdout.splitlines() if "x realtime" in ln]
    assert len(figures) == 7 and all(
        float(ln.split("x realtime")[0].split()[-1].replace(",", "")) > 0 for ln in figures
    )


def test_quality_scan_names_what_it_skips_and_scores_the_rest(synth_root: Path, tmp_path: Path) -> None:
    """Before, an unreadable recording vanished from the table (exit 0) and one NaN file aborted the scan."""
    import shutil

    import soundfile as sf

    root = tmp_path / "sprsound"
    shutil.copytree(synth_root / "sprsound", root)
    wavs = sorted(root.rglob("*.wav"))
    wavs[0].write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")  # unreadable
    data, rate = sf.read(wavs[1], dtype="float32")
    data[len(data) // 2] = np.nan
    sf.write(wavs[1], data, rate, subtype="FLOAT")
    out = tmp_path / "q.json"
    result = subprocess.run(
        [sys.executable, "-m", "qlung_edge.cli", "quality-scan", str(root), "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    doc = json.loads(out.read_text())
    assert len(doc["recordings"]) == 38 and len(doc["skipped"]) == 2
    assert wavs[0].name in result.stderr and wavs[1].name in result.stderr and "NaN" in result.stderr
