"""The training loop: data splits, model, QLung loss, Adam + cosine decay, weight EMA, checkpoints, DDP.

One process or many: under `torchrun` each process trains on its shard of every global batch through
DistributedDataParallel (gloo on CPU, nccl on CUDA), evaluation shards are gathered before metrics, and only
rank 0 writes logs and checkpoints. Checkpoints hold tensors and plain values only and are read back with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from qlung_edge import CLASS_NAMES
from qlung_edge.batches import in_batches
from qlung_edge.config import from_dict
from qlung_edge.errors import QLungError
from qlung_edge.examination import VerdictRule
from training.augment import EventMixConfig, EventMixer, EventRemovalConfig, remove_events
from training.batch_norm import recalibrate_batch_norm
from training.checkpoint import (
    build_model,
    checkpoint_payload,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    source_revision,
)
from training.config import RunConfig
from training.dataset import ExampleDataset, Geometry, Prepared, prepare, recording_windows
from training.datasets import LAYOUTS, scan_folder
from training.losses import QLungLoss
from training.metrics import balanced_score, confusion_matrix, icbhi_scores, plot_confusion_matrix
from training.records import Cycle, DatasetScan, Recording
from training.splits import patient_holdout
from training.timing import example_targets, frame_mask, lay_events, timing_loss
from training.verdicts import all_windows, by_recording, calibrate, score

# --------------------------------------------------------------------------- processes and devices


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def processes(device: torch.device) -> Iterator[Process]:
    """Join the torchrun process group when launched by torchrun; a single process otherwise.

    A group joined here is ended here, after a last barrier on success: a gloo process that exits with its group
    still alive can abort at interpreter shutdown ("terminate called without an active exception", SIGABRT),
    which fails the whole torchrun job after every figure was written."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Process()
        return
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Process(dist.get_rank(), dist.get_world_size())
        if joined:
            dist.barrier()  # no rank tears its connections down while another still talks
    finally:
        if joined:
            dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """The device this process trains on. Under torchrun a CUDA process (`auto` included) takes the GPU of its
    local rank: without that every process would pick GPU 0, and NCCL refuses two ranks on one GPU."""
    asked = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise QLungError(f"train.device={name} was asked for, but torch sees no CUDA device (use cpu or auto)")
    if name.startswith("cuda") and "LOCAL_RANK" in os.environ:
        rank, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if rank >= count:
            raise QLungError(
                f"train.device={asked}: torchrun started local rank {rank}, but torch sees {count} CUDA device(s); "
                f"start at most {count} processes per node, or train on the CPU (train.device=cpu)"
            )
        return torch.device("cuda", rank)
    return torch.device(name)


# --------------------------------------------------------------------------- data


@dataclass
class Splits:
    """Examples (cycles or windows) and the recordings they come from, per part; validation patients never
    appear in training."""

    scan: DatasetScan
    train: list[Cycle]
    validation: list[Cycle]
    test: list[Cycle]
    selection: str
    recordings: dict[str, list[Recording]]
    geometry: Geometry
    train_parts: list[tuple[Geometry, list[Cycle]]]
    """The training examples by kind (a mixed recipe trains on cycles and windows)."""

    def class_counts(self) -> list[int]:
        counts = Counter(c.label for c in self.train)
        return [counts.get(k, 0) for k in range(len(CLASS_NAMES))]


def geometry_of(config: RunConfig, unit: str | None = None) -> Geometry:
    data = config.data
    return Geometry(unit or data.unit, data.window_seconds, data.hop_seconds)


def examples_of(recordings: list[Recording], geometry: Geometry) -> list[Cycle]:
    """The annotated cycles of the recordings, or their labelled windows (validation and test of a mixed
    recipe: windows)."""
    if geometry.unit == "cycle":
        return [c for r in recordings for c in r.cycles]
    return [w for r in recordings if r.audio_path is not None for w in recording_windows(r, geometry) if w.label >= 0]


