"""Bundles: ONNX export with parity and op audit, INT8, manifest verification, and the TensorRT logic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import make_checkpoint as _checkpoint
from onnx import TensorProto, helper

from export import onnx_export
from export.onnx_export import ExportError, export_bundle
from export.ops import audit_model
from qlung_edge.bundle import (
    CHECK_FILE,
    FRONTEND_FFT_FILE,
    FRONTEND_FILE,
    INT8_FILE,
    MANIFEST,
    MODEL_FILE,
    NETWORK_FILE,
    NETWORK_INT8_FILE,
    BundleError,
    load_bundle,
)
from qlung_edge.onnx_sessions import onnx_session, run_onnx


def test_bundle_has_everything_the_device_needs(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    m = loaded.manifest
    pieces = {FRONTEND_FILE, FRONTEND_FFT_FILE, NETWORK_FILE, NETWORK_INT8_FILE}
    assert set(m["files"]) == {MODEL_FILE, INT8_FILE, CHECK_FILE, *pieces}
    assert m["classes"] == ["normal", "crackle", "wheeze", "both"] and m["sample_rate"] == 16000
    assert m["window_samples"] == 128000 and m["opset"] == 17
    assert [o["name"] for o in m["outputs"]] == ["logits", "probabilities", "embedding"]
    assert m["quality"]["alpha"] == 0.7 and "min_aqs" in m["quality"]
    assert {"torch", "onnx", "onnxruntime", "qlung_edge"} <= set(m["versions"])
    model = onnx.load(str(bundle / MODEL_FILE))
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 128000]
    assert not {"STFT", "DFT"} & {n.op_type for n in model.graph.node}  # the front end is inside, as a Conv


def test_onnx_matches_torch_on_synthetic_and_real_icbhi(bundle: Path, checkpoint: Path, shared_data: Path) -> None:
    parity = load_bundle(bundle).manifest["parity"]
    assert parity["one_by_one"]["windows"] == 14  # 4 synthetic + the ten real recordings
    for run in ("one_by_one", "batched"):
        assert parity[run]["max_abs_probabilities"] <= 1e-4 and parity[run]["argmax_identical"]
    # Independently of the stored figures: run both again on the real recordings.
    from training.checkpoint import load_model

    model, _, _ = load_model(checkpoint)
    windows, _ = onnx_export.recording_windows(shared_data / "icbhi-sample")
    ours = run_onnx(onnx_session(bundle / MODEL_FILE), windows, batch=3)
    reference = onnx_export.torch_outputs(model, windows)
    assert np.abs(ours["probabilities"] - reference["probabilities"]).max() <= 1e-4
    assert (ours["probabilities"].argmax(1) == reference["probabilities"].argmax(1)).all()
    checks = np.load(bundle / CHECK_FILE)
    assert checks["waveform"].shape[1] == 128000 and len(checks["probabilities"]) == len(checks["waveform"])


def test_every_exported_model_passes_the_tensorrt_op_audit(bundle: Path) -> None:
    for name in (MODEL_FILE, INT8_FILE):
        audit = audit_model(onnx.load(str(bundle / name)))
        assert audit.ok, audit.problems
    int8_ops = audit_model(onnx.load(str(bundle / INT8_FILE))).ops
    assert int8_ops.get("QuantizeLinear", 0) > 0 and int8_ops.get("DequantizeLinear", 0) > 0


def _graph(op: str, inputs: list[str], out_type: int = TensorProto.FLOAT, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])
    y = helper.make_tensor_value_info("y", out_type, None)
    consts = [helper.make_tensor(name, TensorProto.INT64, [], [256]) for name in inputs[1:]]
    node = helper.make_node(op, inputs, ["y"], name=f"{op.lower()}0")
    return helper.make_model(
        helper.make_graph([node], "g", [x], [y], initializer=consts), opset_imports=[helper.make_opsetid("", opset)]
    )


def test_int8_model_is_judged_against_fp32(bundle: Path) -> None:
    info = load_bundle(bundle).manifest["int8"]
    for precision in ("fp32", "int8"):
        assert 0.0 <= info[precision]["score"] <= 1.0 and info[precision]["latency_ms_1_thread"] > 0
    assert info["held_out_cycles"] > 0 and info["calibration_windows"] > 0 and info["excluded_front_end_nodes"] > 0
    assert info["int8"]["bytes"] < info["fp32"]["bytes"]
    checks = np.load(bundle / CHECK_FILE)
    fp32 = run_onnx(onnx_session(bundle / MODEL_FILE), checks["waveform"])["probabilities"]
    int8 = run_onnx(onnx_session(bundle / INT8_FILE), checks["waveform"])["probabilities"]
    assert np.isfinite(int8).all() and np.allclose(int8.sum(1), 1.0, atol=1e-4)
    assert np.abs(int8 - fp32).max() < 0.5  # quantized, not broken: the front end stayed float


def test_a_tampered_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    def fresh() -> Path:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundle, copy)
        return copy

    copy = fresh()
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: altered or damaged"):
        load_bundle(copy)

    copy = fresh()
    (copy / INT8_FILE).unlink()
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: listed in the manifest but missing"):
        load_bundle(copy)

    copy = fresh()
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["quality"]["min_aqs"] = 0.99
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest was altered"):
        load_bundle(copy)

    copy = fresh()
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format"] = 99
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 99"):
        load_bundle(copy)

    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_existing_folder_needs_force_and_a_failed_export_leaves_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(checkpoint, out, log=lambda _: None)

    def broken(reference: dict, candidate: dict) -> dict:  # an exporter bug: ORT disagrees with torch
        result = compare(reference, candidate)
        return {**result, "max_abs_probabilities": 0.3}

    compare = onnx_export.compare
    monkeypatch.setattr(onnx_export, "compare", broken)
    with pytest.raises(ExportError, match="differs from torch"):
        export_bundle(checkpoint, out, force=True, log=lambda _: None)
    assert (out / "keep.txt").read_text() == "previous"  # the old folder survives a failed --force
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    monkeypatch.setattr(onnx_export, "compare", compare)
    export_bundle(checkpoint, out, force=True, log=lambda _: None)
    assert not (out / "keep.txt").exists() and load_bundle(out).has(MODEL_FILE)


def test_cli_export_and_its_errors(checkpoint: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qlung_edge.cli", "export", *args], capture_output=True, text=True, timeout=300
        )

    ok = run(str(checkpoint), "--out", str(tmp_path / "b"))
    assert ok.returncode == 0, ok.stderr
    assert "op audit" in ok.stdout and "parity on 4 windows" in ok.stdout and "argmax identical: True" in ok.stdout
    again = run(str(checkpoint), "--out", str(tmp_path / "b"))
    assert again.returncode == 2 and "already exists (use --force" in again.stderr

    foreign = tmp_path / "foreign.pt"
    payload = torch.load(_checkpoint(tmp_path / "ast.pt", "ast"), weights_only=True)
    payload["config"]["model"]["backbone"] = "edge-cnn"  # claims edge-cnn, holds AST weights
    torch.save(payload, foreign)
    wrong = run(str(foreign), "--out", str(tmp_path / "w"))
    assert wrong.returncode == 2 and "weights do not fit an edge-cnn model" in wrong.stderr
    assert not (tmp_path / "w").exists()
    folder = run(str(tmp_path / "b"))
    assert folder.returncode == 2 and "--trt" in folder.stderr


def test_a_recipe_s_edge_settings_travel_in_the_manifest(tmp_path: Path) -> None:
    from qlung_edge.bench import _torch_model
    from training.checkpoint import build_model, checkpoint_payload, save_checkpoint
    from training.config import load_recipe

    torch.manual_seed(0)
    config = load_recipe("demo", ["model.edge={time_stride: 32}"])
    weights = build_model(config).eval().state_dict()
    metrics = {"validation": {"score": 0.5}}
    save_checkpoint(tmp_path / "fine.pt", checkpoint_payload(config, weights, epoch=1, metrics=metrics, selection="v"))
    manifest = export_bundle(tmp_path / "fine.pt", tmp_path / "bundle", log=lambda line: None)
    assert manifest["model"]["edge"] == {"time_stride": 32}
    # The bench's torch-eager twin of the bundle is the same network, not the default edge-cnn.
    assert _torch_model(load_bundle(tmp_path / "bundle")).backbone.config.time_stride == 32
