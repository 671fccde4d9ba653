from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.batch_norm import recalibrate_batch_norm
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_recipe
from training.engine import train


def _batches(count: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 5, 4, generator=g) * (1 + i) + i for i in range(count)]


def test_recomputed_statistics_are_the_plain_average_of_each_batchs_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3))
    nn.init.eye_(model[0].weight.view(3, 3))  # the batch norm sees the inputs themselves
    model.eval()
    batches = _batches(4)
    assert recalibrate_batch_norm(model, batches) == 24
    # Independently: per batch, the per-channel mean and unbiased variance over (batch, height, width).
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches])
    bn = model[1]
    assert torch.allclose(bn.running_mean, means.mean(dim=0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(dim=0), atol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # put back as they were


def test_the_running_average_it_replaces_lags_what_recomputing_gives() -> None:
    # The failure it fixes: with momentum 0.1 the running statistics still remember batches drawn from another
    # distribution (weights that have moved since); recomputing forgets them.
    model = nn.Sequential(nn.BatchNorm2d(3))
    model.train()
    with torch.no_grad():
        for b in _batches(3, seed=1):
            model(b * 10)
    stale = model[0].running_mean.clone()
    target = _batches(5, seed=2)
    recalibrate_batch_norm(model, target)
    assert not torch.allclose(stale, model[0].running_mean, atol=0.5)
    assert torch.allclose(model[0].running_mean, torch.stack([b.mean(dim=(0, 2, 3)) for b in target]).mean(0))
    assert model.training


def test_a_model_without_batch_norm_is_left_alone_and_no_batch_is_an_error_that_changes_nothing() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 3, 1), nn.LayerNorm(4))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert recalibrate_batch_norm(plain, _batches(2)) == 0
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())

    model = nn.Sequential(nn.BatchNorm2d(3))
    with torch.no_grad():
        model(_batches(1)[0])
    stats = model[0].running_mean.clone()
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batch_norm(model, [])
    assert torch.equal(model[0].running_mean, stats)


def test_training_goes_on_as_without_it_and_only_the_evaluated_statistics_change(
    synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.mktemp("cache")
    common = [f"data.root={synth_root / 'icbhi'}", f"data.cache_dir={cache}", "train.epochs=2",
              "train.batch_size=8", "train.threads=1", "train.device=cpu", "data.quality_estimate=false"]  # fmt: skip
    runs = {}
    for batches in (0, 2):
        out = tmp_path_factory.mktemp(f"recal{batches}")
        config = load_recipe("demo", [*common, f"train.bn_recalibration_batches={batches}"])
        train(config, out, progress=False)
        runs[batches] = load_checkpoint(out / "last.pt")
    plain, recalibrated = runs[0], runs[2]
    for key, value in plain["model"].items():  # the trained weights and their running statistics: same draws
        assert torch.equal(value, recalibrated["model"][key]), key
    running = [k for k in plain["weights"] if k.endswith("running_mean")]
    assert running
    assert any(not torch.equal(plain["weights"][k], recalibrated["weights"][k]) for k in running)
    with pytest.raises(ConfigError, match="bn_recalibration_batches must be 0 or more"):
        load_recipe("demo", ["train.bn_recalibration_batches=-1"])