def load_splits(config: RunConfig, progress: bool = True) -> Splits:
    """Training, validation and test examples; validation patients never appear in training."""
    data = config.data
    if not data.root:
        raise QLungError("data.root is empty: point the recipe at a data folder (data.root=PATH)")
    if data.dataset not in LAYOUTS:
        raise QLungError(f"data.dataset must be {' or '.join(LAYOUTS)}, got {data.dataset!r}")
    try:
        geometry = geometry_of(config)
    except ValueError as err:
        raise QLungError(f"data: {err}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # problems are kept in scan.problems and logged by the caller
        scan = scan_folder(data.root, data.dataset, event_mapping=data.event_mapping, progress=progress)
    training = [r for r in scan.recordings_in("train") if r.cycles or (geometry.unit != "cycle" and r.audio_path)]
    test_recordings = scan.recordings_in(data.test_split)
    if not examples_of(training, geometry):
        raise QLungError(f"no usable training examples ({len(scan.problems)} problems in the scan)", path=data.root)
    test = examples_of(test_recordings, geometry)
    if not test:
        raise QLungError(f"no usable examples in the {data.test_split!r} split", path=data.root)
    if data.selection == "validation":
        try:
            train_ids, val_ids = patient_holdout(training, data.validation_fraction, data.validation_seed)
        except ValueError as err:
            raise QLungError(f"cannot hold out validation patients ({err})", path=data.root) from None
        by_id = {r.id: r for r in training}
        train_recordings = [by_id[i] for i in train_ids]
        validation_recordings = [by_id[i] for i in val_ids]
    elif data.selection == "test-set":
        train_recordings, validation_recordings = training, test_recordings
    else:
        raise QLungError(f"data.selection must be validation or test-set, got {data.selection!r}")
    recordings = {"train": train_recordings, "validation": validation_recordings, "test": test_recordings}
    if geometry.unit == "mixed":
        kinds = [geometry_of(config, "cycle"), geometry_of(config, "window")]
        train_parts = [(g, examples_of(train_recordings, g)) for g in kinds]
    else:
        train_parts = [(geometry, examples_of(train_recordings, geometry))]
    return Splits(
        scan,
        [example for _, examples in train_parts for example in examples],
        examples_of(validation_recordings, geometry),
        test,
        data.selection,
        recordings,
        geometry,
        train_parts,
    )


def load_trained(checkpoint: str | Path, data_root: str | None = None, progress: bool = True
                 ) -> tuple[dict[str, Any], torch.nn.Module, RunConfig, Splits]:  # fmt: skip
    """A trained checkpoint, its model and recipe (`data_root` in place of the recipe's data folder) and the
    splits it was trained on: what refitting a part of it without training again starts from."""
    payload = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(payload, checkpoint)
    if data_root:
        config = replace(config, data=replace(config.data, root=data_root))
    return payload, model, config, load_splits(config, progress=progress)


def _loader(dataset: ExampleDataset, batch: int, process: Process, seed: int, workers: int, train: bool) -> DataLoader:
    sampler = DistributedSampler(dataset, process.world, process.rank, shuffle=train, seed=seed, drop_last=train)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=train)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: ExampleDataset, device: torch.device, batch: int, process: Process = Process()
) -> np.ndarray:
    """Class probabilities [N, C] of every example, gathered from all processes (each runs every world-th one)."""
    model.eval()
    indices = np.arange(process.rank, len(dataset), process.world)
    rows = np.zeros((0, len(CLASS_NAMES)), np.float32)

    def run(waves: np.ndarray) -> np.ndarray:
        return model(torch.tensor(waves, device=device))["probabilities"].float().cpu().numpy()

    if len(indices):
        rows = in_batches(run, dataset.prepared.inputs[process.rank :: process.world], batch)
    mine = list(zip(indices.tolist(), rows.tolist()))
    if process.world > 1:
        gathered: list[Any] = [None] * process.world
        dist.all_gather_object(gathered, mine)
        mine = [row for part in gathered for row in part]
    out = np.zeros((len(dataset), len(CLASS_NAMES)), np.float32)
    for i, p in mine:
        out[i] = p
    return out


