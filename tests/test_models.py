from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from qlung_edge.errors import QLungError
from training.models import (
    AST,
    AngularHead,
    ASTConfig,
    EdgeCNN,
    EdgeCNNConfig,
    QLungModel,
    adapt_position_grid,
    count_flops,
    count_parameters,
    load_ast_weights,
    load_pretrained,
)

SMALL = {"embed_dim": 64, "depth": 2, "heads": 4}


def test_edge_cnn_fits_the_device_budget() -> None:
    model = QLungModel("edge-cnn")
    assert count_parameters(model) <= 1_500_000
    assert count_flops(model) <= 0.5e9  # front end included


def _time_steps(backbone: EdgeCNN, frames: int) -> int:
    return backbone.blocks(backbone.stem(torch.zeros(1, 1, 128, frames))).shape[-1]


def test_a_finer_time_axis_keeps_the_weights_and_the_budget() -> None:
    coarse, fine = EdgeCNN(), EdgeCNN(EdgeCNNConfig(time_stride=32))
    # The default is the network the shipped bundles were trained as: every stage strides time as frequency.
    assert coarse.config.block_strides() == [(s, s) for _, s in coarse.config.stages]
    # A 4 s window (400 frames): 4 steps of 1.28 s by default, 13 of 0.32 s when time stops striding at 32.
    assert _time_steps(coarse, 400) == 4 and _time_steps(fine, 400) == 13
    assert _time_steps(EdgeCNN(EdgeCNNConfig(time_stride=4)), 400) == 100
    # Frequency is still folded to one row, and the weights have the same names and shapes: only strides differ.
    assert fine.blocks(fine.stem(torch.zeros(1, 1, 128, 400))).shape[2] == 1
    assert {k: v.shape for k, v in coarse.state_dict().items()} == {k: v.shape for k, v in fine.state_dict().items()}
    assert count_flops(QLungModel("edge-cnn", edge=EdgeCNNConfig(time_stride=32))) <= 0.5e9
    for bad in (0, 24, 256, 3):
        with pytest.raises(ValueError, match="time_stride must be one of 4, 8, 16, 32, 64, 128"):
            EdgeCNNConfig(time_stride=bad)
    # Stages that stride by other than 2: the default keeps every stride as it is, time_stride counts the products.
    threes = EdgeCNNConfig(stages=((48, 3), (64, 1), (96, 3)))
    assert threes.block_strides() == [(3, 3), (1, 1), (3, 3)] and threes.time_strides() == [4, 12, 36]
    assert EdgeCNNConfig(stages=((48, 3), (64, 1), (96, 3)), time_stride=12).block_strides() == [(3, 3), (1, 1), (3, 1)]


def test_max_pooling_weighs_only_the_loudest_step_not_how_many_steps_hold_it() -> None:
    torch.manual_seed(0)
    steps = torch.randn(2, 256, 13)
    stretched = steps.clone()
    stretched[:, :, 1:6] = steps[:, :, :1]  # the first step's content held over five more steps: more of the input
    stretched = torch.maximum(stretched, steps)  # every step's max kept, so only the mean can move
    alone, both = EdgeCNN(EdgeCNNConfig(pooling="max")).eval(), EdgeCNN(EdgeCNNConfig()).eval()
    assert alone.project.in_features == 256 and both.project.in_features == 512
    with torch.no_grad():
        assert torch.equal(alone.pool(steps), alone.pool(stretched))
        assert not torch.allclose(both.pool(steps), both.pool(stretched))
    with pytest.raises(ValueError, match="pooling must be one of mean-max, max, got 'sum'"):
        EdgeCNNConfig(pooling="sum")


