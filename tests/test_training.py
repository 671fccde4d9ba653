from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qlung_edge import CLASS_NAMES
from qlung_edge.errors import QLungError
from training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from training.config import RECIPES, ConfigError, load_recipe
from training.engine import load_splits, train, train_seeds
from training.evaluate import evaluate_checkpoint

TINY = ["train.epochs=2", "train.batch_size=8", "train.threads=1", "train.freq_mask=8", "train.time_mask=16"]


@pytest.fixture(scope="module")
def tiny(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cache = tmp_path_factory.mktemp("cache")
    return [f"data.root={synth_root / 'icbhi'}", f"data.cache_dir={cache}", *TINY]


def test_every_shipped_recipe_loads() -> None:
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"demo", "qlung-ast-icbhi", "ce-ast-icbhi", "qlung-edge-sprsound", "ce-edge-sprsound"} <= set(names)
    for ablation in ("ce", "fixed-margin", "quality-margin", "class-margin", "qlung"):
        assert f"{ablation}-ast-icbhi" in names
    for name in names:
        config = load_recipe(name)
        assert config.name == name
    paper = load_recipe("qlung-ast-icbhi")
    assert (paper.train.lr, paper.train.batch_size, paper.train.epochs, paper.train.ema) == (5e-5, 8, 50, 0.5)
    assert (paper.loss.lam, paper.loss.gamma, paper.loss.s_a, paper.loss.s_d, paper.loss.kappa) == (
        0.4,
        0.5,
        37,
        15,
        0.5,
    )


def test_recipe_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch "):
        load_recipe(path)
    path.write_text("name: x\ntrain:\n  epochs: three\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got str 'three'"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"loss: margin must be one of"):
        load_recipe("demo", ["loss.margin=wide"])
    with pytest.raises(ConfigError, match=r"event_mix_length must be drawn or event, got 'long'"):
        load_recipe("demo", ["train.event_mix_length=long"])
    with pytest.raises(ConfigError, match=r"model\.edge: time_stride must be one of 4, 8, 16, 32, 64, 128 frames"):
        load_recipe("demo", ["model.edge.time_stride=24"])
    with pytest.raises(ConfigError, match=r"model\.edge\.time_stride: expected an integer, got float 32\.0"):
        load_recipe("demo", ["model.edge.time_stride=32.0"])
    with pytest.raises(ConfigError, match=r"unknown key model\.edge\.time_strid "):
        load_recipe("demo", ["model.edge.time_strid=32"])
    with pytest.raises(ConfigError, match="no such recipe"):
        load_recipe(tmp_path / "none.yaml")
    assert load_recipe("demo", ["train.lr=0.5", "loss.lam=1"]).loss.lam == 1.0


def test_validation_patients_never_train(tiny: list[str]) -> None:
    splits = load_splits(load_recipe("demo", tiny), progress=False)
    train_patients = {c.patient for c in splits.train}
    assert splits.validation and not train_patients & {c.patient for c in splits.validation}
    assert {c.split for c in splits.test} == {"test"}
    assert sum(splits.class_counts()) == len(splits.train)
    on_test = load_splits(load_recipe("demo", [*tiny, "data.selection=test-set"]), progress=False)
    assert on_test.validation == on_test.test


