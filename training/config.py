"""Training recipes: YAML files read into typed dataclasses, strictly.

A misspelt key or a value of the wrong type is an error that names the key, never a silently ignored
setting. Command-line overrides use dotted keys: `train.epochs=3 loss.lam=0.2`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qlung_edge.config import from_dict
from qlung_edge.errors import ConfigError
from qlung_edge.quality import QualityConfig
from training.augment import EVENT_LENGTHS
from training.losses import QLungLossConfig

RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "icbhi"
    """'icbhi' or 'sprsound'."""
    root: str = ""
    test_split: str = "test"
    selection: str = "validation"
    """'validation': pick the best epoch on patients held out of training (default); 'test-set': pick it on
    the test set, as much of the field does (optimistic; the run says so)."""
    validation_fraction: float = 0.2
    validation_seed: int = 0
    cache_dir: str = ".cache/qlung"
    event_mapping: dict[str, Any] = field(default_factory=dict)
    """SPRSound event types to class indices (or null), on top of the default mapping."""
    unit: str = "cycle"
    """'cycle': each annotated cycle/event padded to `window_seconds` (the ICBHI protocol of the paper);
    'window': the daemon's windows, cut from whole recordings every `hop_seconds` and labelled by the events
    they overlap (qlung_edge.windows) — what the device sees; 'mixed': trained on both, chosen and tested on
    windows."""
    window_seconds: float = 8.0
    """The model's input length: the bundle records it and the daemon cuts windows of it."""
    hop_seconds: float = 1.0
    """Between windows, in training (unit=window) and in the daemon (the bundle records it)."""
    quality_estimate: bool = True
    """Where records carry "Poor Quality" labels (SPRSound), fit the learned quality estimate on the model's
    embedding after training (training.quality_model) and ship it as the bundle's `poor` output."""
    quality_teacher: str = ""
    """A bundle with a learned quality estimate: QLung's quality margin then uses 1 - P(poor) from it for each
    training example instead of AQS (training.quality_teacher). Empty: the AQS of `quality`."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "edge-cnn"
    pretrained: str = ""
    """Local AST/DeiT checkpoint for the ast backbone; nothing is downloaded."""
    ast: dict[str, Any] = field(default_factory=dict)
    """ASTConfig overrides (embed_dim, depth, heads) for smaller transformers."""
    edge: dict[str, Any] = field(default_factory=dict)
    """EdgeCNNConfig overrides (stem_channels, stem_kernel, stem_stride, embed_dim, time_stride, pooling,
    local_steps, subtract_window_mean)."""
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.edge_config()  # a bad edge key or value is named when the recipe loads, not after data preparation

    def edge_config(self) -> Any:
        """The recipe's `training.models.EdgeCNNConfig`, its keys and values checked like the recipe's own."""
        from training.models import EdgeCNNConfig

        return from_dict(EdgeCNNConfig, {"dropout": self.dropout, **self.edge}, "model.edge")


SELECTION_FIGURES = ("score", "balanced score")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 8
    """Per process: the global batch is this times the number of processes."""
    lr: float = 5e-5
    weight_decay: float = 1e-6
    ema: float = 0.5
    """Per-iteration weight EMA factor: ema = ema * factor + weights * (1 - factor); 0 turns it off. The batch
    norm statistics are averaged alongside, which only approximates the statistics of the averaged weights: on
    edge-cnn trained from scratch, 0.99 left validation sensitivity near 0 where the raw weights reached 34 %.
    `bn_recalibration_batches` recomputes them for the averaged weights."""
    grad_clip: float = 1.0
    bn_recalibration_batches: int = 0
    """Before each validation, recompute the evaluated weights' batch-norm statistics on this many training
    batches (per process under torchrun), drawn, mixed and augmented as in training (training.batch_norm); 0: keep
    the running averages. Costs about a third of a training step per batch. The weights train as without it (the
    random draws are put back); with `ema` 0 the evaluated model is the trained one, whose running statistics are
    then the recomputed ones, which training in train mode does not read."""
    freq_mask: int = 24
    time_mask: int = 96
    amp: bool = True
    """Mixed precision on CUDA (bfloat16 where supported); ignored on CPU."""
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    threads: int = 0
    """Torch CPU threads; 0 leaves torch's default."""
    max_steps: int = 0
    """Stop after this many optimiser steps in total (0: no limit); for smoke tests."""
    event_mix: float = 0.0
    """Share of training examples with an annotated crackle or wheeze (a cycle of the training patients) laid
    over them, labelled by both sounds (training.augment); a window-only recipe (unit: window) draws them from its
    training patients' annotated cycles without training on those alone. 0: off."""
    event_mix_length: str = "drawn"
    """How long a laid event lasts (training.augment.EventMixConfig.length): "drawn", 25-100 % of the input,
    the event repeated to fill it; "event", the event's own annotated length, once."""
    cache_features: bool = True
    """Train on log-mel frames computed once and cached (float16), not on waveforms through the front end each
    epoch: the same numbers up to float16 rounding of the input, several times faster on a CPU."""
    event_removal: float = 0.0
    """Share of abnormal training windows (those with at least a second outside their events) whose annotated
    crackles and wheezes are replaced with the window's own breathing outside them and relabelled normal
    (training.augment.remove_events), so that only the event tells a window's class. Needs cached log-mel
    (cache_features). 0: off."""
    event_timing: float = 0.0
    """Weight of a second loss: a per-step crackle and wheeze detector on edge-cnn's time steps, trained on when
    the annotated events (and the events mixing lays) happen in each input (training.timing); never exported.
    Meant for event-level annotations (SPRSound's); ICBHI's cycles tile the recording, so every frame of a crackle
    cycle counts as crackle. Frames SpecAugment's time mask blanks are left out of this loss. 0: off."""
    select_on: str = "score"
    """The validation figure that picks the best epoch: "score", ICBHI's (Sp + Se) / 2 with Se over all abnormal
    examples; "balanced score", Se the mean recall of each abnormal class present, so that a class the validation
    patients hold few of (wheezes) weighs as much as a common one (training.metrics.balanced_score)."""

    def __post_init__(self) -> None:
        if self.select_on not in SELECTION_FIGURES:
            raise ValueError(f"train.select_on must be {' or '.join(SELECTION_FIGURES)}, got {self.select_on!r}")
        if self.event_timing < 0:
            raise ValueError(f"train.event_timing must be 0 or more, got {self.event_timing}")
        if not 0.0 <= self.event_removal <= 1.0:
            raise ValueError(f"train.event_removal must lie in [0, 1], got {self.event_removal}")
        if self.event_removal > 0 and not self.cache_features:
            raise ValueError("train.event_removal works on cached log-mel frames: it needs train.cache_features")
        if self.bn_recalibration_batches < 0:
            raise ValueError(f"train.bn_recalibration_batches must be 0 or more, got {self.bn_recalibration_batches}")
        if self.event_mix_length not in EVENT_LENGTHS:
            raise ValueError(
                f"train.event_mix_length must be {' or '.join(EVENT_LENGTHS)}, got {self.event_mix_length!r}"
            )


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: QLungLossConfig = field(default_factory=QLungLossConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.event_timing > 0 and self.model.backbone != "edge-cnn":
            raise ValueError(f"train.event_timing needs the edge-cnn backbone, got {self.model.backbone!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=c` pairs into a nested dict; the value is read as YAML (numbers, booleans, lists)."""
    out = dict(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = _scalar(yaml.safe_load(raw))
    return out


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 as a string; on the command line it means a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A recipe by path, or by name from training/recipes/."""
    path = Path(path)
    if not path.exists() and (RECIPES / f"{path.name}.yaml").exists():
        path = RECIPES / f"{path.name}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise ConfigError(f"no such recipe (shipped recipes: {names})", path=path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({err})", path=path) from None
    try:
        return from_dict(RunConfig, apply_overrides(values, overrides or []))
    except ConfigError as err:
        raise ConfigError(str(err), path=path) from None
