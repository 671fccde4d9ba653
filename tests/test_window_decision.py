"""Decision offsets on window log-probabilities: the Score they are fitted for and the fit itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.metrics import balanced_score, confusion_matrix
from training.window_decision import (
    decide,
    fit_offsets,
    prior_offsets,
    segment_starts,
    smooth,
    window_score,
    with_segments,
)


def test_zero_offsets_are_the_argmax() -> None:
    p = np.random.default_rng(0).dirichlet(np.ones(4), size=50)
    assert np.array_equal(decide(p, (0, 0, 0, 0)), p.argmax(1))


def test_the_score_is_icbhi_and_balanced_weighs_each_abnormal_class_the_same() -> None:
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    # SP 3/4; SE over abnormal windows 2/4; balanced SE (2/3 + 0/1) / 2.
    assert window_score(truth, predicted) == pytest.approx((0.75 + 0.5) / 2)
    assert window_score(truth, predicted, balanced=True) == pytest.approx((0.75 + 1 / 3) / 2)
    assert np.isnan(window_score(np.array([1, 2]), np.array([1, 2])))


def test_the_fit_undoes_a_known_bias_against_one_class() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 400)
    logits = rng.normal(0, 0.3, (400, 4))
    logits[np.arange(400), truth] += 1.5
    logits[:, 2] -= 2.0  # the model under-calls class 2 by e^-2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    before = window_score(truth, p.argmax(1))
    fitted = fit_offsets(p, truth)
    assert fitted.offsets[0] == 0.0
    assert 1.25 <= fitted.offsets[2] <= 3.0
    assert fitted.score == pytest.approx(window_score(truth, decide(p, fitted.offsets)))
    assert fitted.score > before + 0.1


def test_ties_go_to_the_plain_argmax() -> None:
    truth = np.array([0, 1, 2, 3])
    p = np.eye(4) * 0.9 + 0.025
    assert fit_offsets(p, truth).offsets == (0.0, 0.0, 0.0, 0.0)


def test_windows_that_cannot_be_scored_keep_the_plain_argmax() -> None:
    p = np.full((3, 4), 0.25)
    fitted = fit_offsets(p, np.array([0, 0, 0]))  # no abnormal window: no Score to maximise
    assert fitted.offsets == (0.0, 0.0, 0.0, 0.0) and np.isnan(fitted.score)


def test_smoothing_averages_neighbours_of_the_same_recording_only() -> None:
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), 7)
    recordings = np.array(["a", "a", "a", "a", "b", "b", "b"])
    causal = smooth(p, recordings, before=2)
    centred = smooth(p, recordings, before=1, after=1)
    np.testing.assert_allclose(causal[3], p[1:4].mean(0))
    np.testing.assert_allclose(causal[4], p[4])  # a new recording starts afresh
    np.testing.assert_allclose(causal[6], p[4:7].mean(0))
    np.testing.assert_allclose(centred[0], p[0:2].mean(0))
    np.testing.assert_allclose(centred[5], p[4:7].mean(0))
    np.testing.assert_allclose(smooth(p, recordings, before=0), p)


def test_prior_offsets_are_logit_adjustment() -> None:
    prior = np.array([0.8, 0.13, 0.05, 0.02])
    offsets = prior_offsets(prior, 1.0)
    assert offsets[0] == 0.0
    p = np.array([[0.7, 0.1, 0.15, 0.05]])
    adjusted = np.log(p) - np.log(prior)  # the formula, normal's term included: the argmax is the same
    assert decide(p, offsets)[0] == adjusted.argmax() == 2
    assert decide(p, prior_offsets(prior, 0.0))[0] == 0
    assert np.allclose(prior_offsets(prior * 3, 0.5), 0.5 * offsets)  # counts or shares alike
    with pytest.raises(ValueError, match="every class"):
        prior_offsets([10, 5, 0, 1])  # a class training never saw: no finite adjustment


def test_segments_cover_the_window_half_a_segment_apart() -> None:
    assert np.allclose(segment_starts(4.0, 1.0), [0, 0.5, 1, 1.5, 2, 2.5, 3])
    assert np.allclose(segment_starts(4.0, 2.0), [0, 1, 2])
    assert np.allclose(segment_starts(4.0, 1.5), [0, 0.75, 1.5, 2.25, 2.5])  # the last one ends with the window
    assert np.allclose(segment_starts(4.0, 4.0), [0])
    with pytest.raises(ValueError, match="no longer than the window"):
        segment_starts(4.0, 5.0)


def test_segment_rules() -> None:
    window = np.array([[0.9, 0.1, 0.0, 0.0]])
    segments = np.array([[[0.95, 0.05, 0.0, 0.0], [0.2, 0.0, 0.8, 0.0]]])
    assert np.allclose(with_segments(window, segments, "most abnormal"), [[0.55, 0.05, 0.4, 0.0]])
    assert np.allclose(with_segments(window, segments, "mean"), [[2.05 / 3, 0.15 / 3, 0.8 / 3, 0.0]])
    with pytest.raises(ValueError, match="rule must be"):
        with_segments(window, segments, "max")
    # A window cut short by its recording's end repeats a stretch: the repeat is left out, not counted twice.
    repeated = np.concatenate([segments, segments[:, 1:]], axis=1)
    distinct = np.array([[True, True, False]])
    assert np.allclose(with_segments(window, repeated, "mean", distinct), with_segments(window, segments, "mean"))
    marked = np.array([[True, False, True]])  # the least normal one left out: the next is chosen
    assert np.allclose(with_segments(window, repeated, "most abnormal", marked)[0], (window[0] + repeated[0, 2]) / 2)
    assert np.allclose(with_segments(window, repeated, "most abnormal", np.array([[True, False, False]]))[0],
                       (window[0] + segments[0, 0]) / 2)  # fmt: skip


def test_the_balanced_score_of_a_confusion_matrix_is_the_balanced_window_score() -> None:
    rng = np.random.default_rng(3)
    truth, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    matrix = confusion_matrix(truth, predicted)
    assert balanced_score(matrix) == pytest.approx(window_score(truth, predicted, balanced=True))
    # 90 crackles all found, 10 wheezes all missed: ICBHI's Se is 0.9, the balanced one 0.5.
    matrix = np.array([[10, 0, 0, 0], [0, 90, 0, 0], [10, 0, 0, 0], [0, 0, 0, 0]])
    assert balanced_score(matrix) == pytest.approx((1.0 + 0.5) / 2)
    assert np.isnan(balanced_score(np.diag([5, 0, 0, 0])))


def test_the_selection_figure_is_checked() -> None:
    from training.config import TrainConfig

    assert TrainConfig(select_on="balanced score").select_on == "balanced score"
    with pytest.raises(ValueError, match=r"train\.select_on must be score or balanced score"):
        TrainConfig(select_on="accuracy")


def test_stretches_of_a_window_cut_short_end_with_it(scripts_importable: Path) -> None:
    from window_rules import _span

    spans = [_span(10.0, 14.0, s, 1.0) for s in segment_starts(4.0, 1.0)]
    assert spans[0] == (10.0, 11.0) and spans[-1] == (13.0, 14.0)  # a whole window: its 1 s stretches
    short = [_span(0.0, 2.3, s, 1.0) for s in segment_starts(4.0, 1.0)]  # a 2.3 s recording padded to 4 s
    assert all(end - start == pytest.approx(1.0) and end <= 2.3 for start, end in short)
    assert short[:3] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]
    assert all(span == (pytest.approx(1.3), 2.3) for span in short[3:])  # the rest end with the recording