def test_train_checkpoint_resume_eval(
    tiny: list[str], tmp_path: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_recipe("demo", tiny)
    if torch.cuda.is_available():  # on CUDA only the resumed random draws may differ: no autocast, fixed kernels
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        config = load_recipe("demo", [*tiny, "train.amp=false"])
    straight = train(config, tmp_path / "straight", progress=False)
    run = tmp_path / "straight"
    for name in ("best.pt", "last.pt", "metrics.csv", "summary.json", "config.yaml", "confusion_matrix.png"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    assert straight["selection"].startswith("best epoch on patients held out")
    assert 0.0 <= straight["test"]["score"] <= 1.0 and straight["train_examples_per_second"] > 0

    # Interrupted after one epoch, then resumed: the same weights as the uninterrupted run.
    assert train(config, tmp_path / "split", stop_after=1, progress=False) == {"stopped_after_epoch": 1}
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in a["model"].items():
        x, y = value.float(), b["model"][key].float()
        assert torch.allclose(x, y, atol=1e-6), f"{key} differs by up to {(x - y).abs().max().item():.3g}"
    assert resumed["test"]["score"] == pytest.approx(straight["test"]["score"])
    with pytest.raises(QLungError, match="different recipe"):
        train(replace(config, name="other"), tmp_path / "split", resume=True, progress=False)

    payload = load_checkpoint(run / "best.pt")  # weights_only load
    model, loaded = model_from_checkpoint(payload)
    assert not model.training
    assert loaded == config and payload["quality"] == config.quality.to_dict() and payload["classes"][0] == "normal"
    result = evaluate_checkpoint(run / "best.pt", synth_root / "sprsound", out_dir=tmp_path / "ev", progress=False)
    assert result["dataset"] == "sprsound" and result["metrics"]["cycles"] > 0
    assert (tmp_path / "ev" / "risk_coverage.png").exists() and "poor_quality" in result
    assert result["risk_coverage"][0]["coverage"] == 1.0


def test_the_best_epoch_is_the_one_the_chosen_validation_figure_ranks_first(
    tiny: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    import training.engine

    plain = load_recipe("demo", [*tiny, "train.epochs=3"])
    train(plain, tmp_path / "plain", progress=False)
    rows = list(csv.DictReader((tmp_path / "plain" / "metrics.csv").open()))
    assert [float(r["val_balanced_score"]) for r in rows]  # logged whatever the selection
    by_score = load_checkpoint(tmp_path / "plain" / "best.pt")["epoch"]
    wanted = 1 if by_score != 1 else 3  # an epoch the plain Score did not pick
    figures = iter([0.9 if epoch == wanted else 0.1 for epoch in (1, 2, 3)])
    monkeypatch.setattr(training.engine, "balanced_score", lambda matrix: next(figures))
    config = load_recipe("demo", [*tiny, "train.epochs=3", "train.select_on=balanced score"])
    train(config, tmp_path / "balanced", progress=False)
    assert load_checkpoint(tmp_path / "balanced" / "best.pt")["epoch"] == wanted


def test_a_run_logged_before_a_config_field_and_a_column_existed_resumes(tiny: list[str], tmp_path: Path) -> None:
    import csv

    config = load_recipe("demo", [*tiny, "train.epochs=2"])
    run = tmp_path / "run"
    assert train(config, run, stop_after=1, progress=False) == {"stopped_after_epoch": 1}
    state = load_checkpoint(run / "last.pt")
    del state["config"]["train"]["select_on"]  # as written before train.select_on existed
    save_checkpoint(run / "last.pt", state)
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (run / "metrics.csv").open("w", newline="") as f:  # and before val_balanced_score was logged
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "val_balanced_score"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    train(config, run, resume=True, progress=False)
    with (run / "metrics.csv").open(newline="") as f:
        logged = list(csv.DictReader(f))
    assert [r["epoch"] for r in logged] == ["1", "2"]
    assert logged[0]["val_balanced_score"] == "" and logged[1]["val_balanced_score"] != ""


def test_seeds_report_mean_and_std(tiny: list[str], tmp_path: Path) -> None:
    config = load_recipe("demo", [*tiny, "train.epochs=1", "train.max_steps=2"])
    summary = train_seeds(config, tmp_path, [0, 1], progress=False)
    runs = summary["score"]["runs"]
    assert len(runs) == 2 and summary["score"]["mean"] == pytest.approx(sum(runs) / 2)
    assert json.loads((tmp_path / "seeds_summary.json").read_text())["seeds"] == [0, 1]


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")
    for asked in ("auto", "cuda"):
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert resolve_device(asked) == torch.device("cuda", 1)
        monkeypatch.setenv("LOCAL_RANK", "2")  # a third process on a two-GPU node
        with pytest.raises(QLungError, match="local rank 2, but torch sees 2 CUDA device"):
            resolve_device(asked)
    assert resolve_device("cpu") == torch.device("cpu")  # gloo on the CPU whatever the node holds


def test_bad_inputs(tiny: list[str], tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(QLungError, match="no CUDA device"):
            train(load_recipe("demo", [*tiny, "train.device=cuda"]), tmp_path / "cuda", progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "101_1b1_Al_sc_Meditron.txt").write_text("")
    with pytest.raises(QLungError):
        train(load_recipe("demo", [f"data.root={tmp_path / 'empty'}"]), tmp_path / "e", progress=False)
    # A checkpoint for another class list is refused.
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": 1, "config": load_recipe("demo").to_dict(), "classes": ["a", "b"], "weights": {}})
    with pytest.raises(QLungError, match="trained for classes"):
        model_from_checkpoint(load_checkpoint(path), path)
    from training.models import ASTConfig, QLungModel

    ast_weights = QLungModel("ast", ast=ASTConfig(embed_dim=32, depth=1, heads=2)).state_dict()
    save_checkpoint(
        path,
        {
            "format": 1,
            "config": load_recipe("demo").to_dict(),
            "classes": ["normal", "crackle", "wheeze", "both"],
            "weights": ast_weights,
        },
    )
    with pytest.raises(QLungError, match="weights do not fit an edge-cnn model"):
        model_from_checkpoint(load_checkpoint(path), path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(QLungError, match=r"junk\.pt: not a readable"):
        load_checkpoint(tmp_path / "junk.pt")


def test_a_full_disk_never_corrupts_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"format": 1, "weights": {"w": torch.ones(3)}})

    def full_disk(obj: object, f: object) -> None:
        Path(f).write_bytes(b"half")  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"format": 1, "weights": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["weights"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tiny: list[str], tmp_path: Path) -> None:
    # A transformer (no batch norm, no dropout) and no SpecAugment: the only difference is who computes what.
    common = [*tiny, "model.backbone=ast", "model.ast={embed_dim: 32, depth: 1, heads: 2}", "train.freq_mask=0"]
    common += ["train.time_mask=0", "train.epochs=1", "train.max_steps=4", "train.lr=1e-3", "train.device=cpu"]
    common += ["train.seed=0"]
    cli = ["-m", "qlung_edge.cli", "train", "--config", "demo"]
    one = subprocess.run(
        [sys.executable, *cli, "--out", str(tmp_path / "one"), *common, "train.batch_size=8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # Two seeds, compared on the first: the process group is joined once for both and ended before exit (a gloo
    # worker that exits with its group alive aborts at shutdown about one run in ten; joining again can hang).
    two = subprocess.run(
        [*launch, *cli, "--out", str(tmp_path / "two"), "--seeds", "0,1", *common, "train.batch_size=4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "seed0" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-4), key
    summary = json.loads((tmp_path / "two" / "seed0" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert json.loads((tmp_path / "two" / "seeds_summary.json").read_text())["seeds"] == [0, 1]
    assert summary["test"]["score"] == pytest.approx(
        json.loads((tmp_path / "one" / "summary.json").read_text())["test"]["score"]
    )


# --------------------------------------------------------------------------- training on the daemon's windows


def test_window_examples_are_the_daemons_windows_with_cached_front_end(synth_root: Path, tmp_path: Path) -> None:
    """Windows cut from whole recordings at the deployed hop, labelled by the shared rule; their cached log-mel
    frames (a slice of the recording's) equal the front end run on the window's samples, and a recording
    shorter than a window is one padded window."""
    import numpy as np
    import soundfile as sf

    from qlung_edge.windows import pad_segment, window_label
    from training.cycles import CycleAudioLoader
    from training.dataset import NO_LABEL, Geometry, prepare, recording_windows
    from training.datasets import scan_folder
    from training.frontend import KaldiFbank

    scan = scan_folder(synth_root / "sprsound", progress=False)
    geometry = Geometry("window", 4.0, 1.0)
    recording = max(scan.recordings, key=lambda r: r.duration or 0)
    windows = recording_windows(recording, geometry)
    assert [w.start for w in windows] == [float(i) for i in range(len(windows))]
    assert all(w.end - w.start == 4.0 for w in windows)
    for w in windows:
        expected = window_label(recording.cycles, w.start, w.end, unlabelled=recording.unlabelled)
        assert w.label == (NO_LABEL if expected is None else expected)
    prepared = prepare(windows, scan.recordings, tmp_path, geometry=geometry, progress=False)
    audio = CycleAudioLoader(scan.recordings).recording_audio(recording.id)
    frontend = KaldiFbank().eval()
    for i in (0, len(windows) - 1):
        start = int(windows[i].start * 16000)
        with torch.no_grad():
            direct = frontend(torch.from_numpy(np.array(audio[start : start + 64000]))[None])[0].numpy()
        np.testing.assert_allclose(prepared.inputs[i].astype(np.float32), direct, atol=5e-3)  # float16 storage
    clip = tmp_path / "short.wav"  # the first 2.5 s of the recording, as its own file
    sf.write(clip, audio[:40000], 16000, subtype="FLOAT")
    short = replace(recording, id="short", audio_path=clip, duration=2.5, cycles=[])
    (only,) = recording_windows(short, geometry)
    assert (only.start, only.end, only.label) == (0.0, 2.5, NO_LABEL)
    waves = prepare([only], [short], tmp_path, geometry=geometry, features=False, progress=False)
    np.testing.assert_allclose(waves.inputs[0], pad_segment(np.asarray(audio[:40000], np.float32), 64000), atol=1e-6)


def test_window_recipe_trains_calibrates_a_verdict_and_exports_its_geometry(
    synth_root: Path, tmp_path: Path, scripts_importable: Path
) -> None:
    import numpy as np

    from export.onnx_export import export_bundle
    from qlung_edge.bundle import load_bundle
    from qlung_edge.examination import VerdictRule

    data = f"data.root={synth_root / 'sprsound'}"
    windows = ["data.dataset=sprsound", "data.unit=window", "data.window_seconds=4.0", "data.hop_seconds=2.0"]
    from qlung_edge.classifier import SHIPPED_BUNDLE

    teacher = f"data.quality_teacher={SHIPPED_BUNDLE}"  # its window is 4 s too
    overrides = [data, *windows, f"data.cache_dir={tmp_path / 'cache'}", teacher, *TINY]
    summary = train(load_recipe("demo", overrides), tmp_path / "run", progress=False)
    assert summary["unit"] == "window" and summary["examples"]["train"] > 0
    margin = summary["margin_quality"]
    assert margin["source"] == "teacher" and 0.0 <= margin["mean"] <= 1.0
    assert margin["model_id"] == load_bundle(SHIPPED_BUNDLE).manifest["manifest_sha256"]
    assert 0.0 <= summary["test_cycles"]["score"] <= 1.0, "the same checkpoint scored on annotated events too"
    for task in ("task_2_1", "task_2_2"):
        assert 0.0 <= summary["test_records"][task]["score"] <= 1.0
        assert (tmp_path / "run" / f"records_{task}.png").exists()
    rule = VerdictRule(**summary["verdict_rule"])
    assert "validation patients" in rule.calibrated_on
    payload = load_checkpoint(tmp_path / "run" / "best.pt")
    assert payload["verdict"] == rule.to_dict() and payload["geometry"]["window_seconds"] == 4.0
    assert set(payload["metrics"]) >= {"validation", "test", "test_cycles", "test_records"}
    bundle = tmp_path / "bundle"
    export_bundle(tmp_path / "run" / "best.pt", bundle, log=lambda line: None)
    manifest = load_bundle(bundle).manifest
    assert (manifest["window_seconds"], manifest["window_samples"], manifest["hop_seconds"]) == (4.0, 64000, 2.0)
    assert VerdictRule.from_manifest(manifest) == rule and manifest["training_unit"] == "window"
    # The checkpoint and the bundle say which code trained them.
    from training.checkpoint import source_revision

    assert payload["source"] == manifest["source"] == source_revision()
    # The learned quality estimate is fitted on the training recordings and ships as the `poor` output.
    estimate = summary["quality_estimate"]
    assert 0.0 <= estimate["figures"]["cv_record_auroc"] <= 1.0 and estimate["figures"]["synthetic_windows"] > 0
    assert manifest["quality_estimate"]["threshold"] == estimate["threshold"]
    figures = estimate["figures"]
    assert figures["good_windows_refused"] <= figures["budget"] + 1e-9, "the whole gate keeps to its budget"
    assert manifest["quality"]["quiet_dbfs"] == estimate["quiet_dbfs"] == figures["quiet_dbfs"]
    assert manifest["quality_estimate"]["smoothing_windows"] == 5
    assert [o["name"] for o in manifest["outputs"]][-1] == "poor"
    from qlung_edge.backends import open_backend

    backend = open_backend(load_bundle(bundle))
    out = backend.run_all(np.load(bundle / "check_inputs.npz")["waveform"])
    assert out["poor"].shape == (len(out["probabilities"]),) and np.all((out["poor"] >= 0) & (out["poor"] <= 1))
    from click.testing import CliRunner

    from qlung_edge.cli import cli

    png = tmp_path / "q.png"
    arguments = ["quality-scan", str(synth_root / "sprsound"), "--bundle", str(bundle), "--png", str(png)]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert "record AUROC" in result.output and "good records' windows it refuses (pooled over" in result.output
    assert (tmp_path / "q-learned-test.png").exists()
    result = CliRunner().invoke(cli, [*arguments, "--json", str(tmp_path / "q.json")])
    learned = json.loads((tmp_path / "q.json").read_text())["learned"]
    splits_scanned = [k for k, v in learned.items() if isinstance(v, dict)]
    assert "test" in splits_scanned
    for split in splits_scanned:
        most = learned[split]["most_refused_good_records"]
        shares = [m["refused"] for m in most]
        assert shares == sorted(shares, reverse=True) and all(0 < s <= 1 for s in shares)
        assert bool(most) == (learned[split]["good_windows_refused"] > 0)
        assert (tmp_path / f"q-refused-{split}.png").exists() == bool(most)
    # The gate fitted again on the trained classifier, with another budget; the classifier is untouched.
    refit = tmp_path / "refit.pt"
    result = CliRunner().invoke(
        cli, ["fit-gate", str(tmp_path / "run" / "best.pt"), "--out", str(refit), "--budget", "0.1"]
    )
    assert result.exit_code == 0, result.output
    assert "good windows refused" in result.output
    again = load_checkpoint(refit)
    # The synthetic SPRSound recordings are numbered in order: the budget is lowered for the latest patients.
    refit_figures = again["quality_estimate"]["figures"]
    later = refit_figures["later"]
    assert refit_figures["budget_asked"] == 0.1 and later["patients"] >= 1 and later["later_budget"] == 0.05
    assert refit_figures["budget"] == min(0.1, later["budget_for_later"]) > 0
    assert f"budget {100 * refit_figures['budget']:.2f} %" in result.output
    assert "verdict rule calibrated again" in result.output and "test_records" in again["metrics"]
    assert VerdictRule(**again["verdict"]).calibrated_on == rule.calibrated_on
    assert again["quality_estimate"]["figures"]["good_windows_refused"] <= 0.1 + 1e-9
    before = load_checkpoint(tmp_path / "run" / "best.pt")["weights"]
    for name, value in again["weights"].items():
        if not name.startswith("quality_head."):
            assert torch.equal(value, before[name]), name
    # Only the real Poor Quality records as positives: no synthetic window is made, the budget still holds.
    real_only = tmp_path / "real-only.pt"
    arguments = ["fit-gate", str(tmp_path / "run" / "best.pt"), "--out", str(real_only), "--synthetic-windows", "0",
                 "--later-budget", "0"]  # fmt: skip
    assert CliRunner().invoke(cli, arguments).exit_code == 0
    figures = load_checkpoint(real_only)["quality_estimate"]["figures"]
    assert figures["later"] is None and figures["budget"] == figures["budget_asked"] == 0.03, "budget as given"
    assert figures["synthetic_windows"] == 0 and figures["synthetic_windows_caught"] is None
    assert figures["synthetic_kinds"] == {} and figures["good_windows_refused"] <= figures["budget"] + 1e-9
    # The share of good windows refused comes with its spread over resamples of the training patients.
    assert "central 95 % over patient resamples" in result.output
    low, high = again["quality_estimate"]["figures"]["good_windows_refused_patients_95"]
    assert 0.0 <= low <= again["quality_estimate"]["figures"]["good_windows_refused"] <= high <= 1.0
    # The verdict rule alone calibrated again: the model and gate untouched, the rule and its test figures new.
    shifted = dict(again, verdict=VerdictRule(das_threshold=0.95, cas_threshold=0.95).to_dict())
    save_checkpoint(tmp_path / "shifted.pt", shifted)
    result = CliRunner().invoke(
        cli, ["calibrate-verdict", str(tmp_path / "shifted.pt"), "--out", str(tmp_path / "v.pt")]
    )
    assert result.exit_code == 0, result.output
    recalibrated = load_checkpoint(tmp_path / "v.pt")
    assert recalibrated["verdict"] == again["verdict"] and "validation patients" in result.output
    assert recalibrated["metrics"]["test_records"] == again["metrics"]["test_records"]
    assert recalibrated["quality_estimate"] == again["quality_estimate"]
    assert all(torch.equal(v, again["weights"][k]) for k, v in recalibrated["weights"].items())
    # The same stream judged under the plain and the balanced calibration, without streaming it again.
    from qlung_edge.evalstream import eval_stream

    streamed = eval_stream(bundle, synth_root / "sprsound", progress=False, out_dir=tmp_path / "run" / "eval-stream")
    # The risk-coverage curves: ranked by the gate's P(poor), and by the classifier's confidence for reference;
    # windows.csv gives the same scored windows back.
    from qlung_edge.evalstream import read_table, risk_coverage, scored_rows

    by_quality, by_confidence = streamed["risk_coverage"], streamed["risk_coverage_confidence"]
    assert by_quality[0]["by"] == "P(poor)" and by_confidence[0]["by"] == "classifier confidence"
    assert {k: v for k, v in by_quality[0].items() if k != "by"} == {
        k: v for k, v in by_confidence[0].items() if k != "by"
    }
    again = scored_rows(read_table(tmp_path / "run" / "eval-stream" / "windows.csv"))
    assert len(again) == streamed["scored_windows"]
    assert risk_coverage(again, by_confidence=True)[0] == by_confidence[0]
    kept = risk_coverage(again, by_confidence=True)[-1]
    assert kept["windows"] == round(0.5 * len(again)) and kept["coverage"] == 0.5
    from verdict_transfer import transfer

    judged = transfer(tmp_path / "run", halvings=4)
    assert judged["shipped_rule_reproduced"] and "balanced" in judged["trained_rule_is"]
    for method in ("plain", "balanced", "balanced, best share"):
        assert 0.0 <= judged[method]["test_task_2_1"] <= 1.0 and judged[method]["halvings"] <= 4
    assert judged["balanced, best share"]["rule"]["calibrated_on"].endswith("share scoring best here")
    normal = [v["task_2_1"] == "Poor Quality" for v in streamed["verdicts"] if v["truth"] == "Normal"]
    assert normal, "the synthetic test split has normal records"
    assert judged["balanced"]["test_normal_called_poor"] == pytest.approx(sum(normal) / len(normal))
    (tmp_path / "run" / "verdict_transfer.json").write_text(json.dumps(judged))
    # Windows pooled with their neighbours: unpooled, the figures are the stream's and the training run's own.
    from window_smoothing import measure

    pooled = measure(tmp_path / "run")
    assert pooled["test"]["plain"] == pytest.approx(streamed["accepted"]["score"])
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert pooled["validation"]["plain"] == pytest.approx(trained["validation"]["score"], nan_ok=True)
    (tmp_path / "run" / "window_smoothing.json").write_text(json.dumps(pooled))
    # Rules fixed in advance: untouched, the windows score as the run scored them offline.
    from window_rules import measure as rules

    ruled = rules(tmp_path / "run")
    assert ruled["training_class_counts"] == list(trained["class_counts_train"].values())  # normal, crackle, ...
    for split in ("validation", "test"):
        assert ruled[split]["plain"]["score"] == pytest.approx(trained[split]["score"], nan_ok=True)
        assert set(ruled[split]) >= {"prior x 1", "1 s segments, most abnormal", "2 s segments, mean"}
    (tmp_path / "run" / "window_rules.json").write_text(json.dumps(ruled))
    # The window - cycle gap: its two ends are the run's own offline figures.
    from window_gap import measure as window_gap

    gapped = window_gap(tmp_path / "run")
    for got, own in ((gapped["test"]["window_score"], trained["test"]["score"]),
                     (gapped["test"]["cycle_score"], trained["test_cycles"]["score"]),
                     (gapped["validation"]["window_score"], trained["validation"]["score"])):  # fmt: skip
        assert got == pytest.approx(own) if got is not None else np.isnan(own)  # None where undefined
    for unit, own in (("window", trained["test"]["recall"]), ("cycle", trained["test_cycles"]["recall"])):
        assert gapped["test"][f"{unit}_recall"] == pytest.approx({k: own[k] for k in gapped["test"][f"{unit}_recall"]})
    # The windows composed from their events' cycle-level calls are scored against the same cycle level.
    scored = [g for g in (gapped[split] for split in ("train", "validation", "test"))
              if None not in (g["composed_score"], g["cycle_score"])]  # fmt: skip
    assert scored  # at least one group of the tiny run's patients has both normal and abnormal items
    for g in scored:
        assert 0.0 <= g["composed_score"] <= 1.0
        assert g["composed_gap"] == pytest.approx(g["composed_score"] - g["cycle_score"])
    (tmp_path / "run" / "window_gap.json").write_text(json.dumps(gapped))
    # The annotated edges: the cycle level and its composed windows are window_gap's; the crop scan's ends too.
    from crop_scan import measure as crop_scan
    from event_edges import measure as event_edges

    def same(got: float, own: float | None) -> bool:  # window_gap writes None where the patients leave it undefined
        return bool(np.isnan(got)) if own is None else got == pytest.approx(own, nan_ok=True)

    edged, scanned = event_edges(tmp_path / "run"), crop_scan(tmp_path / "run")
    for split in ("validation", "test"):
        assert same(edged[split]["cycle_score"], gapped[split]["cycle_score"])
        assert same(scanned[split]["cycle_score"], gapped[split]["cycle_score"])
        assert same(edged[split]["composed_window_score"], gapped[split]["composed_score"])
        assert same(scanned[split]["window"]["score"], trained[split]["score"])
        assert set(edged[split]["centred_cuts"]) == {"0.5", "1", "2", "4"}  # and the window's own 4 s
        assert same(edged[split]["window_score"], trained[split]["score"])
        assert scanned[split]["crops"] >= scanned[split]["windows"] > 0
    # Each annotated event repeated to fill the input is what the cycle level scores: the same calls, class by class.
    from event_context import call_events
    from event_context import measure as event_context

    from training.dataset import ExampleDataset
    from training.engine import examples_of, geometry_of, load_trained, predict
    from training.verdicts import preparer

    _, model, config, splits = load_trained(tmp_path / "run" / "best.pt", progress=False)
    cycle = geometry_of(config, "cycle")
    # The gap on the training patients too: every window and cycle of theirs, none of the other patients'.
    fitted = gapped["train"]
    trained_windows = examples_of(splits.recordings["train"], geometry_of(config, "window"))
    assert fitted["windows"] == len(trained_windows)
    # Every abnormal window overlaps its events, so each falls in one bin of how much of it they fill.
    binned = fitted["window_recall_by_coverage"].values()
    assert sum(b["windows"] for b in binned) == sum(w.label > 0 for w in trained_windows) > 0
    assert fitted["cycles"] == len(examples_of(splits.recordings["train"], cycle)) > 0
    assert fitted["gap"] == pytest.approx(fitted["window_score"] - fitted["cycle_score"])
    # The last epoch's figures come from last.pt: one whose head gives every class the same logit calls every item
    # normal (Score 0.5 at both levels), while the best epoch's figures stay the run's own.
    flat = tmp_path / "flat-last-epoch"
    flat.mkdir()
    (flat / "best.pt").symlink_to(tmp_path / "run" / "best.pt")
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    payload["weights"]["head.weight"][:] = payload["weights"]["head.weight"][0]
    save_checkpoint(flat / "last.pt", payload)
    flattened = window_gap(flat)
    assert flattened["test"]["last_epoch"] == {"window_score": 0.5, "cycle_score": 0.5, "gap": 0.0}
    assert flattened["test"]["window_score"] == gapped["test"]["window_score"] != 0.5
    events = [c for c in examples_of(splits.recordings["test"], cycle)
              if c.label > 0 and round(c.end * 16000) - round(c.start * 16000) <= cycle.samples]  # fmt: skip
    on_cycles = predict(model, ExampleDataset(preparer(config, splits, False)(events, cycle, "events")),
                        torch.device("cpu"), 64)  # fmt: skip
    called = call_events(tmp_path / "run")["test"]
    assert len(events) > 0 and called.labels.tolist() == [c.label for c in events]
    # Same inputs, same log-mel path: equal but for float noise. The synthetic model is nearly sure of every event,
    # so the other surroundings move its probabilities by only about 1e-5: the tolerance stays well below that.
    np.testing.assert_allclose(called.probabilities["repeated"], on_cycles, rtol=0, atol=2e-6)
    assert np.abs(called.probabilities["once_over_silence"] - on_cycles).max() > 4e-6
    context = event_context(tmp_path / "run")
    truth, calls = called.labels, on_cycles.argmax(axis=1)
    repeated = context["test"]["repeated"]["own_class_by_class"]
    assert repeated == pytest.approx({CLASS_NAMES[k]: np.mean(calls[truth == k] == k) for k in np.unique(truth)})
    (tmp_path / "run" / "event_context.json").write_text(json.dumps(context))
    # Two seeds that are the same model: their ensemble decides as each of them does, and RESULTS.md says so.
    import results
    from seed_ensemble import ensemble

    group = tmp_path / "group"
    group.mkdir()
    for seed in (0, 1):
        (group / f"seed{seed}").symlink_to(tmp_path / "run", target_is_directory=True)
    together = ensemble(group)
    assert together["seeds"] == [0, 1] and together["members"][0]["rule"] == together["ensemble"]["rule"]
    for task in ("task_2_1", "task_2_2"):
        assert together["ensemble"][task] == together["members"][1][task]
    text = results.render({"demo": results.load_group(group)}, "python scripts/results.py", {"demo": together})
    alone = 100 * together["members"][0]["task_2_1"]["score"]
    assert f"Task 2-1 Score: demo {alone:.2f} (its 2 seeds alone {alone:.2f} ± 0.00)" in text
    gain = 100 * (ruled["test"]["prior x 1"]["score"] - ruled["test"]["plain"]["score"])
    label = f"test patients, window level (offline), {results.WINDOW_RULES['prior x 1']}, minus the plain argmax"
    assert f"| {label} (points) | {gain:.2f} ± 0.00 |" in text
    gap_label = "| test patients, window level minus cycle level (offline, points) |"
    if gapped["test"]["gap"] is not None:
        assert f"{gap_label} {100 * gapped['test']['gap']:.2f}" in text
    else:  # undefined on these patients: no row of NaN
        assert gap_label not in text
    records = streamed["records"]["task_2_1"]
    called_poor = 100 * records["confusion"][0][2] / sum(records["confusion"][0])
    assert f"| deployed, record level, % of normal records called Poor Quality | {called_poor:.2f} ± 0.00 |" in text
    assert "minus the share scoring best on validation, Task 2-1 Score, same streams: demo" in text
    # Per-class recall read off windows.csv: the normal windows' recall is the stream's window-level SP.
    normal_recall = 100 * streamed["accepted"]["specificity"]
    assert f"| deployed, window level, recall of accepted normal windows | {normal_recall:.2f} ± 0.00 |" in text
    causal = 100 * pooled["test"]["causal, 2 windows"]
    assert f"| deployed, window level, accepted windows, each pooled with the window before it | {causal:.2f} ±" in text
    quoted = [name for name in repeated if name in ("crackle", "wheeze")]
    assert quoted, "the synthetic test patients have crackles or wheezes"
    for name in quoted:
        label = f"test patients, % of {name} events called {name}, repeated to fill the input"
        assert f"| {label} (as the cycle level scores it) (offline) | {100 * repeated[name]:.2f} ± 0.00 |" in text
    loaded = results.load_group(group)
    # The reports kept in the repository (windows.csv gzipped, no checkpoints) give the same figures.
    from archive_runs import archive_seed

    for seed in (0, 1):
        kept = archive_seed(group / f"seed{seed}", tmp_path / "kept")
        assert not list(kept.glob("*.pt")) and (kept / "eval-stream" / "windows.csv.gz").is_file()
    assert results.render({"demo": results.load_group(tmp_path / "kept" / "group")}, "cmd") == results.render(
        {"demo": loaded}, "cmd"
    )
    with pytest.raises(FileNotFoundError, match="no eval-stream"):
        archive_seed(tmp_path / "group-without-stream" / "seed0", tmp_path / "kept")
    paired = results.render({"a": loaded, "b": loaded, "c": loaded}, "cmd", pairs=[("b", "c")])
    assert "Paired per-seed differences, b − c" in paired and "differences, a − b" not in paired
    with pytest.raises(SystemExit, match="no group called d"):
        results.render({"a": loaded}, "cmd", pairs=[("a", "d")])


def test_a_quality_teacher_scores_examples_as_the_whole_window_graph_does(
    synth_root: Path, bundle: Path, tmp_path: Path
) -> None:
    """Cached log-mel through network.onnx gives the P(poor) of the waveform through model.onnx; a bundle
    without an estimate, or with another window, is refused by name."""
    import numpy as np

    from qlung_edge.classifier import SHIPPED_BUNDLE
    from qlung_edge.onnx_sessions import onnx_session, run_onnx
    from training.dataset import prepare
    from training.quality_teacher import teacher_quality

    base = [f"data.root={synth_root / 'sprsound'}", "data.dataset=sprsound", "data.unit=window"]
    splits = load_splits(load_recipe("demo", [*base, "data.window_seconds=4.0", "data.hop_seconds=2.0"]), False)
    examples = splits.train[:24]
    recordings = splits.scan.recordings
    frames = prepare(examples, recordings, tmp_path, geometry=splits.geometry, features=True, progress=False)
    waves = prepare(examples, recordings, tmp_path, geometry=splits.geometry, features=False, progress=False)
    scored = teacher_quality(SHIPPED_BUNDLE, frames)
    assert scored.graph == "network.onnx" and scored.quality.shape == (len(examples),)
    poor = run_onnx(onnx_session(SHIPPED_BUNDLE / "model.onnx"), waves.inputs)["poor"]
    np.testing.assert_allclose(scored.quality, 1.0 - poor, atol=2e-3)
    assert scored.quality.std() > 0, "a constant would make the margin the paper's fixed one"
    with pytest.raises(QLungError, match="no `poor` output") as err:
        teacher_quality(bundle, waves)
    assert str(bundle) in str(err.value)
    eight = load_splits(load_recipe("demo", [*base, "data.window_seconds=8.0"]), False)
    longer = prepare(eight.train[:2], recordings, tmp_path, geometry=eight.geometry, features=True, progress=False)
    with pytest.raises(QLungError, match="window length or front end differ"):
        teacher_quality(SHIPPED_BUNDLE, longer)


def test_a_mixed_recipe_trains_on_cycles_and_windows_and_is_judged_on_windows(synth_root: Path) -> None:
    base = [f"data.root={synth_root / 'sprsound'}", "data.dataset=sprsound", "data.window_seconds=4.0"]
    mixed = load_splits(load_recipe("demo", [*base, "data.unit=mixed"]), progress=False)
    cycles = load_splits(load_recipe("demo", [*base, "data.unit=cycle"]), progress=False)
    windows = load_splits(load_recipe("demo", [*base, "data.unit=window"]), progress=False)
    assert [g.unit for g, _ in mixed.train_parts] == ["cycle", "window"]
    assert len(mixed.train) == len(cycles.train) + len(windows.train)
    assert mixed.validation == windows.validation and mixed.test == windows.test


def test_event_mixing_lays_cycles_over_the_training_batches(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.event_mix mixes the run's own annotated cycles into its batches, whether it trains on them or not."""
    import training.engine as engine
    from training.augment import EventMixer, Mixed

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    made: list[EventMixer] = []

    class Recording(EventMixer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def mix(self, inputs: torch.Tensor, labels: torch.Tensor) -> Mixed:
            mixed = super().mix(inputs, labels)
            seen.append((labels, mixed.labels))
            return mixed

    monkeypatch.setattr(engine, "EventMixer", Recording)
    base = [f"data.root={synth_root / 'sprsound'}", "data.dataset=sprsound", "data.window_seconds=4.0",
            "train.epochs=1", "train.max_steps=2", "train.event_mix=1.0", "data.quality_estimate=false"]  # fmt: skip
    train(load_recipe("demo", [*base, "data.unit=mixed"]), tmp_path / "mixed", progress=False)
    assert len(seen) == 2
    before, after = (torch.cat(part) for part in zip(*seen))
    assert (after > 0).all(), "every example mixed with a crackle or a wheeze is adventitious"
    assert (after >= before).all() and (after != before).any()
    # A window-only recipe mixes in its training patients' cycles without training on them alone.
    seen.clear()
    summary = train(load_recipe("demo", [*base, "data.unit=window"]), tmp_path / "windows", progress=False)
    assert summary["unit"] == "window" and len(seen) == 2
    before, after = (torch.cat(part) for part in zip(*seen))
    assert (after > 0).all() and (after != before).any()
    # At the events' own length: each donor's fraction of the window is its annotated event's length.
    seen.clear()
    made.clear()
    own = load_recipe("demo", [*base, "data.unit=mixed", "train.event_mix_length=event"])
    train(own, tmp_path / "own", progress=False)
    (mixer,) = made
    assert mixer.config.length == "event" and len(seen) == 2
    cycles = engine.examples_of(load_splits(own, progress=False).recordings["train"], engine.geometry_of(own, "cycle"))
    expected = np.clip([(c.end - c.start) / 4.0 for c in cycles], 0, 1)
    assert np.allclose(np.sort(mixer.fractions), np.sort(expected)) and expected.min() < 1


def test_the_source_revision_is_the_checkout_s_commit_or_nothing(tmp_path: Path) -> None:
    import subprocess

    from training.checkpoint import source_revision

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode == 0:
        found = source_revision(repo)
        assert found is not None and found["commit"] == head.stdout.strip() and isinstance(found["dirty"], bool)
    assert source_revision(tmp_path) is None, "not a git checkout: nothing claimed"
