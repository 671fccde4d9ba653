"""The learned quality estimate: its logistic fit, its bootstrap interval, synthetic degradations of real audio,
the calibrated AQS, and the daemon's gate on P(poor) (NaN included) and without an estimate."""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile as sf

from firmware_bridge.sources import FileSource
from qlung_edge.backends import OnnxBackend
from qlung_edge.bench import breath_like
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.events import validate
from qlung_edge.quality import QualityConfig, assess
from qlung_edge.reporter import trailing_means
from qlung_edge.sinks import CollectSink
from qlung_edge.streaming import ExamBoundary
from training.metrics import auroc, patient_shares
from training.quality_model import (
    bootstrap_auroc,
    budget_threshold,
    fit_logistic,
    probability,
    record_scores,
)
from training.synth import degrade, is_poor_quality


def test_logistic_fit_matches_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) * [1, 3, 0.5, 2, 1] + [0, 5, 0, -2, 1]
    y = (x @ [1.0, -0.5, 2.0, 0.0, 0.3] + rng.normal(0, 1, 400) > -2).astype(float)
    weight, bias = fit_logistic(x, y, l2=1e-6, iterations=100)
    reference = LogisticRegression(C=1e6, class_weight="balanced", max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(weight, reference.coef_[0], rtol=2e-3, atol=2e-3)
    assert bias == pytest.approx(reference.intercept_[0], abs=5e-3)
    np.testing.assert_allclose(probability(x, weight, bias), reference.predict_proba(x)[:, 1], atol=1e-3)


def test_record_scores_and_the_bootstrap_interval() -> None:
    per_record = record_scores(["a", "a", "b", "c", "c"], np.array([0.2, 0.4, 0.9, 0.1, 0.1]))
    assert per_record == pytest.approx({"a": 0.3, "b": 0.9, "c": 0.1})
    rng = np.random.default_rng(1)
    positives = rng.random(200) < 0.2
    scores = positives * 0.6 + rng.random(200) * 0.8
    low, high = bootstrap_auroc(scores, positives)
    assert low < auroc(scores, positives) < high and high - low < 0.25


def test_degradations_of_real_audio_are_severe_and_seen_by_aqs(shared_data: Path) -> None:
    rng = np.random.default_rng(3)
    clean = breath_like(4.0)
    kinds = set()
    for _ in range(30):
        worse, degradation = degrade(clean, 16000, rng)
        kinds.add(degradation.kind)
        assert is_poor_quality([degradation]) and worse.shape == clean.shape and np.isfinite(worse).all()
        assert np.abs(worse).max() <= 1.0
    assert len(kinds) >= 4
    clipped = None
    while clipped is None:
        worse, degradation = degrade(clean, 16000, rng)
        clipped = worse if degradation.kind == "clipping" else None
    assert "clipped" in assess(clipped, 16000).reasons


def test_the_budget_threshold_refuses_what_the_budget_allows_and_no_more() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        p = np.round(rng.random(n), 1)  # ties on purpose
        refused = rng.random(n) < rng.random() * 0.3
        budget = float(rng.random() * 0.4)
        t = budget_threshold(p, refused, budget)
        total = np.mean(refused | (p >= t))
        if np.floor(budget * n) < refused.sum():
            assert t > 1.0 and total == refused.mean(), "over budget already: the estimate refuses nothing"
            continue
        assert total <= budget + 1e-12
        # Brute force: every lower threshold that refuses more windows breaks the budget.
        for c in np.unique(p[p < t]):
            more = np.mean(refused | (p >= c))
            assert more > budget or more == total
    with pytest.raises(ValueError):
        budget_threshold(np.zeros(3), np.zeros(2, bool), 0.1)


def test_patient_resamples_of_the_refused_share() -> None:
    rng = np.random.default_rng(5)
    patients = np.repeat([f"p{i}" for i in range(40)], rng.integers(5, 30, 40))
    # One patient in eight has every window refused, the rest none: the share moves with who is drawn.
    clustered = np.isin(patients, [f"p{i}" for i in range(0, 40, 8)])
    shares = patient_shares(clustered, patients, draws=4000)
    assert shares.shape == (4000,) and np.all((shares >= 0) & (shares <= 1))
    assert np.quantile(shares, 0.025) < clustered.mean() < np.quantile(shares, 0.975)
    assert abs(np.mean(shares) - clustered.mean()) < 0.02
    # A patient-level pattern spreads more than the same share scattered over every patient.
    scattered = rng.permutation(clustered)
    spread = np.quantile(patient_shares(scattered, patients), 0.95) - scattered.mean()
    assert np.quantile(shares, 0.95) - clustered.mean() > 2 * spread
    assert np.all(patient_shares(np.ones(len(patients), bool), patients, draws=50) == 1.0)
    np.testing.assert_array_equal(
        patient_shares(clustered, patients, seed=3), patient_shares(clustered, patients, seed=3)
    )
    with pytest.raises(ValueError):
        patient_shares(np.zeros(3, bool), ["a", "b"])


def test_trailing_means_pool_the_latest_windows() -> None:
    values = np.array([0.1, 0.9, 0.9, 0.9, 0.1, 0.3])
    expected = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(trailing_means(values, 3), expected)
    np.testing.assert_allclose(trailing_means(values, 1), values)
    with_nan = trailing_means(np.array([0.2, np.nan, 0.4, 0.6]), 2)
    assert np.isnan(with_nan[1]), "not computable: the gate refuses it as quality_unknown"
    np.testing.assert_allclose(with_nan[[0, 2, 3]], [0.2, 0.3, 0.5]), "the NaN is skipped, not pooled"
    assert trailing_means(np.zeros(0), 5).shape == (0,)


def test_the_calibrated_aqs_spans_its_range_on_band_limited_audio() -> None:
    """An 8 kHz stethoscope upsampled leaves 4-8 kHz empty, which pulls the full-band entropy down for every
    recording alike; over the device's band, mapped through training percentiles, breath and noise separate."""
    from qlung_edge.audio import resample

    breath = resample(breath_like(8.0, 8000, seed=2), 8000, 16000)
    noisy = resample((0.05 * np.random.default_rng(0).standard_normal(64000)).astype(np.float32), 8000, 16000)
    paper = QualityConfig()
    band = dataclasses.replace(paper, entropy_band_hz=4000.0)
    assert band.entropy_bins == 129
    e_breath, e_noise = assess(breath, config=band).entropy, assess(noisy, config=band).entropy
    assert assess(breath, config=paper).entropy < e_breath < e_noise
    calibrated = dataclasses.replace(band, entropy_floor=e_breath - 0.05, entropy_ceil=e_noise)
    assert assess(noisy, config=calibrated).aqs < assess(breath, config=calibrated).aqs
    assert assess(noisy, config=calibrated).aqs < assess(noisy, config=paper).aqs - 0.1, "the score uses its range"
    with pytest.raises(ValueError, match="entropy_floor"):
        dataclasses.replace(paper, entropy_floor=0.6, entropy_ceil=0.5)


class Estimating(OnnxBackend):
    """The bundle's model with a `poor` output set by the test: a stand-in for a fitted quality head."""

    values: ClassVar[list[float]] = []

    def run_all(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        out = super().run_all(windows)
        out["poor"] = np.array([self.values.pop(0) if self.values else 0.0 for _ in windows], np.float32)
        return out


def test_the_daemon_gates_on_the_learned_estimate_and_on_nan(bundle: Path, tmp_path: Path) -> None:
    wav = tmp_path / "breath.wav"
    sf.write(wav, breath_like(14.0), 16000)
    sink = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], hop_seconds=1.0)

    def factory(b: Any, c: Any) -> OnnxBackend:
        Estimating.values = [0.1, 0.9, float("nan"), 0.2]
        return Estimating("onnx-fp32", b, 1)

    daemon = Daemon(config, source=FileSource(name="f", path=wav), sinks=[sink], backend_factory=factory)
    daemon.reporter.threshold = 0.5
    assert daemon.run() == 0
    windows = [e for e in sink.events if e["type"] == "window"]
    for event in sink.events:
        validate(event)
    first = windows[:4]
    assert [w["status"] for w in first] == ["classified", "gated", "gated", "classified"]
    assert first[1]["reasons"] == ["estimated_poor"] and first[1]["poor"] == pytest.approx(0.9)
    assert first[2]["reasons"] == ["quality_unknown"] and "prediction" not in first[2]
    verdict = next(e for e in sink.events if e["type"] == "verdict")
    assert verdict["evidence"]["gated_by_reason"] == {"estimated_poor": 1, "quality_unknown": 1}


