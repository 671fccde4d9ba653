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


def test_a_cumulative_layer_starts_over_and_keeps_its_own_momentum() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=None))
    with torch.no_grad():
        for b in _batches(3, seed=1):
            model(b * 10)  # stale statistics from inputs ten times as wide
    target = _batches(5, seed=2)
    recalibrate_batch_norm(model, target)
    assert torch.allclose(model[0].running_mean, torch.stack([b.mean(dim=(0, 2, 3)) for b in target]).mean(0))
    assert model[0].momentum is None and int(model[0].num_batches_tracked) == 5


def _rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    model = nn.Sequential(nn.BatchNorm2d(3))
    recalibrate_batch_norm(model, _batches(2, seed=10 + rank), world=2)
    torch.save({"mean": model[0].running_mean, "var": model[0].running_var}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_under_torchrun_every_rank_ends_with_the_average_over_all_ranks_batches(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    everything = _batches(2, seed=10) + _batches(2, seed=11)
    alone = nn.Sequential(nn.BatchNorm2d(3))
    recalibrate_batch_norm(alone, everything)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert torch.allclose(got["mean"], alone[0].running_mean, atol=1e-5), rank
        assert torch.allclose(got["var"], alone[0].running_var, atol=1e-4), rank


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
    common = [f"data.root={synth_root / 'icbhi'}", f"data.cache_dir={cache}", "train.epochs=2", "train.batch_size=8",
              "train.threads=1", "train.device=cpu", "data.quality_estimate=false", "train.event_mix=0.3"]  # fmt: skip

    def run(*overrides: str, stop_after: int | None = None, out: Path | None = None) -> dict:
        out = out or tmp_path_factory.mktemp("run")
        config = load_recipe("demo", [*common, *overrides])
        train(config, out, progress=False, stop_after=stop_after, resume=stop_after is None and out.exists()
              and (out / "last.pt").exists())  # fmt: skip
        return load_checkpoint(out / "last.pt")

    plain, recalibrated = run(), run("train.bn_recalibration_batches=2")
    for key, value in plain["model"].items():  # the trained weights and their running statistics: same draws
        assert torch.equal(value, recalibrated["model"][key]), key
    running = [k for k in plain["weights"] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key, value in plain["weights"].items():  # the averaged weights too; only their statistics differ
        assert torch.equal(value, recalibrated["weights"][key]) != (key in running), key

    # Without weight averaging the evaluated model is the trained one: its parameters still train the same.
    plain, recalibrated = run("train.ema=0"), run("train.ema=0", "train.bn_recalibration_batches=2")
    parameters = [k for k in plain["model"] if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(plain["model"][k], recalibrated["model"][k]) for k in parameters)

    # Stopped after the first epoch and resumed: the same run as straight through.
    out = tmp_path_factory.mktemp("resumed")
    run("train.bn_recalibration_batches=2", stop_after=1, out=out)
    resumed = run("train.bn_recalibration_batches=2", out=out)
    straight = run("train.bn_recalibration_batches=2")
    for key, value in straight["weights"].items():
        assert torch.allclose(value.float(), resumed["weights"][key].float(), atol=1e-6), key
    with pytest.raises(ConfigError, match="bn_recalibration_batches must be 0 or more"):
        load_recipe("demo", ["train.bn_recalibration_batches=-1"])
