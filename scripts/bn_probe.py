"""Are a recipe's eval-mode collapses batch norm's? Train epoch by epoch and score each epoch's validation twice.

An epoch whose validation windows are all called abnormal between good epochs (the fine-time recipes' metrics.csv)
may have weights that are fine and batch-norm running statistics that lag them. This trains one seed of a recipe
one epoch at a time (the run resumes from its last.pt, so it is the recipe's own run) and, after each epoch,
scores the validation windows with the evaluated (EMA) weights as they are, and with the same weights' batch-norm
statistics recomputed on training batches (`training.batch_norm`), both from every training example kind (as
training draws them) and from the windows alone. One JSON line per epoch: (Sp, Se, Score) x 100 of each.

    python scripts/bn_probe.py ce-edge-sprsound-windows-event-mix-fine-time --seed 1 --epochs 6 --out /tmp/probe

Writes only under --out; training/batch_norm.py quotes what it printed for that command.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from training import engine
    from training.batch_norm import recalibrate_batch_norm
    from training.checkpoint import build_model, load_checkpoint
    from training.config import load_recipe
    from training.dataset import ExampleDataset, prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batches", type=int, default=40, help="training batches to recompute statistics on")
    parser.add_argument("--data", default="../shared/data/sprsound")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = load_recipe(args.recipe, [f"train.seed={args.seed}", f"data.root={args.data}"])
    splits = engine.load_splits(config, progress=False)

    def prepared(examples: list, geometry: engine.Geometry) -> ExampleDataset:
        return ExampleDataset(prepare(examples, splits.scan.recordings, config.data.cache_dir, config.quality,
                                      geometry, features=config.train.cache_features, progress=False))  # fmt: skip

    validation = prepared(splits.validation, engine.geometry_of(config, "window"))
    parts = [prepared(examples, geometry) for geometry, examples in splits.train_parts]
    rng = np.random.default_rng(0)

    def batches(only: int | None = None) -> list[torch.Tensor]:
        chosen = [d for i, d in enumerate(parts) if only is None or i == only]
        each = config.train.batch_size // len(chosen)
        return [torch.cat([torch.tensor(np.asarray(d.prepared.inputs[np.sort(rng.choice(len(d), each, replace=False))]))
                           for d in chosen]) for _ in range(args.batches)]  # fmt: skip

    def scored(model: torch.nn.Module) -> list[float]:
        p = engine.predict(model, validation, torch.device("cpu"), 64)
        m = engine.cycle_metrics(splits.validation, p)
        return [round(100 * m[k], 1) for k in ("specificity", "sensitivity", "score")]

    def recomputed(model: torch.nn.Module, inputs: list[torch.Tensor]) -> torch.nn.Module:
        model = copy.deepcopy(model)
        recalibrate_batch_norm(model, inputs)
        return model

    for epoch in range(1, args.epochs + 1):
        engine.train(config, args.out, resume=epoch > 1, stop_after=epoch, progress=False)
        evaluated = build_model(config)
        evaluated.load_state_dict(load_checkpoint(args.out / "last.pt")["weights"])
        row = {"epoch": epoch, "as_trained": scored(evaluated),
               "recomputed": scored(recomputed(evaluated, batches())),
               "recomputed_on_windows": scored(recomputed(evaluated, batches(only=len(parts) - 1)))}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
