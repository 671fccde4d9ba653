"""Batch-norm statistics recomputed for the weights being evaluated ("precise BN").

During training a batch-norm layer keeps running statistics, an exponential average over the last ten or so
batches, each computed with the weights of its own step (and, under weight EMA, averaged alongside the weights,
which only approximates the statistics of the averaged weights). With Adam at edge-cnn's learning rate the
weights move enough within those steps that the statistics stop matching them: on SPRSound, six of the ten seeds
of the fine-time window recipes had epochs after the first whose validation windows were all called abnormal in
eval mode (Sp under 5 %, their metrics.csv). Epoch 5 of CE fine-time seed 1 scored Sp 0 %, Se 80 % with its
running statistics and Sp 82 %, Se 29 % with the same weights and statistics recomputed on 40 training batches;
epoch 6, Sp 0 %, Se 71 % against Sp 60 %, Se 33 % (`python scripts/bn_probe.py
ce-edge-sprsound-windows-event-mix-fine-time --seed 1 --epochs 6 --out DIR`). Recomputing the statistics with the
final weights, on batches drawn as training draws them, is what eval mode assumes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor], world: int = 1) -> int:
    """Replace every batch-norm layer's running statistics by their plain average over `batches` (inputs the
    model takes, drawn and augmented as in training); returns the number of examples seen, 0 when the model has
    no batch norm (nothing is changed then). The model runs in training mode, as in a training step, and goes
    back to the mode it was in. Under torchrun (`world` > 1) each process's averages are averaged over processes,
    so every rank evaluates the same statistics. A layer whose momentum is None (a cumulative average) starts
    over from these batches."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("no batch to recompute the batch-norm statistics on")
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch weighs the same
    seen = 0
    model.train()
    try:
        for inputs in itertools.chain([first], batches):
            model(inputs)
            seen += len(inputs)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    if world > 1:
        for layer in layers:
            for stat in (layer.running_mean, layer.running_var):
                dist.all_reduce(stat)
                stat.div_(world)
    return seen
