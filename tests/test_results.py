"""scripts/results.py on the seeds archived in the repository, and the command line the per-run report scripts share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_results_leave_out_a_group_without_seeds_only_when_asked(tmp_path: Path) -> None:
    """scripts/results.py on a seed archived in the repository and a recipe not trained yet."""
    repo = Path(__file__).resolve().parents[1]
    kept = repo / "seed-reports" / "ce-edge-sprsound-windows-event-mix"
    groups = ["--group", f"CE + mixing={kept}", "--group", f"new={tmp_path / 'none'}", "--pair", "new,CE + mixing"]
    command = [sys.executable, str(repo / "scripts" / "results.py"), *groups, "--out", str(tmp_path / "R.md")]
    refused = subprocess.run(command, capture_output=True, text=True, cwd=repo)
    assert refused.returncode != 0 and "no seed*/summary.json" in refused.stderr
    done = subprocess.run([*command, "--skip-empty"], capture_output=True, text=True, cwd=repo)
    assert done.returncode == 0 and "new: no finished seed" in done.stderr
    text = (tmp_path / "R.md").read_text()
    assert "| figure | CE + mixing |" in text and "Paired per-seed" not in text


def test_epochs_whose_validation_went_all_one_way_are_counted_from_the_epoch_log(
    tmp_path: Path, scripts_importable: Path
) -> None:
    import results

    log = tmp_path / "metrics.csv"
    rows = [(1.0, 0.0), (0.98, 0.30), (0.0, 0.74), (0.97, 0.04), (0.96, 0.35)]  # epoch 1 untrained: not counted
    log.write_text(
        "epoch,val_specificity,val_sensitivity\n" + "".join(f"{i + 1},{sp},{se}\n" for i, (sp, se) in enumerate(rows))
    )
    assert results.epoch_log(log) == {"all_abnormal": 0.25, "all_normal": 0.25}
    assert results.epoch_log(tmp_path / "missing.csv") is None
    kept = Path(__file__).resolve().parents[1] / "seed-reports" / "ce-edge-sprsound-windows-event-mix-fine-time"
    seeds = {s["seed"]: s for s in results.load_group(kept)}
    assert seeds[1]["epochs"] == {"all_abnormal": 7 / 19, "all_normal": 2 / 19}  # 3, 5-8, 10, 16; 2, 4


def test_the_drift_rows_read_the_later_and_random_fifths_at_the_trained_budget(scripts_importable: Path) -> None:
    import results

    held_out = {
        "later": {"0.02": 0.05, "0.03": 0.07},
        "random": [{"0.02": 0.01, "0.03": 0.02}, {"0.02": 0.0, "0.03": 0.04}],
    }
    assert results.drift({"budget": 0.03, "held-out patients": held_out}) == {"later": 0.07, "random": 0.03}
    # A checkpoint trained with the lowered budget is read at the budget it asked for.
    assert results.drift({"budget": 0.019, "budget_asked": 0.02, "held-out patients": held_out}) == {
        "later": 0.05, "random": 0.005,
    }  # fmt: skip
    assert results.drift({"budget": 0.03}) is None and results.drift(None) is None


def test_the_gap_rows_read_each_seed_s_window_gap(tmp_path: Path) -> None:
    import json

    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    kept = repo / "seed-reports" / "ce-edge-sprsound-windows-event-mix-fine-time"
    command = [
        sys.executable,
        str(repo / "scripts" / "results.py"),
        "--group",
        f"CE={kept}",
        "--out",
        str(tmp_path / "R.md"),
    ]
    assert subprocess.run(command, capture_output=True, text=True, cwd=repo).returncode == 0
    text = (tmp_path / "R.md").read_text()
    files = sorted(kept.glob("seed*/window_gap.json"))
    assert len(files) == 5
    for split in ("validation", "test"):
        for key, end in (("gap", ""), ("high", ", high end of its 95 % over patient resamples")):
            xs = [100 * json.loads(f.read_text())[split][key] for f in files]
            label = f"{split} patients, window level minus cycle level (offline, points){end}"
            assert f"| {label} | {np.mean(xs):.2f} ± {np.std(xs, ddof=1):.2f} |" in text


def test_the_edge_and_segmenter_rows_read_each_seed_s_reports(tmp_path: Path) -> None:
    import json

    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    kept = repo / "seed-reports" / "ce-edge-sprsound-windows-event-mix-fine-time-2s"
    command = [sys.executable, str(repo / "scripts" / "results.py"), "--group", f"CE={kept}", "--out",
               str(tmp_path / "R.md")]  # fmt: skip
    assert subprocess.run(command, capture_output=True, text=True, cwd=repo).returncode == 0
    text = (tmp_path / "R.md").read_text()
    for name, label, path in (
        ("event_edges.json", "cycle level from nothing but each event's annotated length (offline)",
         ("length_rule_score",)),
        ("event_edges.json", "cycle level with every event cut to a fixed 1 s centred on it (offline)",
         ("centred_cuts", "1", "cycle_score")),
        ("event_segments.json", "window level composed from the calls of the learned event segmenter's segments "
         "(offline)", ("composed_segmented_score",)),
    ):  # fmt: skip
        files = sorted(kept.glob(f"seed*/{name}"))
        assert len(files) == 3
        for split in ("validation", "test"):
            xs = []
            for f in files:
                value = json.loads(f.read_text())[split]
                for key in path:
                    value = value[key]
                xs.append(100 * value)
            assert f"| {split} patients, {label} | {np.mean(xs):.2f} ± {np.std(xs, ddof=1):.2f} |" in text


def test_the_own_window_gains_are_each_probe_s_window_level_minus_the_network_s_calls(
    scripts_importable: Path, tmp_path: Path
) -> None:
    import json

    import results

    assert results.own_window_gains(tmp_path) is None  # neither probe run
    crops = {split: {"thresholds": {"score": 0.70 + k / 10}, "window": {"score": 0.62}}
             for k, split in enumerate(("validation", "test"))}  # fmt: skip
    (tmp_path / "crop_scan.json").write_text(json.dumps(crops))
    assert results.own_window_gains(tmp_path) == {
        "validation": {"crops": pytest.approx(0.08)},
        "test": {"crops": pytest.approx(0.18)},
    }
    segments = {split: {"composed_segmented_score": 0.55, "window_score": 0.60} for split in ("validation", "test")}
    (tmp_path / "event_segments.json").write_text(json.dumps(segments))
    assert results.own_window_gains(tmp_path)["test"] == {"crops": pytest.approx(0.18),
                                                          "segments": pytest.approx(-0.05)}  # fmt: skip


def test_the_detector_rows_are_each_way_of_calling_minus_the_window_head_s(
    tmp_path: Path, scripts_importable: Path
) -> None:
    import json

    import results

    judged = {
        "validation": {"plain": {"score": 0.60}, "detector": {"score": 0.65}, "union": {"score": 0.58}},
        "test": {"plain": {"score": 0.70}, "detector": {"score": 0.61}, "union": {"score": 0.72}},
    }
    (tmp_path / "step_detector.json").write_text(json.dumps(judged))
    gains = results.detector_gains(tmp_path / "step_detector.json")
    assert gains is not None
    assert set(gains) == {"validation", "test"} and set(gains["test"]) == set(results.DETECTOR_RULES)
    for split, rule, want in (
        ("validation", "detector", 0.05), ("validation", "union", -0.02),
        ("test", "detector", -0.09), ("test", "union", 0.02),
    ):  # fmt: skip
        assert abs(gains[split][rule] - want) < 1e-12
    # A run trained without the detector has no file and no row.
    assert results.detector_gains(tmp_path / "missing.json") is None


def test_each_run_s_report_is_written_before_the_next_run_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], scripts_importable: Path
) -> None:
    import json

    from run_reports import report_runs

    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()

    def measure(run: Path) -> dict[str, object]:
        if run.name == "b":
            assert json.loads((runs[0] / "r.json").read_text()) == {"name": "a"}
            raise RuntimeError("b failed")
        return {"name": run.name}

    monkeypatch.setattr(sys, "argv", ["x.py", *map(str, runs)])
    with pytest.raises(RuntimeError, match="b failed"):
        report_runs("Title line.\nMore.", "r.json", measure, lambda r: [f"named {r['name']}"])
    assert f"{runs[0]}:\n  named a" in capsys.readouterr().out
    assert not (runs[1] / "r.json").exists()


def test_the_glance_line_is_each_seed_s_deployed_window_minus_cycle_and_counts_the_seeds_that_reach_a_target(
    scripts_importable: Path,
) -> None:
    import json

    import numpy as np
    import results

    def spread(xs: list[float]) -> str:
        return f"{np.mean(xs):.2f} ± {np.std(xs, ddof=1):.2f}"

    kept = Path(__file__).resolve().parents[1] / "seed-reports" / "ce-edge-sprsound-windows-event-mix-fine-time-2s"
    cycle, window, cut, task_1, task_2 = [], [], [], [], []
    for seed_dir in sorted(kept.glob("seed*")):
        stream = json.loads((seed_dir / "eval-stream" / "eval_stream.json").read_text())
        cycle.append(100 * json.loads((seed_dir / "summary.json").read_text())["test_cycles"]["score"])
        window.append(100 * stream["accepted"]["score"])
        cut.append(
            100 * json.loads((seed_dir / "event_edges.json").read_text())["test"]["window_minus_window_length_cut"]
        )
        task_1.append(100 * stream["records"]["task_2_1"]["score"])
        task_2.append(100 * stream["records"]["task_2_2"]["score"])
    gaps = [w - c for w, c in zip(window, cycle)]
    assert len(gaps) == 3
    lines = results.glance({"CE 2 s": results.load_group(kept)})
    assert len(lines[2].split("|")) == len(lines[-1].split("|"))  # as many cells as the header names
    cells = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert cells == [
        "CE 2 s", "3", spread(cycle), spread(window), spread(gaps), f"{sum(round(g, 2) >= -2 for g in gaps)} of 3",
        spread(cut), f"{sum(round(c, 2) >= -2 for c in cut)} of 3",
        spread(task_1), f"{sum(round(t, 2) >= 73.7 for t in task_1)} of 3", spread(task_2),
    ]  # fmt: skip
    # The count is of seeds at or above the floor as printed, not of the means.
    assert results._reaching([-2.004, -1.0, -2.01], -2.0) == "2 of 3"
    assert results._reaching([], -2.0) == "n/a"


def test_the_overlap_rows_read_each_seed_s_label_overlap_and_only_for_its_own_stream(scripts_importable: Path) -> None:
    import json

    import results

    repo = Path(__file__).resolve().parents[1]
    kept = repo / "seed-reports" / "ce-edge-sprsound-windows-event-mix-fine-time"
    files = sorted(kept.glob("seed*/label_overlap.json"))
    assert len(files) == 5
    xs = [100 * json.loads(f.read_text())["0.5"]["score"] for f in files]
    label = "deployed, window level, events counted only where they overlap the window by 0.5 s or half their length"
    row = next(r for r in results.ROWS if r[0] == label)
    assert results.values(results.load_group(kept), row[1], row[2]) == pytest.approx(xs)
    # The same seeds streamed under another gate: their label_overlap.json judged the first stream's calls.
    assert results.values(results.load_group(kept, "eval-stream-later"), row[1], row[2]) == []
