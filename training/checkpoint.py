"""The checkpoint format: what a training run saves, and the one way to read it back into a model.

Checkpoints hold tensors and plain values only, are written to a temporary file and renamed (a full disk or a
crash never leaves half a checkpoint), and are read with `torch.load(weights_only=True)`, never as pickles.
Training, evaluation, export, the torch backend and the tests all come through here.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from qlung_edge import CLASS_NAMES
from qlung_edge.config import from_dict
from qlung_edge.errors import QLungError
from training.config import RunConfig
from training.frontend import SpecAugment
from training.models import ASTConfig, QLungModel, load_pretrained

CHECKPOINT_FORMAT = 1


def build_model(config: RunConfig, *, training: bool = True) -> QLungModel:
    """The model a recipe describes; `training` adds SpecAugment and loads the recipe's pretrained weights."""
    cfg = config.model
    model = QLungModel(
        cfg.backbone,
        head=config.loss.head,
        scale=config.loss.s_a,
        edge=cfg.edge_config(),
        ast=ASTConfig(**cfg.ast) if cfg.ast else None,
        spec_augment=SpecAugment(config.train.freq_mask, config.train.time_mask) if training else None,
        step_detector=config.train.event_timing > 0,
    )
    if training and cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return model


def source_revision(folder: Path | None = None) -> dict[str, Any] | None:
    """The git commit the code was run from and whether tracked files differed from it: without it a checkpoint
    cannot say which code trained it (the shipped model came from a working tree that no commit reproduces). None
    outside a git checkout or without git. Asked once per process and folder."""
    found = _revision(str(folder or Path(__file__).resolve().parent))
    return None if found is None else {"commit": found[0], "dirty": found[1]}


@functools.lru_cache(maxsize=None)
def _revision(folder: str) -> tuple[str, bool] | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()  # fmt: skip

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None


def checkpoint_payload(
    config: RunConfig,
    weights: dict[str, torch.Tensor],
    *,
    epoch: int,
    metrics: dict[str, Any],
    selection: str,
) -> dict[str, Any]:
    """What `best.pt` holds: the weights the run selected, its recipe, classes, AQS options and metrics."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "classes": list(CLASS_NAMES),
        "quality": config.quality.to_dict(),
        "weights": weights,
        "epoch": epoch,
        "metrics": metrics,
        "selection": selection,
        "source": source_revision(),
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file and rename: a full disk or a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise QLungError("checkpoint does not exist", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for damaged or foreign files
        raise QLungError(f"not a readable qlung-edge checkpoint ({err})", path=path) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise QLungError(f"not a qlung-edge checkpoint (format {CHECKPOINT_FORMAT} expected)", path=path)
    return payload


def model_from_checkpoint(payload: dict[str, Any], path: str | Path = "checkpoint") -> tuple[QLungModel, RunConfig]:
    """The EMA (or plain) model a checkpoint holds, checked against its own recipe and class list."""
    config = from_dict(RunConfig, payload["config"])
    if tuple(payload["classes"]) != CLASS_NAMES:
        raise QLungError(f"trained for classes {payload['classes']}, this toolkit uses {list(CLASS_NAMES)}", path=path)
    model = build_model(config, training=False)
    if any(k.startswith("quality_head.") for k in payload["weights"]):
        model.attach_quality_head()
    try:
        model.load_state_dict(payload["weights"])
    except RuntimeError as err:
        raise QLungError(f"weights do not fit an {config.model.backbone} model ({str(err)[:200]})", path=path) from None
    return model.eval(), config


def load_model(path: str | Path) -> tuple[QLungModel, RunConfig, dict[str, Any]]:
    """Model, recipe and the whole payload of the checkpoint at `path`."""
    payload = load_checkpoint(path)
    model, config = model_from_checkpoint(payload, path)
    return model, config, payload