def test_the_gate_pools_the_examinations_latest_estimates(bundle: Path, tmp_path: Path) -> None:
    """With `smoothing_windows` 3 the gate judges the mean of the examination's latest three P(poor): one poor
    window among good ones passes, a run of them is refused, and a new examination starts afresh."""
    wav = tmp_path / "breath.wav"
    sf.write(wav, breath_like(14.0), 16000)
    sink = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], hop_seconds=1.0)

    def factory(b: Any, c: Any) -> OnnxBackend:
        Estimating.values = [0.1, 0.9, 0.1, 0.9, 0.9, 0.9, 0.1]
        return Estimating("onnx-fp32", b, 1)

    daemon = Daemon(config, source=FileSource(name="f", path=wav), sinks=[sink], backend_factory=factory)
    daemon.reporter.threshold = 0.6
    daemon.reporter.quality_windows = 3
    daemon.reporter.recent_poor = deque(maxlen=3)
    assert daemon.run() == 0
    windows = [e for e in sink.events if e["type"] == "window"][:7]
    expected = trailing_means(np.array([0.1, 0.9, 0.1, 0.9, 0.9, 0.9, 0.1]), 3)
    assert [w["poor"] for w in windows] == pytest.approx(list(expected), abs=1e-4)
    assert [w["status"] for w in windows] == [("gated" if p >= 0.6 else "classified") for p in expected]
    assert [w["status"] for w in windows][:3] == ["classified"] * 3, "one poor window alone passes"
    daemon.reporter.boundary(ExamBoundary(False, 20.0, "test"))
    daemon.reporter.boundary(ExamBoundary(True, 20.0, "test"))
    assert len(daemon.reporter.recent_poor) == 0


