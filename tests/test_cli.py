from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from qlung_edge.cli import cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_a_purpose() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in cli.commands:
        line = next(ln for ln in result.output.splitlines() if ln.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 10
    assert {"demo", "synth", "data-summary"} <= set(cli.commands)


def test_data_summary_on_the_real_annotations(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = CliRunner().invoke(cli, ["data-summary", str(shared_data / "icbhi-annotations"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {
        ln.split()[0]: ln.split()[1:] for ln in result.output.splitlines() if ln.strip().startswith(("train", "test"))
    }
    assert rows["train"] == ["539", "79", "4142", "2063", "1215", "501", "363"]
    assert rows["test"] == ["381", "49", "2756", "1579", "649", "385", "143"]
    summary = json.loads(out.read_text())
    assert summary["cycles"] == 6898 and summary["with_audio"] is False


def test_data_summary_on_real_sprsound(shared_data: Path) -> None:
    result = CliRunner().invoke(cli, ["data-summary", str(shared_data / "sprsound")])
    assert result.exit_code == 0, result.output
    assert "Poor Quality 152" in result.output and "1892 recordings" in result.output
    # The abnormal mix per split (it differs between SPRSound's training and test patients).
    assert "train: CAS 84 (5.5 %)" in result.output and "test: CAS 65 (18.3 %)" in result.output


def test_user_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "split.txt").write_text("101_1b1_Al_sc_Meditron\tdev\n")
    (tmp_path / "101_1b1_Al_sc_Meditron.txt").write_text("0.1 1.0 0 0\n")
    result = _run("data-summary", str(tmp_path), "--split-file", str(tmp_path / "split.txt"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'split.txt'}:1: unknown split name 'dev' (expected one of train, test)"
    )
    assert "Traceback" not in result.stderr
    sf.write(tmp_path / "102_1b1_Ar_sc_Meditron.wav", np.zeros(800, np.float32), 8000)  # audio, so audio is expected
    strict = _run("data-summary", str(tmp_path), "--strict")
    assert strict.returncode == 2 and "annotation has no .wav beside it" in strict.stderr


def test_synth_then_summary_through_the_installed_command(tmp_path: Path) -> None:
    made = _run("synth", str(tmp_path / "d"), "--recordings", "5", "--layout", "sprsound", "--ood")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "d" / "sprsound" / "ground_truth.json").exists() and not (tmp_path / "d" / "icbhi").exists()
    summary = _run("data-summary", str(tmp_path / "d" / "sprsound"))
    assert summary.returncode == 0 and "5 recordings" in summary.stdout
    truth = json.loads((tmp_path / "d" / "sprsound" / "ground_truth.json").read_text())
    assert {r["device"] for r in truth["recordings"]} <= {"WideBand48k", "NarrowBand8k"}


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = _run("demo", "--out", str(tmp_path / "demo"), "--recordings", "30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ground truth matches") == 2
    table = result.stdout.split("QLung against cross-entropy")[1].splitlines()
    rows = {line.split()[0]: line for line in table if line.strip().startswith(("qlung", "ce "))}
    assert set(rows) == {"qlung", "ce"} and all(line.count("Score") == 2 for line in rows.values())
    for loss in ("qlung", "ce"):
        assert (tmp_path / "demo" / "runs" / loss / "best.pt").exists()
        assert (tmp_path / "demo" / "runs" / loss / "ood" / "risk_coverage.png").exists()
    assert "argmax identical: True" in result.stdout and "INT8 vs FP32" in result.stdout
    from qlung_edge.bundle import load_bundle

    assert load_bundle(tmp_path / "demo" / "bundle").has("model.int8.onnx")
    assert "demo finished" in result.stdout
    # It ends by streaming a recording through the daemon: window events, and the silenced stretch gated.
    stream = [json.loads(line) for line in (tmp_path / "demo" / "stream-events.jsonl").read_text().splitlines()]
    windows = [e for e in stream if e["type"] == "window"]
    assert stream[0]["type"] == "start" and stream[-1]["type"] == "stop" and len(windows) >= 5
    assert {"classified", "gated"} <= {w["status"] for w in windows}
    assert result.stdout.count(" classified ") + result.stdout.count(" gated ") >= len(windows)

    few = _run("demo", "--out", str(tmp_path / "few"), "--recordings", "2")
    assert few.returncode == 2 and "error: " in few.stderr and "Traceback" not in few.stderr


def _device_modules() -> list[str]:
    """Every module of the device packages, found on disk so that a new one cannot be forgotten."""
    root = Path(__file__).resolve().parents[1]
    names = ["export.tensorrt", "export.ops"]
    for package in ("qlung_edge", "firmware_bridge"):
        names += [package] + [
            f"{package}.{p.stem}" for p in sorted((root / package).glob("*.py")) if p.stem != "__init__"
        ]
    return names


@pytest.mark.parametrize("module", _device_modules())
def test_device_side_never_imports_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_log_level_and_json_log_lines_on_stderr() -> None:
    script = (
        "import logging, sys\n"
        "from qlung_edge.cli import cli\n"
        "cli.main(['--log-level', 'info', '--log-json', 'schema'], standalone_mode=False)\n"
        "logging.getLogger('qlung_edge.test').info('hello %s', 'ward')\n"
        "logging.getLogger('qlung_edge.test').debug('not at info')\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    logging.getLogger('qlung_edge.test').exception('failed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("info", "qlung_edge.test", "hello ward"),
        ("error", "qlung_edge.test", "failed"),
    ]
    assert "ValueError: boom" in lines[1]["exception"] and lines[0]["time"].endswith("Z")
    wrong = subprocess.run([sys.executable, "-m", "qlung_edge.cli", "--log-level", "loud", "schema"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wrong.returncode == 2 and "loud" in wrong.stderr
