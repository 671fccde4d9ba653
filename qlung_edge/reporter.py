"""From the signal path's decisions and the model's outputs to events: the one place that says what a window's
status is after the model, what its examination has seen, and what the examination's verdict is.

The daemon, `Classifier` (and so `qlung-edge predict`) and `eval-stream` all go through `EventReporter`, so
that the same recording gives the same window events and the same verdict whichever of them reads it.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Union

import numpy as np

from qlung_edge.bundle import Bundle
from qlung_edge.events import (
    ExamEvent,
    ExamIdentity,
    GateReason,
    Prediction,
    QualityFields,
    VerdictEvent,
    VerdictEvidence,
    WindowEvent,
    WindowSpan,
    WindowStatus,
    advice_for,
)
from qlung_edge.examination import Examination, VerdictRule
from qlung_edge.streaming import Decision, ExamBoundary, ExamSmoother

log = logging.getLogger("qlung_edge.reporter")

ReportedEvent = Union[WindowEvent, ExamEvent, VerdictEvent]


def utc(seconds: float) -> str:
    """An ISO-8601 UTC time stamp, milliseconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def quality_threshold(bundle: Bundle) -> float | None:
    """The learned quality gate's threshold, or None (said once in the log) for a bundle without one."""
    estimate = bundle.manifest.get("quality_estimate")
    if not estimate or not any(o.get("name") == "poor" for o in bundle.manifest.get("outputs", [])):
        log.info("%s has no learned quality estimate: the gate uses the AQS reasons alone", bundle.path)
        return None
    return float(estimate["threshold"])


def quality_smoothing(bundle: Bundle) -> int:
    """How many of the examination's latest P(poor) values the learned gate averages (1: the window's own)."""
    estimate = bundle.manifest.get("quality_estimate") or {}
    return max(int(estimate.get("smoothing_windows", 1)), 1)


def trailing_means(values: np.ndarray, n: int) -> np.ndarray:
    """Each value averaged with up to n - 1 finite ones before it: what the learned gate compares with its
    threshold. A record's quality is a property of the recording (that is how SPRSound labels it), so one
    window's estimate is pooled with its neighbours' instead of refusing windows one by one on a noisy score.
    A non-finite value stays non-finite (the gate refuses it as quality_unknown) and is not pooled, as in
    `EventReporter.window`."""
    recent: deque[float] = deque(maxlen=max(int(n), 1))
    out = np.full(len(values), np.nan)
    for i, value in enumerate(np.asarray(values, np.float64)):
        if np.isfinite(value):
            recent.append(float(value))
            out[i] = float(np.mean(recent))
    return out


def learned_gate(reasons: tuple[str, ...], poor: float | None, threshold: float | None) -> tuple[str, ...]:
    """The gate's reasons once the learned quality estimate is known: it refuses what the AQS reasons let
    through when P(poor) reaches the bundle's threshold (or cannot be computed); AQS reasons stay first."""
    if reasons or poor is None or threshold is None:
        return reasons
    if not np.isfinite(poor):
        return (GateReason.QUALITY_UNKNOWN.value,)
    if poor >= threshold:
        return (GateReason.ESTIMATED_POOR.value,)
    return reasons


@dataclass(frozen=True)
class WindowOutcome:
    event: WindowEvent | None
    """None for a gated window when gated windows are not emitted."""
    status: WindowStatus
    reasons: tuple[str, ...]
    gated_after_model: bool
    """Accepted by the AQS gate, refused by the learned quality estimate."""


