"""The deployment as a Jetson user meets it: the systemd unit, the notify protocol, and JETSON.md's commands.

The commands JETSON.md marks `<!-- test: runs here -->` run here in a sandbox: `/opt/qlung-edge`,
`/etc/qlung-edge` and `/etc/systemd/system` map to temporary folders (the installed unit and config have
their `/opt` paths rewritten the same way, as an install at another prefix would) and `sudo` is dropped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from qlung_edge.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "qlung_edge" / "deploy"
UNIT = DEPLOY / "qlung-edge.service"


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (scripts/system-packages.txt installs systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


def _unit_for(prefix: Path, folder: Path) -> Path:
    """The unit as installed under `prefix` instead of /opt/qlung-edge, with a stand-in executable there."""
    venv = prefix / ".venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    executable = venv / "qlung-edge"
    if not executable.exists():
        executable.symlink_to(Path(sys.executable).parent / "qlung-edge")
    unit = folder / "qlung-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/qlung-edge", str(prefix)))
    return unit


# --------------------------------------------------------------------------- the unit


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    result = _analyze("verify", str(_unit_for(tmp_path / "opt", tmp_path)))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # A unit that verify complains about is caught: the old one put StartLimitIntervalSec= in [Service].
    broken = tmp_path / "broken" / "qlung-edge.service"
    broken.parent.mkdir()
    text = _unit_for(tmp_path / "opt", tmp_path).read_text()
    broken.write_text(re.sub(r"^\[Service\]$", "[Service]\nStartLimitIntervalSec=300", text, count=1, flags=re.M))
    assert "StartLimitIntervalSec" in _analyze("verify", str(broken)).stderr


def _exposure(unit: Path) -> float:
    result = _analyze("security", "--offline=true", str(unit))
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


def test_the_unit_is_hardened_and_still_reaches_gpu_audio_and_serial(tmp_path: Path) -> None:
    unit = _unit_for(tmp_path / "opt", tmp_path)
    assert _exposure(unit) <= 4.0
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", UNIT.read_text(), re.M | re.S))
    service = sections["Service"]
    assert re.search(r"^StartLimitIntervalSec=", sections["Unit"], re.M) and "StartLimitIntervalSec=" not in service
    for line in ("Type=notify", "WatchdogSec=", "UMask=0077", "ProtectSystem=strict", "DevicePolicy=closed",
                 "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):  # fmt: skip
        assert re.search(rf"^{re.escape(line)}", service, re.M), line
    groups = re.search(r"^SupplementaryGroups=(.*)$", service, re.M)
    assert groups and {"video", "audio", "dialout"} <= set(groups.group(1).split())
    allowed = " ".join(re.findall(r"^DeviceAllow=(\S+)", service, re.M))
    for device in ("/dev/nvmap", "char-nvhost", "char-*.ga10b", "char-alsa", "char-ttyACM", "char-nvidia*"):
        assert device in allowed, device
    # The score is worth something: the unit as it was rates far worse.
    old = tmp_path / "old" / "qlung-edge.service"
    old.parent.mkdir()
    stripped = [line for line in unit.read_text().splitlines() if not re.match(
        r"(Protect|Private|Restrict|Device|Capability|SystemCall|IPAddress|NoNew|Lock|Remove|Keyring|UMask)", line
    )]  # fmt: skip
    old.write_text("\n".join(stripped) + "\n")
    assert _exposure(old) > 7.0


# --------------------------------------------------------------------------- sd_notify


def test_notifier_speaks_to_path_and_abstract_sockets(tmp_path: Path) -> None:
    for address in (str(tmp_path / "notify"), f"@qlung-test-{os.getpid()}"):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        server.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        assert notifier.ready("starting") and server.recv(4096) == b"READY=1\nSTATUS=starting"
        assert notifier.watchdog() and server.recv(4096) == b"WATCHDOG=1"
        assert not notifier.watchdog(), "at most one ping per half interval"
        time.sleep(0.11)
        assert notifier.watchdog()
        notifier.close()
        server.close()
    assert not Notifier({}).ready() and not Notifier({}).enabled
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    assert other.watchdog_seconds is None, "a watchdog meant for another process is not ours to feed"


def test_the_daemon_says_ready_feeds_the_watchdog_and_says_stopping(bundle: Path, tmp_path: Path) -> None:
    wav = tmp_path / "breath.wav"
    rng = np.random.default_rng(0)
    sf.write(wav, (0.05 * rng.standard_normal(16000 * 30)).astype(np.float32), 16000)
    address = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    command = [sys.executable, "-m", "qlung_edge.cli", "daemon", "--bundle", str(bundle), "--source",
               f"file:{wav}", "--realtime", "--sink", f"jsonl:{tmp_path / 'events.jsonl'}"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    messages: list[str] = []
    try:
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(server.recv(4096).decode())
        began = time.monotonic()
        while time.monotonic() - began < 1.5:
            messages.append(server.recv(4096).decode())
        process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(server.recv(4096).decode())
        assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        process.kill()
        server.close()
    pings = [
        m for m in messages[messages.index(next(m for m in messages if m.startswith("READY=1"))) :] if m == "WATCHDOG=1"
    ]
    assert len(pings) >= 4, messages  # every 0.2 s for 1.5 s, from the processing loop
    assert "STATUS=" in next(m for m in messages if m.startswith("READY=1"))


# --------------------------------------------------------------------------- JETSON.md, run


def _tested_blocks() -> list[str]:
    text = (DEPLOY / "JETSON.md").read_text()
    return re.findall(r"<!-- test: runs here -->\n```bash\n(.*?)```", text, re.S)


class Sandbox:
    def __init__(self, root: Path, bundle: Path, http_port: int) -> None:
        self.root = root
        self.opt = root / "opt" / "qlung-edge"
        self.etc = root / "etc" / "qlung-edge"
        self.units = root / "etc" / "systemd" / "system"
        self.units.mkdir(parents=True)
        self.opt.mkdir(parents=True)
        (self.opt / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this checkout's environment
        deploy = self.opt / "qlung_edge" / "deploy"
        deploy.mkdir(parents=True)
        for file in DEPLOY.iterdir():  # installed at this prefix: its /opt paths point here
            (deploy / file.name).write_text(file.read_text().replace("/opt/qlung-edge", str(self.opt)))
        (self.opt / "bundles").mkdir()
        shutil.copytree(bundle, self.opt / "bundles" / "v1")
        (self.opt / "bundles" / "current").symlink_to(self.opt / "bundles" / "v1")
        self.http_port = http_port

    def command(self, line: str) -> str:
        line = re.sub(r"^sudo (-u \S+ )?", "", line.strip())
        line = line.replace("/etc/systemd/system", str(self.units)).replace("/etc/qlung-edge", str(self.etc))
        return line.replace("/opt/qlung-edge", str(self.opt)).replace(":9108", f":{self.http_port}")

    def run(self, block: str) -> list[str]:
        outputs = []
        for line in block.strip().splitlines():
            result = subprocess.run(self.command(line), shell=True, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            assert result.stderr.strip() == "" or "check" in line, f"{line}: {result.stderr}"
            outputs.append(result.stdout)
        return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_jetson_md_command_that_can_run_here_runs(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    blocks = _tested_blocks()
    assert len(blocks) == 5, "JETSON.md's tested blocks: install check, config, --check, unit, health"
    sandbox = Sandbox(tmp_path, bundle, _free_port())
    install, config, check, unit, health = blocks
    version = sandbox.run(install)[0]
    assert version.startswith("qlung-edge, version")
    sandbox.run(config)
    # The edit step 6 asks for: this box has a WAV file, not a stethoscope, and no broker.
    toml = sandbox.etc / "daemon.toml"
    wav = shared_data / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav"
    edited = toml.read_text().replace('source = "serial:/dev/ttyACM0"', f'source = "file:{wav}"')
    edited = re.sub(r"sinks = \[.*?\]", f'sinks = ["jsonl:{tmp_path}/events.jsonl"]', edited, flags=re.S)
    edited = edited.replace("/var/lib/qlung-edge", str(tmp_path / "var")).replace(":9108", f":{sandbox.http_port}")
    edited = re.sub(r"\[source_options\].*", "[source_options]\nrealtime = true\n", edited, flags=re.S)
    toml.write_text(edited)
    assert "check passed" in sandbox.run(check)[0]
    sandbox.run(unit)
    assert (sandbox.units / "qlung-edge.service").exists()
    daemon = subprocess.Popen(
        [str(sandbox.opt / ".venv" / "bin" / "qlung-edge"), "daemon", "--config", str(toml)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{sandbox.http_port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        outputs: list[Any] = sandbox.run(health)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert '"status": "ok"' in outputs[0] and '"backend": "onnx-fp32"' in outputs[0]
    assert "qlung_windows_total" in outputs[1]
