"""Examination verdicts as FHIR R4 Observation resources, for the hospital systems that read FHIR.

`observation(verdict_event)` builds the resource from a verdict event (plain JSON, no library needed);
`validate_observation` checks it against the R4 model of fhir.resources (the `fhir` extra). `FhirSink` writes
them as NDJSON to a file or POSTs them to a FHIR server's `[base]/Observation`, buffering (bounded, counted)
while the server is away.

Codes: there is no standard code for "a respiratory-sound classifier's record label", so the observation's
code and value use qlung-edge's own code systems (`urn:qlung-edge:...`) with readable displays; the category is
FHIR's `exam`. Status is always `preliminary`: a model's output awaits a clinician.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlung_edge import __version__
from qlung_edge.sinks import Sink, SinkError, SinkHealth

CODE_SYSTEM = "urn:qlung-edge:code"
TASK_2_2_SYSTEM = "urn:qlung-edge:sprsound-task-2-2"
TASK_2_1_SYSTEM = "urn:qlung-edge:sprsound-task-2-1"
EXAM_SYSTEM = "urn:qlung-edge:exam"
MODEL_SYSTEM = "urn:qlung-edge:model"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
UNIT_SYSTEM = "http://unitsofmeasure.org"


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": display}], "text": display}


def _ratio(code: str, display: str, value: float) -> dict[str, Any]:
    return {
        "code": _code(code, display),
        "valueQuantity": {"value": round(float(value), 4), "unit": "1", "system": UNIT_SYSTEM, "code": "1"},
    }


def observation(event: dict[str, Any]) -> dict[str, Any]:
    """The FHIR R4 Observation of one verdict event (`type` "verdict")."""
    if event.get("type") != "verdict":
        raise ValueError(f"only verdict events become observations, not {event.get('type')!r}")
    identity = event.get("identity") or {}
    evidence = event["evidence"]
    components = [
        {
            "code": _code("sprsound-task-2-1", "Normal / Adventitious / Poor Quality (SPRSound Task 2-1)"),
            "valueCodeableConcept": {
                "coding": [{"system": TASK_2_1_SYSTEM, "code": event["task_2_1"], "display": event["task_2_1"]}],
                "text": event["task_2_1"],
            },
        },
        _ratio("crackle-evidence", "Pooled crackle (discontinuous sound) evidence", evidence["das"]),
        _ratio("wheeze-evidence", "Pooled wheeze (continuous sound) evidence", evidence["cas"]),
    ]
    for name, share in sorted(evidence.get("class_fractions", {}).items()):
        components.append(_ratio(f"windows-{name}", f"Share of accepted windows classified {name}", share))
    accepted, gated = evidence["windows_accepted"], evidence["windows_gated"]
    components += [
        {"code": _code("windows-accepted", "Windows that passed the quality gate"), "valueInteger": accepted},
        {"code": _code("windows-gated", "Windows refused by the quality gate"), "valueInteger": gated},
        _ratio(
            "quality-accepted-fraction",
            "Share of the examination's windows of usable quality",
            accepted / (accepted + gated) if accepted + gated else 0.0,
        ),
    ]
    for reason, count in sorted(evidence.get("gated_by_reason", {}).items()):
        components.append({"code": _code(f"gated-{reason}", f"Windows gated: {reason}"), "valueInteger": count})
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": event["exam_id"],
        "identifier": [{"system": EXAM_SYSTEM, "value": f"{event['run_id']}:{event['exam_id']}"}],
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "exam", "display": "Exam"}]}],
        "code": _code("sprsound-task-2-2", "Respiratory sound classification of one auscultation (SPRSound Task 2-2)"),
        "effectivePeriod": {"start": event["start_utc"], "end": event["end_utc"]},
        "issued": event["time"],
        "valueCodeableConcept": {
            "coding": [{"system": TASK_2_2_SYSTEM, "code": event["task_2_2"], "display": event["task_2_2"]}],
            "text": event["task_2_2"],
        },
        "note": [{"text": f"{event['reason']} (ended by: {event['ended_by']})"}],
        "device": {
            "identifier": {"system": MODEL_SYSTEM, "value": event["model_id"]},
            "display": f"qlung-edge {__version__} on {event['stream']}, model {event['model_id'][:12]}",
        },
        "component": components,
    }
    if identity.get("patient"):
        resource["subject"] = {"reference": f"Patient/{identity['patient']}"}
    if identity.get("encounter"):
        resource["encounter"] = {"reference": f"Encounter/{identity['encounter']}"}
    if identity.get("site"):
        resource["bodySite"] = {"text": identity["site"]}
    return resource


def validate_observation(resource: dict[str, Any]) -> None:
    """Raise ValueError if `resource` is not a valid FHIR R4 Observation (fhir.resources' R4 model)."""
    try:
        from fhir.resources import __fhir_version__
        from fhir.resources.observation import Observation
    except ImportError as err:
        raise ImportError("validating FHIR needs fhir.resources: pip install qlung-edge[fhir]") from err
    if not __fhir_version__.startswith("4.0"):
        raise ImportError(f"fhir.resources models FHIR {__fhir_version__}; R4 (4.0.x) needs fhir.resources 6.1")
    try:
        Observation.parse_obj(resource)
    except Exception as err:  # pydantic's ValidationError
        raise ValueError(f"not a valid FHIR R4 Observation: {err}") from None


@dataclass
class FhirSink(Sink):
    """Verdict events as FHIR R4 Observations: NDJSON to `path`, or POSTed to `url` + "/Observation".

    Other events are not clinical results and are ignored. Observations the server has not accepted wait in a
    buffer of at most `buffer` (oldest dropped and counted beyond that) and are sent again in order."""

    path: Path | None = None
    url: str | None = None
    buffer: int = 1000
    retry_seconds: float = 2.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        self.name = f"fhir:{self.url or self.path}"
        self._lock = threading.Condition()
        self._queue: deque[bytes] = deque()
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._connected = True
        self._closing = False
        self._thread: threading.Thread | None = None
        if self.url is not None:
            self._thread = threading.Thread(target=self._deliver, name="fhir", daemon=True)
            self._thread.start()

    def send(self, event: dict[str, Any]) -> None:
        if event.get("type") != "verdict":
            return
        body = json.dumps(observation(event), separators=(",", ":")).encode()
        if self.url is None:
            assert self.path is not None
            with self._lock, self.path.open("ab") as f:
                f.write(body + b"\n")
            self.sent += 1
            return
        with self._lock:
            self._queue.append(body)
            while len(self._queue) > self.buffer:
                self._queue.popleft()
                self.dropped += 1
            self._lock.notify_all()

    def _post(self, body: bytes) -> None:
        assert self.url is not None
        request = urllib.request.Request(
            self.url.rstrip("/") + "/Observation",
            data=body,
            method="POST",
            headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:
            if reply.status not in (200, 201):
                raise urllib.error.HTTPError(request.full_url, reply.status, "not created", reply.headers, None)

    def _deliver(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait(0.5)
                if not self._queue:
                    return
                body = self._queue[0]
            try:
                self._post(body)
            except urllib.error.HTTPError as err:
                if 400 <= err.code < 500 and err.code not in (
                    408,
                    429,
                ):  # refused for good: sending it again won't help
                    with self._lock:
                        if self._queue and self._queue[0] is body:
                            self._queue.popleft()
                        self.dropped += 1
                    self.last_error = f"{self.url}: the server refused an observation ({err.code} {err.reason})"
                    continue
                self.last_error = f"{self.url}: {err.code} {err.reason}"
                self._connected = False
                if self._closing:
                    return
                time.sleep(self.retry_seconds)
                continue
            except (OSError, urllib.error.URLError) as err:
                self.last_error = f"{self.url}: {getattr(err, 'reason', err)}"
                self._connected = False
                if self._closing:
                    return
                time.sleep(self.retry_seconds)
                continue
            with self._lock:
                if self._queue and self._queue[0] is body:
                    self._queue.popleft()
                self.sent += 1
                self._connected = True
                self._lock.notify_all()

    def unsent(self) -> int:
        with self._lock:
            return len(self._queue)

    def flush(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.unsent() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.unsent() == 0

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "unsent": self.unsent(), "dropped": self.dropped}

    def health(self) -> SinkHealth:
        return SinkHealth(self.name, self._connected, self.unsent(), self.dropped, self.last_error)


def open_fhir_sink(spec: str) -> FhirSink:
    """`fhir:PATH` (NDJSON file) or `fhir:http(s)://server/base[?buffer=N]`."""
    target = spec[len("fhir:") :]
    if target.startswith(("http://", "https://")):
        base, _, query = target.partition("?")
        options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        try:
            return FhirSink(url=base, buffer=int(options.get("buffer", "1000")))
        except ValueError as err:
            raise SinkError(f"bad option ({err})", path=spec) from None
    if not target:
        raise SinkError("expected fhir:PATH or fhir:http://server/base", path=spec)
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("a").close()
    except OSError as err:
        raise SinkError(f"cannot open the file ({err.strerror})", path=spec) from None
    return FhirSink(path=path)