class EventReporter:
    """Owns the examination in progress and its running answer; turns each window (in stream order) and each
    examination boundary into events. `epoch` is the wall-clock time of the stream's first sample."""

    def __init__(self, bundle: Bundle, run_id: str, *, smoothing_windows: int = 8, emit_gated: bool = True) -> None:
        self.run_id = run_id
        self.smoothing_windows = smoothing_windows
        self.emit_gated = emit_gated
        self.epoch = 0.0
        self.exam: Examination | None = None
        self.exam_count = 0
        self.use(bundle)

    def use(self, bundle: Bundle) -> None:
        """The bundle whose classes, verdict rule and quality threshold apply from now on (a reload)."""
        self.bundle = bundle
        self.classes = bundle.classes
        self.model_id = str(bundle.manifest.get("manifest_sha256"))
        self.rule = VerdictRule.from_manifest(bundle.manifest)
        self.threshold = quality_threshold(bundle)
        pooled = quality_smoothing(bundle)
        if getattr(self, "quality_windows", None) != pooled:  # a reload of the same pooling keeps what it holds
            self.quality_windows = pooled
            self.recent_poor: deque[float] = deque(maxlen=pooled)
        self.smoother = ExamSmoother(self.classes, self.smoothing_windows)

    def window(
        self,
        decision: Decision,
        status: WindowStatus,
        probabilities: np.ndarray | None,
        poor: float | None = None,
        latency_ms: float = 0.0,
    ) -> WindowOutcome:
        """One window: `status` as it left the queue (classified, gated or dropped), the model's outputs when
        it was classified."""
        w = decision.window
        reasons = decision.reasons
        after_model = False
        if probabilities is not None:
            if not reasons and poor is not None and np.isfinite(poor):
                self.recent_poor.append(float(poor))
                poor = float(np.mean(self.recent_poor))
            reasons = learned_gate(reasons, poor, self.threshold)
            if reasons:
                status, probabilities, after_model = WindowStatus.GATED, None, True
        if self.exam is not None:
            if status is WindowStatus.DROPPED:
                self.exam.add(("dropped",), None)
            else:
                self.exam.add(reasons, probabilities)
        if status is WindowStatus.GATED and not self.emit_gated:
            return WindowOutcome(None, status, reasons, after_model)
        prediction = exam = None
        if probabilities is not None:
            prediction = Prediction(
                label=self.classes[int(np.argmax(probabilities))],
                probabilities={c: round(float(p), 5) for c, p in zip(self.classes, probabilities)},
            )
            exam = self.smoother.add(probabilities)
        q = w.report
        gated = status is WindowStatus.GATED
        event = WindowEvent(
            model_id=self.model_id,
            window=WindowSpan(
                w.index, round(w.start, 4), round(w.end, 4), utc(self.epoch + w.start), utc(self.epoch + w.end)
            ),
            status=status,
            quality=QualityFields(
                aqs=round(q.aqs, 4),
                rms_dbfs=round(q.rms_dbfs, 2),
                entropy=round(q.live_entropy, 4),
                clipped_fraction=round(q.clipped_fraction, 5),
                dropout_seconds=round(q.dropout_seconds, 3),
                gap_seconds=round(w.gap_seconds, 3),
            ),
            latency_ms=round(latency_ms, 2),
            reasons=reasons if gated else None,
            poor=None if poor is None else round(poor, 4),
            advice=advice_for(reasons) if gated else None,
            exam_id=None if self.exam is None else self.exam.id,
            prediction=prediction,
            exam=exam,
        )
        return WindowOutcome(event, status, reasons, after_model)

    def boundary(self, boundary: ExamBoundary) -> list[ReportedEvent]:
        """An examination ends (its verdict) and/or starts (its running answer afresh)."""
        events: list[ReportedEvent] = []
        if self.exam is not None:
            exam, self.exam = self.exam, None
            verdict = exam.verdict(self.rule, self.classes)
            events.append(
                VerdictEvent(
                    exam_id=exam.id,
                    model_id=self.model_id,
                    identity=ExamIdentity(exam.patient, exam.encounter, exam.site),
                    start=round(exam.started, 3),
                    end=round(boundary.time, 3),
                    start_utc=utc(self.epoch + exam.started),
                    end_utc=utc(self.epoch + boundary.time),
                    ended_by=boundary.reason,
                    task_2_1=verdict.task_2_1,
                    task_2_2=verdict.task_2_2,
                    reason=verdict.reason,
                    evidence=VerdictEvidence(
                        verdict.windows_accepted,
                        verdict.windows_gated,
                        verdict.gated_by_reason,
                        verdict.das,
                        verdict.cas,
                        verdict.class_fractions,
                    ),
                    rule=self.rule.to_dict(),
                )
            )
        if boundary.start:
            self.exam_count += 1
            self.exam = Examination(f"{self.run_id[:8]}-{self.exam_count}", boundary.time, boundary.patient,
                                    boundary.encounter, boundary.site)  # fmt: skip
            self.smoother = ExamSmoother(self.classes, self.smoothing_windows)
            self.recent_poor.clear()
            identity = ExamIdentity(boundary.patient, boundary.encounter, boundary.site)
            start_utc = utc(self.epoch + boundary.time)
            events.append(ExamEvent(self.exam.id, round(boundary.time, 3), start_utc, boundary.reason, identity))
        return events