def test_a_bundle_without_an_estimate_runs_on_the_aqs_gate_and_says_so(bundle: Path, tmp_path: Path) -> None:
    wav = tmp_path / "breath.wav"
    sf.write(wav, breath_like(9.0), 16000)
    daemon = Daemon(DaemonConfig(bundle=bundle, source=f"file:{wav}", sinks=[]), sinks=[CollectSink()])
    assert daemon.quality_threshold is None
    assert daemon.health()["quality_estimate"].startswith("AQS-only gate")


def _drifting_recordings(later_shift: float, seed: int = 6) -> dict[str, Any]:
    """30 patients recorded one after another, 2 recordings of 12 windows each, one recording in six poor; the
    embedding's second axis drifts by `later_shift` (towards "poor") for the last 6 patients."""
    from types import SimpleNamespace

    from training.records import Recording

    rng = np.random.default_rng(seed)
    recordings, ids, patients, x, y, reports = [], [], [], [], [], []
    for p in range(30):
        for k in range(2):
            rec_id, poor = f"{p}_{k}", rng.random() < 1 / 6
            label = "Poor Quality" if poor else "Normal"
            recordings.append(Recording(id=rec_id, dataset="sprsound", patient=f"p{p}", device="d", location="p1",
                                        annotation_path=Path(rec_id), record_label=label,
                                        extra={"order": str(100 * p + k)}))  # fmt: skip
            for _ in range(12):
                ids.append(rec_id), patients.append(f"p{p}"), y.append(float(poor))
                shift = later_shift if p >= 24 else 0.0
                x.append([rng.normal(2.0 * poor, 1.0), rng.normal(shift + 1.5 * poor, 1.0)])
                reports.append(SimpleNamespace(rms_dbfs=float(rng.normal(-30, 3)), reasons=()))
    return {"recordings": recordings, "ids": ids, "patients": np.array(patients), "x": np.array(x),
            "y": np.array(y), "reports": reports}  # fmt: skip


