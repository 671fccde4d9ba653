from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import recall_score, roc_auc_score

from training.metrics import auroc, confusion_matrix, icbhi_scores, patient_score_gaps, plot_confusion_matrix


def test_scores_of_a_hand_made_matrix() -> None:
    m = np.array([[80, 10, 5, 5], [10, 30, 5, 5], [5, 5, 15, 5], [2, 3, 5, 10]])
    s = icbhi_scores(m)
    assert s.specificity == pytest.approx(80 / 100)
    assert s.sensitivity == pytest.approx((30 + 15 + 10) / (50 + 30 + 20))
    assert s.score == pytest.approx((0.8 + 0.55) / 2)
    assert s.sensitivity_2class == pytest.approx((100 - 10 - 5 - 2) / 100)
    assert s.recall == pytest.approx({"normal": 0.8, "crackle": 0.6, "wheeze": 0.5, "both": 0.5})
    assert s.cycles == 200 and "Score 67.50" in s.line()


def test_against_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    m = confusion_matrix(y, p)
    assert np.array_equal(m, sk_confusion(y, p, labels=[0, 1, 2, 3]))
    recall = recall_score(y, p, average=None, labels=[0, 1, 2, 3])
    assert list(icbhi_scores(m).recall.values()) == pytest.approx(list(recall))
    with pytest.raises(ValueError):
        confusion_matrix([0, 4], [0, 1])


def test_auroc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.5, 0.5], [False, True]) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc([0.1, 0.2], [True, True])


def test_empty_classes_give_nan_not_a_crash() -> None:
    s = icbhi_scores(np.array([[5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert s.specificity == 1.0 and np.isnan(s.sensitivity)


def test_confusion_matrix_png(tmp_path: Path) -> None:
    path = plot_confusion_matrix(
        np.array([[5, 1, 0, 0], [1, 3, 0, 1], [0, 0, 2, 0], [0, 1, 0, 1]]), tmp_path / "cm.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_patient_score_gaps_match_scoring_each_resample_written_out() -> None:
    from training.window_decision import window_score

    rng = np.random.default_rng(1)
    patients = [f"p{k}" for k in range(6)]

    def items(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        truth = rng.integers(0, 4, n)
        truth[:8] = 0  # every patient below has normal and abnormal items
        truth[8:16] = 1
        predicted = np.where(rng.random(n) < 0.6, truth, rng.integers(0, 4, n))
        return truth, predicted, [patients[k % 6] for k in range(n)]

    windows, cycles = items(90), items(40)
    gaps = patient_score_gaps(windows, cycles, draws=30, seed=5)
    # The same resamples written out: each drawn patient brings all of their items, as many times as drawn.
    draws = np.random.default_rng(5).multinomial(6, np.full(6, 1 / 6), size=30)

    def resample(part: tuple[np.ndarray, np.ndarray, list[str]], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = [i for k, n in enumerate(times) for _ in range(n) for i, p in enumerate(part[2]) if p == patients[k]]
        return part[0][rows], part[1][rows]

    for gap, times in zip(gaps, draws):
        expected = window_score(*resample(windows, times)) - window_score(*resample(cycles, times))
        assert gap == pytest.approx(expected, nan_ok=True)
    assert np.isfinite(gaps).sum() > 20 and np.nanstd(gaps) > 0
    with pytest.raises(ValueError, match="one patient per item"):
        patient_score_gaps((windows[0], windows[1], patients), cycles)
