"""The Python floors are what the code needs: the device side runs on JetPack 5's Python 3.8.

No 3.8 interpreter exists here, so a static minimum-version checker (vermin) reads the device packages, and the
declared floors (setup.cfg, ruff's target) must agree with what it finds. Annotations are not evaluated: every
module has `from __future__ import annotations`, and the one place that reads annotations at run time
(`qlung_edge.config.field_types`) parses them itself.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEVICE = ["qlung_edge", "firmware_bridge", "export/tensorrt.py", "export/ops.py", "scripts/example_events.py"]
"""Everything that runs on the Jetson: the runtime, the link, engine building and the op audit."""


def _vermin(target: str, paths: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "vermin"), "--no-tips", "--violations", "-t=" + target, *paths],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_the_device_side_needs_nothing_newer_than_python_3_8() -> None:
    result = _vermin("3.8-", DEVICE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_catches_what_3_8_lacks(tmp_path: Path) -> None:
    """The checker is not asleep: 3.9+ code in a scanned file is reported."""
    late = tmp_path / "late.py"
    late.write_text('import zoneinfo\nprint("x".removeprefix("y"))\n')
    result = _vermin("3.8-", [str(late)])
    assert result.returncode != 0 and "zoneinfo" in result.stdout


def test_declared_floors_match() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["options"]["python_requires"].strip() == ">=3.8"
    ruff = (REPO / "ruff.toml").read_text()
    assert re.search(r'^target-version = "py38"$', ruff, re.M)


def test_the_device_extras_pull_no_torch_and_all_that_trt_needs() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    extras = {k: {re.split(r"[<>=;\[ ]", line.strip())[0] for line in v.splitlines() if line.strip()}
              for k, v in setup["options.extras_require"].items()}  # fmt: skip
    runtime = {re.split(r"[<>=;\[ ]", line.strip())[0] for line in setup["options"]["install_requires"].splitlines()}
    for extra in ("device", "jetson"):
        assert "torch" not in extras[extra] and "torch" not in runtime
    assert {"pycuda", "onnx", "sounddevice", "pyserial", "paho-mqtt"} <= extras["jetson"]


def test_training_commands_say_they_need_a_newer_python(monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from qlung_edge.cli import cli

    monkeypatch.setattr(sys, "version_info", (3, 8, 10, "final", 0))
    result = CliRunner().invoke(cli, ["train", "--config", "demo"])
    assert result.exit_code != 0 and "needs torch, hence Python 3.9+" in str(result.exception)