def _frames_one_step_sees(backbone: EdgeCNN, frames: int = 2000) -> int:
    """Receptive field of a middle time step, in log-mel frames: where its gradient reaches the input."""
    logmel = torch.randn(1, frames, 128, requires_grad=True)
    steps = backbone.eval().steps(logmel)
    steps[0, :, steps.shape[-1] // 2].sum().backward()
    reached = torch.nonzero(logmel.grad[0].abs().sum(dim=1) > 0).flatten()
    return int(reached.max() - reached.min() + 1)


def test_local_steps_see_under_a_second_where_fine_steps_see_the_whole_window() -> None:
    torch.manual_seed(0)
    fine, local = EdgeCNNConfig(time_stride=32), EdgeCNNConfig(time_stride=32, local_steps=True)
    assert local.block_kernels() == [(3, 3)] * 4 + [(3, 1)] * 5 and fine.block_kernels() == [(3, 3)] * 9
    # By hand: the stem's 4 frames, then each 3-wide kernel adds 2 steps of its input: 4 + 8 + 16 + 32 + 32 = 92
    # frames until time stops striding at 32; fine steps keep widening by 64 frames per block after that.
    assert _frames_one_step_sees(EdgeCNN(local)) == 92 and _frames_one_step_sees(EdgeCNN(fine)) == 412
    assert _time_steps(EdgeCNN(local), 400) == _time_steps(EdgeCNN(fine), 400) == 13
    with pytest.raises(ValueError, match="local_steps needs a time_stride"):
        EdgeCNNConfig(local_steps=True)


def test_subtracting_the_window_mean_drops_a_constant_offset_per_band_and_nothing_else() -> None:
    torch.manual_seed(0)
    plain = EdgeCNN(EdgeCNNConfig(time_stride=32)).eval()
    centred = EdgeCNN(EdgeCNNConfig(time_stride=32, subtract_window_mean=True)).eval()
    centred.load_state_dict(plain.state_dict())
    logmel = torch.randn(2, 400, 128)
    offset = torch.linspace(-2.0, 3.0, 128)  # a frequency response: one constant per mel band
    louder = logmel.clone()
    louder[:, :100, 40] += 3.0  # a change within the window: one band louder for a quarter of it

    def moved(model: EdgeCNN, changed: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(changed) - model(logmel)).abs().max())

    assert moved(centred, logmel + offset) < 1e-3 * moved(plain, logmel + offset)
    assert moved(centred, louder) > 0.1 * moved(plain, louder)
    with torch.no_grad():
        assert torch.allclose(centred(logmel), plain(logmel - logmel.mean(dim=1, keepdim=True)), atol=1e-6)


@pytest.mark.parametrize(
    "edge",
    [{}, {"pooling": "max"}, {"pooling": "max", "local_steps": True}, {"subtract_window_mean": True}],
    ids=["mean-max", "max", "local-max", "band-mean"],
)
def test_a_finer_time_axis_exports_and_matches_torch(tmp_path: Path, edge: dict[str, object]) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from export.onnx_export import export_onnx
    from export.ops import audit_file

    torch.manual_seed(0)
    model = QLungModel("edge-cnn", head="linear", edge=EdgeCNNConfig(time_stride=32, **edge)).eval()  # type: ignore[arg-type]
    path = tmp_path / "fine.onnx"
    export_onnx(model, path, samples=64_000)
    audit = audit_file(path)
    assert audit.ok, audit.summary()
    waves = torch.randn(3, 64_000) * 0.05
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {session.get_inputs()[0].name: waves.numpy()})[0]
    with torch.no_grad():
        expected = model(waves)["probabilities"].numpy()
    assert abs(probabilities - expected).max() < 1e-4


def test_model_outputs() -> None:
    torch.manual_seed(0)
    model = QLungModel("edge-cnn").eval()
    out = model(torch.randn(3, 128_000) * 0.05)
    assert out["logits"].shape == (3, 4) and out["embedding"].shape == (3, model.backbone.embed_dim)
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(3))
    assert out["logits"].abs().max() <= 37.0 + 1e-4  # s_a * cos
    assert torch.allclose(out["logits"], 37.0 * out["cosine"])
    linear = QLungModel("edge-cnn", head="linear").eval()
    assert linear(torch.randn(2, 128_000))["logits"].shape == (2, 4)
    with pytest.raises(ValueError, match="unknown backbone"):
        QLungModel("resnet")


def test_angular_head_is_the_cosine() -> None:
    head = AngularHead(8, 4, scale=10.0)
    x = torch.randn(5, 8)
    logits, cos = head(x)
    manual = (x / x.norm(dim=1, keepdim=True)) @ (head.weight / head.weight.norm(dim=1, keepdim=True)).T
    assert torch.allclose(cos, manual, atol=1e-6) and torch.allclose(logits, 10 * manual, atol=1e-5)


