"""Verdicts as FHIR R4 Observations: built from real verdict events, valid for fhir.resources' R4 model,
written to a file or POSTed to a small local FHIR endpoint that goes away and comes back."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.sources import FileSource
from qlung_edge.classifier import SHIPPED_BUNDLE
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.fhir import observation, validate_observation
from qlung_edge.sinks import CollectSink, open_sink

RECORDING = "101_1b1_Al_sc_Meditron.wav"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FhirServer:
    """POST [base]/Observation: validates the body as an R4 Observation, 201 or 422 (as a FHIR server would)."""

    def __init__(self, port: int) -> None:
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    assert self.path == "/fhir/Observation", self.path
                    assert self.headers["Content-Type"] == "application/fhir+json"
                    validate_observation(body)
                except (AssertionError, ValueError) as err:
                    self.send_response(422)
                    self.end_headers()
                    self.wfile.write(str(err).encode())
                    return
                owner.received.append(body)
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _verdicts(shared_data: Path) -> list[dict[str, Any]]:
    sink = CollectSink()
    config = DaemonConfig(bundle=SHIPPED_BUNDLE, source="file", sinks=[])
    daemon = Daemon(config, source=FileSource(name="f", path=shared_data / "icbhi-sample" / RECORDING), sinks=[sink])
    assert daemon.run() == 0
    return [e for e in sink.events if e["type"] == "verdict"]


def test_a_verdict_becomes_a_valid_r4_observation(shared_data: Path) -> None:
    (verdict,) = _verdicts(shared_data)
    verdict = {**verdict, "identity": {"patient": "p-101", "encounter": "enc-7", "site": "left-anterior"}}
    resource = observation(verdict)
    validate_observation(resource)
    assert resource["status"] == "preliminary" and resource["category"][0]["coding"][0]["code"] == "exam"
    assert resource["subject"] == {"reference": "Patient/p-101"}
    assert resource["encounter"] == {"reference": "Encounter/enc-7"} and resource["bodySite"]["text"] == "left-anterior"
    assert resource["effectivePeriod"] == {"start": verdict["start_utc"], "end": verdict["end_utc"]}
    assert resource["valueCodeableConcept"]["text"] == verdict["task_2_2"]
    assert resource["device"]["identifier"]["value"] == verdict["model_id"]
    values = {c["code"]["coding"][0]["code"]: c for c in resource["component"]}
    assert values["crackle-evidence"]["valueQuantity"]["value"] == pytest.approx(verdict["evidence"]["das"], abs=1e-4)
    assert values["windows-accepted"]["valueInteger"] == verdict["evidence"]["windows_accepted"]
    assert values["sprsound-task-2-1"]["valueCodeableConcept"]["text"] == verdict["task_2_1"]
    broken = {**resource, "status": 7, "effectivePeriod": {"start": "yesterday"}}
    with pytest.raises(ValueError, match="not a valid FHIR R4 Observation"):
        validate_observation(broken)
    with pytest.raises(ValueError, match="only verdict events"):
        observation({"type": "window"})


def test_fhir_file_sink_writes_one_observation_per_verdict(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "out" / "observations.ndjson"
    sink = open_sink(f"fhir:{path}")
    for event in _verdicts(shared_data):
        sink.send(event)
    sink.send({"type": "window"})  # not a clinical result: ignored
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    validate_observation(json.loads(lines[0]))


def test_fhir_endpoint_down_then_up_loses_nothing(shared_data: Path) -> None:
    port = _free_port()
    verdicts = _verdicts(shared_data)
    sink = open_sink(f"fhir:http://127.0.0.1:{port}/fhir")
    sink.retry_seconds = 0.2  # type: ignore[attr-defined]
    events = [{**verdicts[0], "exam_id": f"{verdicts[0]['exam_id']}-{i}"} for i in range(3)]
    for event in events:
        sink.send(event)
    deadline = time.monotonic() + 5
    while sink.health().connected and time.monotonic() < deadline:
        time.sleep(0.05)
    health = sink.health()
    assert not health.connected and health.buffered == 3 and health.degraded
    assert "Connection refused" in (health.last_error or "")
    server = FhirServer(port)
    try:
        assert sink.flush(timeout=10)
        sink.close()
    finally:
        server.close()
    assert [r["id"] for r in server.received] == [e["exam_id"] for e in events], "in order, each once"
    assert sink.health().connected and sink.stats() == {"sent": 3, "unsent": 0, "dropped": 0}