@torch.no_grad()
def predict_outputs(
    model: torch.nn.Module, dataset: ExampleDataset, device: torch.device, batch: int, process: Process = Process()
) -> dict[str, np.ndarray]:
    """Probabilities and, when the model has a quality head, P(poor) of every example (one process)."""
    if process.world > 1:
        return {"probabilities": predict(model, dataset, device, batch, process)}
    model.eval()

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        out = model(torch.tensor(x, device=device))
        return {k: out[k].float().cpu().numpy() for k in ("probabilities", "poor") if k in out}

    return in_batches(run, dataset.prepared.inputs, batch)


def cycle_metrics(cycles: list[Cycle], probabilities: np.ndarray) -> dict[str, Any]:
    labels = np.array([c.label for c in cycles])
    predictions = probabilities.argmax(axis=1)
    scores = icbhi_scores(confusion_matrix(labels, predictions))
    per_device = {}
    for device in sorted({c.device for c in cycles}):
        mask = np.array([c.device == device for c in cycles])
        per_device[device] = icbhi_scores(confusion_matrix(labels[mask], predictions[mask])).as_dict()
    return {**scores.as_dict(), "per_device": per_device, "confusion": confusion_matrix(labels, predictions).tolist()}


# --------------------------------------------------------------------------- training


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def recalibrate(
    model: torch.nn.Module,
    loader: DataLoader,
    mixer: EventMixer | None,
    batches: int,
    device: torch.device,
    process: Process,
    amp_dtype: torch.dtype,
    use_amp: bool,
) -> int:
    """The batch-norm statistics of `model` recomputed on the first `batches` batches of this epoch's training
    order (per process), mixed as training mixes them; torch's random state is put back after, so the training
    draws go on as they would have without it."""

    def inputs() -> Iterator[torch.Tensor]:
        for waves, labels, *_ in itertools.islice(loader, batches):
            if mixer is not None:
                waves, labels = mixer(waves, labels)
            yield waves.to(device)

    forked = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with forked, torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
        return recalibrate_batch_norm(model, inputs(), process.world)


def _cosine(total_steps: int) -> Any:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _event_mixer(
    config: RunConfig,
    splits: Splits,
    training_sets: list[ExampleDataset],
    prepared: Callable[[list[Any], Geometry, str], Prepared],
) -> EventMixer | None:
    """The mixer that lays annotated events over training examples: the training cycles when the recipe trains
    on them, else (unit window) the training patients' cycles prepared as donors only, never trained on alone."""
    if config.train.event_mix <= 0:
        return None
    cycles = [d.prepared for (g, _), d in zip(splits.train_parts, training_sets) if g.unit == "cycle"]
    if cycles:
        donors = cycles[0]
    else:
        geometry = geometry_of(config, "cycle")
        examples = examples_of(splits.recordings["train"], geometry)
        if not examples:
            raise QLungError("train.event_mix needs annotated cycles to mix in: the training recordings have none")
        donors = prepared(examples, geometry, "event donors (cycles)")
    window_seconds = geometry_of(config, "window").seconds
    fractions = np.array([(c.end - c.start) / window_seconds for c in donors.examples])
    return EventMixer(
        donors.inputs,
        donors.labels,
        EventMixConfig(config.train.event_mix, length=config.train.event_mix_length),
        features=donors.features,
        donor_fractions=fractions,
    )


