"""The learned quality estimate: P(poor recording) per window, from the classifier's own embedding.

A level-and-entropy score does not see why SPRSound's annotators call a record "Poor Quality". The classifier's
embedding, learned without those labels, does better: a logistic regression on it (a linear head, exported as
the bundle's `poor` output) is fitted on every window of the training recordings — each inheriting its
record's "Poor Quality" label — plus real windows made poor on purpose by synthetic degradations of known
severity (noise, friction, clipping, low gain, hum, dropouts; `training.synth.degrade`).

Measured the way it is used: record-level AUROC of the mean P(poor) of a record's windows against its label,
out of fold in a patient-wise cross-validation of the training recordings (with a bootstrap 95 % interval),
and the gate's threshold chosen there so that at most `false_gate` of the good records' windows are refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qlung_edge import MODEL_SAMPLE_RATE
from qlung_edge.examination import POOR_QUALITY
from training.cycles import CycleAudioLoader
from training.dataset import Geometry, Prepared, prepare
from training.metrics import auroc
from training.models import QLungModel
from training.records import Recording
from training.splits import patient_kfold
from training.synth import degrade
from training.verdicts import all_windows


@dataclass(frozen=True)
class QualityFit:
    weight: np.ndarray
    bias: float
    threshold: float
    figures: dict[str, Any]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 30) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method on standardised inputs, classes balanced; the
    weights returned apply to the raw inputs (standardisation folded in)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    positives = max(int(y.sum()), 1)
    weights = np.where(y > 0, len(y) / (2.0 * positives), len(y) / (2.0 * max(len(y) - positives, 1)))
    beta = np.zeros(z.shape[1])
    penalty = l2 * np.eye(z.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
        gradient = z.T @ (weights * (p - y)) + penalty @ beta
        hessian = (z * (weights * p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    weight = beta[:-1] / scale
    return weight, float(beta[-1] - weight @ mean)


def probability(x: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x @ weight + bias, -30, 30)))


@torch.no_grad()
def embeddings(model: QLungModel, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model's embedding of each input (log-mel frames or waveforms)."""
    model.eval()
    parts = [model(torch.tensor(np.asarray(inputs[i : i + batch], np.float32)))["embedding"].numpy()
             for i in range(0, len(inputs), batch)]  # fmt: skip
    return np.concatenate(parts) if parts else np.zeros((0, model.backbone.embed_dim), np.float32)


def degraded_windows(
    prepared: Prepared, recordings: Sequence[Recording], geometry: Geometry, count: int, seed: int = 0
) -> tuple[np.ndarray, list[str], list[str]]:
    """`count` good windows made poor by one severe synthetic degradation each: waveforms, source patients, kinds."""
    by_id = {r.id: r for r in recordings}
    loader = CycleAudioLoader(recordings)
    rng = np.random.default_rng(seed)
    good = [i for i, e in enumerate(prepared.examples) if by_id[e.recording].record_label != POOR_QUALITY]
    chosen = rng.choice(good, size=min(count, len(good)), replace=False)
    waves, patients, kinds = [], [], []
    for i in chosen:
        example = prepared.examples[int(i)]
        audio = loader.recording_audio(example.recording)
        start = int(round(example.start * MODEL_SAMPLE_RATE))
        window = np.resize(np.asarray(audio[start : start + geometry.samples], np.float32), geometry.samples)
        poor, degradation = degrade(window, MODEL_SAMPLE_RATE, rng)
        waves.append(poor)
        patients.append(example.patient)
        kinds.append(degradation.kind)
    return np.stack(waves), patients, kinds


def record_scores(recording_ids: Sequence[str], p_poor: np.ndarray) -> dict[str, float]:
    """The record-level quality estimate: the mean P(poor) of its windows."""
    sums: dict[str, list[float]] = defaultdict(list)
    for rec, p in zip(recording_ids, p_poor):
        sums[rec].append(float(p))
    return {rec: float(np.mean(v)) for rec, v in sums.items()}


def bootstrap_auroc(scores: np.ndarray, positives: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the AUROC over records resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(scores), len(scores))
        if positives[pick].all() or not positives[pick].any():
            continue
        values.append(auroc(scores[pick], positives[pick]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def fit_quality_estimate(
    model: QLungModel,
    recordings: Sequence[Recording],
    geometry: Geometry,
    cache_dir: str,
    quality: Any,
    *,
    degraded: int = 600,
    folds: int = 5,
    false_gate: float = 0.05,
    progress: bool = True,
) -> QualityFit:
    """Fit the quality head on `recordings` (the training split) and measure it by patient-wise CV."""
    window_geometry = Geometry("window", geometry.seconds, geometry.hop_seconds)
    usable = [r for r in recordings if r.audio_path is not None]
    prepared = prepare(all_windows(usable, window_geometry), usable, cache_dir, quality, window_geometry,
                       progress=progress, desc="quality: windows")  # fmt: skip
    by_id = {r.id: r for r in usable}
    x_real = embeddings(model, prepared.inputs)
    rec_ids = [e.recording for e in prepared.examples]
    y_real = np.array([by_id[r].record_label == POOR_QUALITY for r in rec_ids], dtype=float)
    patients_real = [e.patient for e in prepared.examples]
    waves, patients_syn, kinds = degraded_windows(prepared, usable, window_geometry, degraded)
    x_syn = embeddings(model, waves)
    x = np.vstack([x_real, x_syn])
    y = np.concatenate([y_real, np.ones(len(x_syn))])
    patients = np.array(patients_real + patients_syn)
    real = np.arange(len(x)) < len(x_real)

    out_of_fold = np.zeros(len(x))
    for _, held_ids in patient_kfold(usable, k=folds):
        held_patients = {by_id[i].patient for i in held_ids}
        held = np.isin(patients, list(held_patients))
        weight, bias = fit_logistic(x[~held], y[~held])
        out_of_fold[held] = probability(x[held], weight, bias)
    per_record = record_scores([rec_ids[i] for i in range(len(x_real))], out_of_fold[real])
    records = sorted(per_record)
    scores = np.array([per_record[r] for r in records])
    poor = np.array([by_id[r].record_label == POOR_QUALITY for r in records])
    good_windows = out_of_fold[real][y_real == 0]
    poor_windows = out_of_fold[real][y_real == 1]
    threshold = float(np.quantile(good_windows, 1.0 - false_gate))
    synthetic_caught = float(np.mean(out_of_fold[~real] >= threshold))
    weight, bias = fit_logistic(x, y)
    low, high = bootstrap_auroc(scores, poor)
    figures = {
        "cv_folds": folds,
        "cv_record_auroc": auroc(scores, poor),
        "cv_record_auroc_95": [low, high],
        "records": len(records),
        "poor_records": int(poor.sum()),
        "windows": int(len(x_real)),
        "synthetic_windows": int(len(x_syn)),
        "synthetic_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
        "threshold": threshold,
        "good_windows_refused": float(np.mean(good_windows >= threshold)),
        "synthetic_windows_caught": synthetic_caught,
        "poor_record_windows_refused": float(np.mean(poor_windows >= threshold)) if len(poor_windows) else None,
    }
    return QualityFit(weight.astype(np.float32), bias, threshold, figures)


def attach(model: QLungModel, fit: QualityFit) -> QLungModel:
    head = model.attach_quality_head()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.weight)[None])
        head.bias.fill_(fit.bias)
    return model