def _audioset_layout(source: AST) -> dict[str, torch.Tensor]:
    """What the public AudioSet checkpoint looks like: DataParallel prefix, `v.` body, `mlp_head.`."""
    state = {f"module.v.{k}": v.clone() for k, v in source.v.state_dict().items()}
    state["module.mlp_head.0.weight"] = torch.ones(source.config.embed_dim)
    state["module.mlp_head.1.weight"] = torch.zeros(527, source.config.embed_dim)
    return state


def test_loads_an_audioset_checkpoint_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = AST(ASTConfig(**SMALL, frames=1024))  # AudioSet models were trained on 1024 frames: 12 x 101
    target = AST(ASTConfig(**SMALL, frames=798))  # 12 x 79
    ignored = load_ast_weights(target, _audioset_layout(source))
    assert ignored == ["mlp_head.0.weight", "mlp_head.1.weight"]
    for key, value in source.v.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(target.v.state_dict()[key], value), key
    grid = source.v.pos_embed[:, 2:].transpose(1, 2).reshape(1, 64, 12, 101)
    expected = grid[:, :, :, 11:90].reshape(1, 64, -1).transpose(1, 2)  # centre crop of 79 of 101, as AST does
    assert torch.equal(target.v.pos_embed[:, 2:], expected)
    assert torch.equal(target.v.pos_embed[:, :2], source.v.pos_embed[:, :2])
    # From a file, through the model, the way `--pretrained PATH` does it.
    path = tmp_path / "audioset.pth"
    torch.save(_audioset_layout(source), path)
    model = QLungModel("ast", ast=ASTConfig(**SMALL))
    load_pretrained(model, path)
    assert torch.equal(model.backbone.v.blocks[1].mlp.fc2.weight, source.v.blocks[1].mlp.fc2.weight)
    assert model(torch.zeros(1, 128_000))["logits"].shape == (1, 4)


def test_loads_an_imagenet_deit_state_dict() -> None:
    torch.manual_seed(2)
    donor = AST(ASTConfig(**SMALL))
    state = {k: v.clone() for k, v in donor.v.state_dict().items()}
    rgb = torch.randn(64, 3, 16, 16)
    state["patch_embed.proj.weight"] = rgb
    state["pos_embed"] = torch.randn(1, 2 + 24 * 24, 64)  # DeiT at 384 px: 24 x 24 patches
    state["head.weight"], state["head_dist.weight"] = torch.zeros(1000, 64), torch.zeros(1000, 64)
    target = AST(ASTConfig(**SMALL))
    assert load_ast_weights(target, {"model": state}["model"]) == ["head.weight", "head_dist.weight"]
    assert torch.allclose(target.v.patch_embed.proj.weight, rgb.sum(1, keepdim=True))
    square = state["pos_embed"][:, 2:].transpose(1, 2).reshape(1, 64, 24, 24)
    expected = F.interpolate(square[:, :, 6:18], size=(12, 79), mode="bilinear", align_corners=False)
    assert torch.allclose(target.v.pos_embed[:, 2:], expected.reshape(1, 64, -1).transpose(1, 2), atol=1e-6)


def test_adapt_position_grid_identity_and_shapes() -> None:
    grid = torch.randn(1, 8, 12, 79)
    assert torch.equal(adapt_position_grid(grid, (12, 79)), grid)
    assert adapt_position_grid(grid, (10, 100)).shape == (1, 8, 10, 100)


def test_bad_pretrained_files(tmp_path: Path) -> None:
    model = QLungModel("ast", ast=ASTConfig(**SMALL))
    with pytest.raises(QLungError, match="does not exist"):
        load_pretrained(model, tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(QLungError, match=r"junk\.pth: not a loadable tensor checkpoint"):
        load_pretrained(model, tmp_path / "junk.pth")
    torch.save(
        {"pos_embed": torch.zeros(1, 2 + 12 * 79, 32), "patch_embed.proj.weight": torch.zeros(32, 1, 16, 16)},
        tmp_path / "narrow.pth",
    )
    with pytest.raises(QLungError, match=r"narrow\.pth: pos_embed has width 32, this AST has 64"):
        load_pretrained(model, tmp_path / "narrow.pth")
    with pytest.raises(QLungError, match="needs the ast backbone"):
        load_pretrained(QLungModel("edge-cnn"), tmp_path / "narrow.pth")