def train(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one seed into `out_dir`; returns the run summary (also written to summary.json)."""
    device = resolve_device(config.train.device)
    with processes(device) as process:
        return _train(config, Path(out_dir), device, process, resume, stop_after, progress)


def _train(
    config: RunConfig,
    out: Path,
    device: torch.device,
    process: Process,
    resume: bool,
    stop_after: int | None,
    progress: bool,
) -> dict[str, Any]:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    show = progress and process.main
    _seed(config.train.seed)
    source_revision()  # read now, as the code is loaded: edits during a long run must not mark it dirty
    if process.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if not resume:
            (out / "metrics.csv").unlink(missing_ok=True)  # a fresh run does not continue an old log

    splits = load_splits(config, progress=show)

    def prepared(examples: list[Cycle], geometry: Geometry, name: str) -> Prepared:
        # One process fills the cache, the others wait and read it: no two writers of the same files.
        if process.world > 1 and not process.main:
            dist.barrier()
        result = prepare(examples, splits.scan.recordings, config.data.cache_dir, config.quality, geometry,
                         features=config.train.cache_features, progress=show, desc=f"prepare {name}")  # fmt: skip
        if process.world > 1 and process.main:
            dist.barrier()
        return result

    evaluated_as = geometry_of(config, "window") if splits.geometry.unit == "mixed" else splits.geometry
    timing = config.train.event_timing > 0
    removal = EventRemovalConfig(config.train.event_removal)
    framed = timing or removal.probability > 0  # batches carry per-frame event targets
    parts = (("validation", splits.validation), ("test", splits.test))
    datasets: dict[str, Any] = {
        name: ExampleDataset(prepared(examples, evaluated_as, name)) for name, examples in parts
    }
    training_sets = [
        ExampleDataset(
            prepared(examples, g, f"train {g.unit}s"),
            example_targets(examples, splits.scan.recordings, g.unit, g.seconds) if framed else None,
        )
        for g, examples in splits.train_parts
    ]
    quality_source = _margin_quality(config, training_sets, show)
    datasets["train"] = training_sets[0] if len(training_sets) == 1 else torch.utils.data.ConcatDataset(training_sets)
    counts = splits.class_counts()
    mixer = _event_mixer(config, splits, training_sets, prepared)

    # channels_last: oneDNN's (and cuDNN's) fastest layout for these convolutions, 1.5x on this CPU.
    model = build_model(config).to(device, memory_format=torch.channels_last)
    trained: torch.nn.Module = model
    if process.world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    criterion = QLungLoss(config.loss, [max(n, 1) for n in counts]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    train_loader = _loader(
        datasets["train"], config.train.batch_size, process, config.train.seed, config.train.workers, True
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise QLungError(
            f"{len(datasets['train'])} training examples make no batch of {config.train.batch_size} per process"
        )
    total_steps = steps_per_epoch * config.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total_steps))
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.train.ema), use_buffers=True)
        if config.train.ema > 0
        else None
    )
    use_amp = config.train.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, step, best, history = 0, 0, -1.0, []
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume:
        state = load_checkpoint(last_path)
        if from_dict(RunConfig, state["config"]) != config:  # a field added since fills with its default
            raise QLungError("was written by a different recipe; resume with the same one", path=last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:  # dropout and SpecAugment draw there
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch, step, best, history = state["epoch"], state["step"], state["best"], state["history"]

    evaluated = ema.module if ema is not None else model
    writer = None
    if process.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    interrupted = False
    for epoch in range(start_epoch, config.train.epochs):
        if stop_after is not None and epoch >= stop_after:
            interrupted = True
            break
        trained.train()
        train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        began, seen, totals = time.perf_counter(), 0, Counter()
        bar = tqdm(
            train_loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", unit="batch", disable=not show, leave=False
        )
        for waves, labels, aqs, _, *rest in bar:
            targets = rest[0] if framed else None
            if removal.probability > 0:
                waves, labels, targets = remove_events(waves, labels, targets, removal)
            if mixer is not None:
                mixed = mixer.mix(waves, labels)
                waves, labels = mixed.inputs, mixed.labels
                if timing and len(mixed.rows):
                    targets = lay_events(targets, mixed.rows, mixed.kinds, frame_mask(mixed.inside, targets.shape[1]))
            waves, labels, aqs = waves.to(device), labels.to(device), aqs.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                output = trained(waves)
                loss, parts = criterion(output["logits"], output["cosine"], labels, aqs)
                if timing:
                    timing_part = timing_loss(output["steps"], targets, output["blanked_frames"])
                    loss = loss + config.train.event_timing * timing_part
                    parts = {**parts, "timing": float(timing_part.detach())}
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            seen += len(labels) * process.world
            totals.update({k: v * len(labels) for k, v in parts.items()})
            totals["n"] += len(labels)
            bar.set_postfix(loss=f"{parts['ce']:.3f}")
            if config.train.max_steps and step >= config.train.max_steps:
                break
        elapsed = time.perf_counter() - began
        if config.train.bn_recalibration_batches:
            recalibrate(evaluated, train_loader, mixer, config.train.bn_recalibration_batches, device, process,
                        amp_dtype, use_amp)  # fmt: skip
        val = cycle_metrics(splits.validation, predict(evaluated, datasets["validation"], device, 32, process))
        val["balanced score"] = balanced_score(np.array(val["confusion"]))
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": scheduler.get_last_lr()[0],
            **{f"train_{k}": v / totals["n"] for k, v in totals.items() if k != "n"},
            "val_specificity": val["specificity"],
            "val_sensitivity": val["sensitivity"],
            "val_score": val["score"],
            "val_balanced_score": val["balanced score"],
            "examples_per_second": seen / elapsed,
        }
        history.append(row)
        # A validation part without abnormal examples has no Score (NaN): the first epoch is kept then.
        selected = val[config.train.select_on]
        current = selected if math.isfinite(selected) else -math.inf
        improved = current > best or (epoch == start_epoch and not best_path.exists())
        best = max(best, current)
        if process.main:
            payload = checkpoint_payload(
                config,
                evaluated.state_dict(),
                epoch=epoch + 1,
                metrics={"validation": {k: val[k] for k in ("specificity", "sensitivity", "score")}},
                selection=splits.selection,
            )
            if improved:
                save_checkpoint(best_path, payload)
            save_checkpoint(
                last_path,
                {
                    **payload,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "step": step,
                    "best": best,
                    "history": history,
                },
            )
            _log(out, row, writer)
            if show:
                print(
                    f"epoch {epoch + 1}: loss {row.get('train_ce', float('nan')):.3f}  "
                    f"val Sp {100 * val['specificity']:.1f} Se {100 * val['sensitivity']:.1f} "
                    f"Score {100 * val['score']:.1f}"
                    + (f" balanced {100 * val['balanced score']:.1f}" if config.train.select_on != "score" else "")
                    + f"  {row['examples_per_second']:.1f} examples/s"
                    + ("  *" if improved else "")
                )
        if config.train.max_steps and step >= config.train.max_steps:
            break
    if writer is not None:
        writer.close()
    if process.world > 1:
        dist.barrier()
    if interrupted:
        return {"stopped_after_epoch": stop_after}

    best_state = load_checkpoint(best_path)
    evaluated.load_state_dict(best_state["weights"])
    test = cycle_metrics(splits.test, predict(evaluated, datasets["test"], device, 32, process))
    metrics = {**best_state["metrics"], "test": _headline(test)}
    extra: dict[str, Any] = {}
    if splits.geometry.unit != "cycle":  # the same checkpoint on the annotated events, as the field scores
        cycles = examples_of(splits.recordings["test"], geometry_of(config, "cycle"))
        data = ExampleDataset(prepared(cycles, geometry_of(config, "cycle"), "test cycles"))
        extra["test_cycles"] = cycle_metrics(cycles, predict(evaluated, data, device, 32, process))
        metrics["test_cycles"] = _headline(extra["test_cycles"])
    rule = None
    estimate = None
    training_recordings = splits.recordings["train"] + splits.recordings["validation"]
    if config.data.quality_estimate and any(r.record_label == "Poor Quality" for r in training_recordings):
        from training.quality_model import attach, fit_quality_estimate

        fit = fit_quality_estimate(evaluated, training_recordings, splits.geometry, config.data.cache_dir,
                                   config.quality, progress=show)  # fmt: skip
        attach(evaluated, fit)
        estimate = fit.manifest_record()
        extra["quality_estimate"] = estimate
    if any(r.record_label for r in splits.recordings["validation"]):
        threshold = None if estimate is None else estimate["threshold"]
        smoothing = 1 if estimate is None else estimate["smoothing_windows"]
        rule, records = record_level(config, splits, evaluated, prepared, device, process, threshold, smoothing)
        extra.update(records)
        metrics["test_records"] = {task: _record_headline(s) for task, s in records["test_records"].items()}
    summary = {
        "name": config.name,
        "seed": config.train.seed,
        "unit": splits.geometry.unit,
        "selection": "best epoch on patients held out of training"
        if splits.selection == "validation"
        else "best epoch ON THE TEST SET (optimistic, as much of the field reports)",
        "best_epoch": best_state["epoch"],
        "validation": best_state["metrics"]["validation"],
        "test": test,
        **extra,
        "verdict_rule": None if rule is None else rule.to_dict(),
        "margin_quality": quality_source,
        "class_counts_train": dict(zip(CLASS_NAMES, counts)),
        "examples": {
            k: len(v) for k, v in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
        },
        "train_examples_per_second": float(np.median([h["examples_per_second"] for h in history])) if history else None,
        "device": str(device),
        "processes": process.world,
        "torch": torch.__version__,
    }
    if process.main:
        best_state["metrics"] = metrics
        best_state["geometry"] = {"unit": splits.geometry.unit, "window_seconds": splits.geometry.seconds,
                                  "hop_seconds": splits.geometry.hop_seconds}  # fmt: skip
        if rule is not None:
            best_state["verdict"] = rule.to_dict()
        if estimate is not None:
            best_state["weights"] = evaluated.state_dict()  # with the quality head
            best_state["quality_estimate"] = estimate
        save_checkpoint(best_path, best_state)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_confusion_matrix(np.array(test["confusion"]), out / "confusion_matrix.png", title=f"{config.name}, test")
        for task in ("task_2_1", "task_2_2"):
            if "test_records" in extra:
                s = extra["test_records"][task]
                plot_confusion_matrix(np.array(s["confusion"]), out / f"records_{task}.png", classes=s["labels"],
                                      title=f"{config.name}, test records, {task.replace('_', ' ')}")  # fmt: skip
    return summary


def _margin_quality(config: RunConfig, training_sets: list[ExampleDataset], show: bool) -> dict[str, Any]:
    """What the quality margin sees per training example: AQS, or a teacher bundle's 1 - P(poor) (in place)."""
    if not config.data.quality_teacher:
        values = np.concatenate([t.prepared.aqs for t in training_sets])
        return {"source": "aqs", "mean": float(values.mean()), "std": float(values.std())}
    from training.quality_teacher import teacher_quality

    scored = []
    for part in training_sets:
        if show:
            print(f"scoring {len(part.prepared)} training examples with {config.data.quality_teacher}")
        result = teacher_quality(config.data.quality_teacher, part.prepared, threads=max(config.train.threads, 1))
        part.prepared.aqs = result.quality
        scored.append(result)
    values = np.concatenate([r.quality for r in scored])
    return {"source": "teacher", "bundle": config.data.quality_teacher, "model_id": scored[0].model_id,
            "mean": float(values.mean()), "std": float(values.std())}  # fmt: skip


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("specificity", "sensitivity", "score")}