def test_the_latest_patients_by_recording_order() -> None:
    from training.quality_model import later_patients

    data = _drifting_recordings(0.0)
    assert later_patients(data["recordings"], 0.2) == {f"p{p}" for p in range(24, 30)}
    assert later_patients(data["recordings"], 0.01) == {"p29"}, "at least one patient"
    # A patient's place is that of their first recording, whatever order the list is in.
    shuffled = list(reversed(data["recordings"]))
    shuffled[0] = dataclasses.replace(shuffled[0], extra={"order": "5"})  # p29's second recording, made early
    assert later_patients(shuffled, 1 / 30) == {"p28"}
    unknown = [*data["recordings"][:-1], dataclasses.replace(data["recordings"][-1], extra={})]
    assert later_patients(unknown) is None, "one recording without an order: nothing says who came later"


def test_a_gate_fitted_without_drifted_patients_refuses_more_of_them_and_the_budget_is_lowered() -> None:
    from training.quality_model import held_out_gate

    def gate(shift: float, held: set[str]) -> Any:
        d = _drifting_recordings(shift)
        return held_out_gate(d["x"], d["y"], d["patients"], d["recordings"], d["ids"], d["reports"], held, 1)

    later = {f"p{p}" for p in range(24, 30)}
    steady, drifted = gate(0.0, later), gate(1.5, later)
    budgets = [0.02, 0.05, 0.1, 0.2]
    for g in (steady, drifted):
        shares = [g.refused_share(b) for b in budgets]
        assert shares == sorted(shares), "a larger budget never refuses less"
        # Brute force over every count of windows the estimate may refuse: the budget chosen is the largest
        # whose refused share stays within the target in 97.5 % of resamples of the held-out patients.
        windows, refused = len(g.fitted_gated), int(g.fitted_refused.sum())
        for target in (0.1, 0.2):
            passing = [
                k for k in range(int((~g.fitted_refused).sum()) + 1)
                if np.quantile(patient_shares(g.held_refusals((refused + k + 0.5) / windows), g.held_patients),
                               0.975) <= target
            ]  # fmt: skip
            cut = budget_threshold(g.fitted_gated, g.fitted_refused, (refused + max(passing) + 0.5) / windows)
            really = int(np.sum(g.fitted_gated[~g.fitted_refused] >= cut))  # ties at the cut refuse fewer
            chosen = g.budget_for(target)
            assert chosen == (refused + really + 0.5) / windows and g.upper_share(chosen) <= target
            # That many windows refused out of fold (rounding down keeps the half window out).
            assert np.mean(g.held_refusals(chosen)) <= target
    assert drifted.refused_share(0.05) > 2 * steady.refused_share(0.05) > 0
    assert drifted.budget_for(0.2) < 0.5 * steady.budget_for(0.2)
    # Independent check of one share: the held-out good windows at or above the threshold the budget gives.
    threshold = budget_threshold(drifted.fitted_gated, drifted.fitted_refused, 0.05)
    assert drifted.refused_share(0.05) == np.mean(drifted.held_gated >= threshold)
    assert gate(0.0, {f"p{p}" for p in range(30)}) is None, "nothing left to fit on"
    # Out of reach (the AQS reasons alone refuse more than the target): the estimate is left refusing nothing.
    aqs_bound = dataclasses.replace(drifted, held_refused=np.ones_like(drifted.held_refused))
    unreachable = aqs_bound.budget_for(0.05)
    assert aqs_bound.upper_share(unreachable) > 0.05
    assert budget_threshold(aqs_bound.fitted_gated, aqs_bound.fitted_refused, unreachable) > 1.0


def test_a_tie_at_the_cut_lowers_the_budget_to_what_its_threshold_refuses() -> None:
    from training.quality_model import HeldOutGate

    # Allowing one refusal among [.9, .9, .5, .2] refuses none (the threshold moves above the tie); allowing two
    # refuses the held-out .7, over the target. So the budget is that of no refusal, not of one.
    gate = HeldOutGate(np.array([0.9, 0.9, 0.5, 0.2]), np.zeros(4, bool), np.array([0.7, 0.1, 0.1, 0.1]),
                       np.zeros(4, bool), np.array(["a", "b", "c", "d"]))  # fmt: skip
    assert gate.refused_share(1.5 / 4) == 0.0 and gate.upper_share(2.5 / 4) > 0.1
    assert gate.budget_for(0.1) == 0.5 / 4