def _record_headline(scores: dict[str, Any]) -> dict[str, float]:
    return {k: scores[k] for k in ("sensitivity", "specificity", "average", "harmonic", "score")}


def record_outputs(
    config: RunConfig,
    splits: Splits,
    model: torch.nn.Module,
    prepared: Any,
    device: torch.device,
    process: Process,
    part: str,
    smoothing: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Every window of one part's recordings through the model: class probabilities by recording and, when the
    model has a quality estimate, P(poor) pooled over `smoothing` windows as the daemon pools it."""
    from qlung_edge.reporter import trailing_means

    geometry = geometry_of(config, "window")
    data = prepared(all_windows(splits.recordings[part], geometry), geometry, f"{part} record windows")
    out = predict_outputs(model, ExampleDataset(data), device, 32, process)
    if "poor" not in out:
        return by_recording(data, out["probabilities"]), None
    poor = {rec: trailing_means(v, smoothing) for rec, v in by_recording(data, out["poor"]).items()}
    return by_recording(data, out["probabilities"]), poor


def record_level(
    config: RunConfig,
    splits: Splits,
    model: torch.nn.Module,
    prepared: Any,
    device: torch.device,
    process: Process,
    threshold: float | None,
    smoothing: int = 1,
) -> tuple[VerdictRule, dict[str, Any]]:
    """The verdict rule calibrated on every window of the validation patients' recordings, and its Task 2-1 and
    2-2 figures on the test recordings (offline: the learned quality gate applies when the model has one, on
    P(poor) pooled over `smoothing` windows as the daemon pools it; the AQS reasons do not)."""
    windows, poor = {}, {}
    for part in ("validation", "test"):
        windows[part], poor[part] = record_outputs(config, splits, model, prepared, device, process, part, smoothing)
    truth = {r.id: r.record_label for part in ("validation", "test") for r in splits.recordings[part] if r.record_label}
    where = f"{len(windows['validation'])} recordings of validation patients ({splits.selection})"
    patients = {r.id: r.patient for r in splits.recordings["validation"]}
    rule, validation = calibrate(windows["validation"], truth, where, poor["validation"], threshold, patients=patients)
    test = {task: s.as_dict() for task, s in score(rule, windows["test"], truth, poor["test"], threshold).items()}
    return rule, {"validation_records": validation, "test_records": test}


def _log(out: Path, row: dict[str, Any], writer: Any) -> None:
    path = out / "metrics.csv"
    fields = list(row)
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), fields)
        if header != fields:  # resumed from a run logged before a column was added
            with path.open(newline="") as f:
                earlier = list(csv.DictReader(f))
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
                w.writeheader()
                w.writerows(earlier)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)):
            writer.add_scalar(key, value, row["epoch"])


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.array(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _spread(values: list[float]) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "runs": values}


def train_seeds(config: RunConfig, out_dir: str | Path, seeds: list[int], progress: bool = True) -> dict[str, Any]:
    """One run per seed under out_dir/seed<k>/, then test Sp, Se and Score as mean +- std (sample std)."""
    out = Path(out_dir)
    with processes(resolve_device(config.train.device)) as process:  # one group for every seed: never joined twice
        runs = [
            train(replace(config, train=replace(config.train, seed=s)), out / f"seed{s}", progress=progress)
            for s in seeds
        ]
    summary: dict[str, Any] = {"name": config.name, "seeds": seeds, "selection": runs[0]["selection"]}
    for key in ("specificity", "sensitivity", "score", "score_2class"):
        summary[key] = _spread([100 * r["test"][key] for r in runs])
    icbhi = ("specificity", "sensitivity", "score")
    if all("test_cycles" in r for r in runs):
        summary["test_cycles"] = {k: _spread([100 * r["test_cycles"][k] for r in runs]) for k in icbhi}
    if all("test_records" in r for r in runs):
        sprsound = ("sensitivity", "specificity", "score")
        summary["test_records"] = {
            task: {k: _spread([100 * r["test_records"][task][k] for r in runs]) for k in sprsound}
            for task in ("task_2_1", "task_2_2")
        }
    summary["train_examples_per_second"] = float(np.median([r["train_examples_per_second"] for r in runs]))
    if process.main:
        (out / "seeds_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
