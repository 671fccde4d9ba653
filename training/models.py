"""Backbones, heads and the whole QLung model: waveform in, logits, probabilities and embedding out.

- `edge-cnn`: the model for the device, depthwise-separable convolutions over the log-mel image, sized to fit
  1.5 M parameters and 0.5 GFLOPs per 8 s window with the front end included.
- `ast`: the Audio Spectrogram Transformer (DeiT-base, 16x16 patches at stride 10) with the parameter names of
  the public AudioSet checkpoint, so a local copy of it loads as is (see `load_ast_weights`).

Every backbone returns an embedding; the head is shared: an angular classifier (cosine between the normalised
embedding and normalised class weights, scaled by s_a) or, for the plain-CE baseline, a linear layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from qlung_edge import CLASS_NAMES, FRAMES_PER_WINDOW, WINDOW_SAMPLES
from qlung_edge.errors import QLungError
from qlung_edge.onnx_sessions import OUTPUT_NAMES
from training.frontend import FrontEndConfig, KaldiFbank, SpecAugment

# --------------------------------------------------------------------------- edge-cnn


POOLINGS = ("mean-max", "max")
"""`EdgeCNNConfig.pooling`'s values."""


@dataclass(frozen=True)
class EdgeCNNConfig:
    stem_channels: int = 24
    stem_kernel: int = 4
    stem_stride: int = 4
    """The stem cuts the log-mel image into 4x4 patches (40 ms x 4 mel bins): training on a CPU runs 5x faster
    than with a 3x3 stride-2 stem, whose full-resolution feature maps dominated the cost (measured with
    `qlung-edge bench training`), for the same parameter count."""
    stages: tuple[tuple[int, int], ...] = (
        (48, 2),
        (64, 2),
        (64, 1),
        (96, 2),
        (96, 1),
        (160, 2),
        (160, 1),
        (256, 2),
        (256, 1),
    )
    """(output channels, stride) of each depthwise-separable block."""
    embed_dim: int = 192
    dropout: float = 0.1
    time_stride: int | None = None
    """Frames (10 ms each) per step of the last feature map, over which the embedding takes its mean and max.
    None: every stage strides in time as in frequency (128 frames, 1.28 s, with the default stem and stages).
    A smaller value of `time_strides()` stops the later stages striding in time, so the max over time can single
    out an event much shorter than the window (a 0.5 s wheeze in 4 s of breathing) instead of seeing it averaged
    into a 1.28 s step. Each step still sees 4.12 s of the input through the later 3x3 kernels: `local_steps`."""
    pooling: str = "mean-max"
    """How the time steps become the embedding: "mean-max", their mean and max side by side; "max", the max alone,
    so that how much of the input a sound fills cannot weigh in (a window holds a wheeze if any step does)."""

    local_steps: bool = False
    """Blocks after `time_stride` is reached no longer mix neighbouring time steps either (3x1 depthwise kernels
    instead of 3x3): each step then sees about 0.9 s of the input (with the default stem, stages and a time_stride of
    32) instead of more than a 4 s window, so the max over steps is a max over local stretches."""

    subtract_window_mean: bool = False
    """Each mel band's mean over the input is subtracted before the first layer. A stethoscope's, a chest site's or
    a patient's frequency response is close to a constant offset per band in log-mel; what is left is how each band
    changes within the window (so a sound that fills one band for the whole window is lost with the offset)."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.local_steps and self.time_stride is None:
            raise ValueError("local_steps needs a time_stride: the steps are local once time stops striding")
        if self.time_stride is None:
            return
        reachable = self.time_strides()
        if self.time_stride not in reachable:
            raise ValueError(
                f"time_stride must be one of {', '.join(map(str, reachable))} frames (the stem's stride times "
                f"the strides of the stages before), got {self.time_stride!r}"
            )

    def time_strides(self) -> list[int]:
        """The frames per step after the stem and after each striding stage: the values `time_stride` takes."""
        out = [self.stem_stride]
        for _, stride in self.stages:
            if stride > 1:
                out.append(out[-1] * stride)
        return out

    def block_kernels(self) -> list[tuple[int, int]]:
        """(frequency, time) kernel of each block's depthwise convolution: 1 along time once the steps are local."""
        out, time = [], self.stem_stride
        for _, along_time in self.block_strides():
            local = self.local_steps and self.time_stride is not None and time >= self.time_stride
            out.append((3, 1) if local else (3, 3))
            time *= along_time
        return out

    def block_strides(self) -> list[tuple[int, int]]:
        """(frequency, time) stride of each block: time stops striding once `time_stride` is reached."""
        if self.time_stride is None:
            return [(stride, stride) for _, stride in self.stages]
        out, time = [], self.stem_stride
        for _, stride in self.stages:
            along_time = stride if time * stride <= self.time_stride else 1
            time *= along_time
            out.append((stride, along_time))
        return out


class SeparableBlock(nn.Module):
    """3x3 depthwise then 1x1 pointwise convolution, each with batch norm; residual when shapes allow."""

    def __init__(
        self, channels_in: int, channels_out: int, stride: tuple[int, int], kernel: tuple[int, int] = (3, 3)
    ) -> None:
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.depthwise = nn.Conv2d(channels_in, channels_in, kernel, stride, padding, groups=channels_in, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_in)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.residual = stride == (1, 1) and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.depthwise(x)))
        y = self.bn2(self.pointwise(y))
        return F.relu(y + x if self.residual else y)


class EdgeCNN(nn.Module):
    """Log-mel [B, frames, mels] to an embedding [B, embed_dim]."""

    def __init__(self, config: EdgeCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EdgeCNNConfig()
        padding = (config.stem_kernel - config.stem_stride + 1) // 2
        self.stem = nn.Sequential(
            nn.Conv2d(1, config.stem_channels, config.stem_kernel, config.stem_stride, padding, bias=False),
            nn.BatchNorm2d(config.stem_channels),
            nn.ReLU(),
        )
        blocks, channels = [], config.stem_channels
        for (out, _), stride, kernel in zip(config.stages, config.block_strides(), config.block_kernels()):
            blocks.append(SeparableBlock(channels, out, stride, kernel))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.channels = channels
        """Channels of the last feature map (per time step)."""
        self.project = nn.Linear((2 if config.pooling == "mean-max" else 1) * channels, config.embed_dim)
        self.embed_dim = config.embed_dim

    def steps(self, logmel: torch.Tensor) -> torch.Tensor:
        """The last feature map averaged over frequency: [B, channels, time steps]."""
        if self.config.subtract_window_mean:
            logmel = logmel - logmel.mean(dim=1, keepdim=True)
        x = self.blocks(self.stem(logmel.transpose(1, 2).unsqueeze(1)))  # [B, C, mels', frames']
        return x.mean(dim=2)

    def pool(self, steps: torch.Tensor) -> torch.Tensor:
        """Time steps [B, C, T'] to the embedding, from their mean and max over time (or the max alone)."""
        pooled = steps.amax(dim=2)
        if self.config.pooling == "mean-max":
            pooled = torch.cat([steps.mean(dim=2), pooled], dim=1)
        return self.project(self.dropout(pooled))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.pool(self.steps(logmel))


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class ASTConfig:
    embed_dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch: int = 16
    stride: int = 10
    n_mels: int = 128
    frames: int = FRAMES_PER_WINDOW

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along frequency and time."""
        return (self.n_mels - self.patch) // self.stride + 1, (self.frames - self.patch) // self.stride + 1


class PatchEmbed(nn.Module):
    def __init__(self, config: ASTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, config.embed_dim, config.patch, config.stride)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, n, d = x.shape  # -1 for the batch: a reshape by x.shape[0] exports as Shape ops TensorRT 8.x misreads
        q, k, v = self.qkv(x).reshape(-1, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(-1, n, d))


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU written with erf: exports as Erf, which every TensorRT parser has (ONNX Gelu needs opset 20,
    and TensorRT reads it only from 10.0)."""
    return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


class LayerNorm(nn.Module):
    """nn.LayerNorm over the last axis, written out: exports as ReduceMean/Sub/Mul/Sqrt/Div, which TensorRT 8.5
    parses (it has no LayerNormalization importer; 8.6 and later do). Same parameter names as nn.LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = (centred * centred).mean(dim=-1, keepdim=True)
        return centred / torch.sqrt(variance + self.eps) * self.weight + self.bias


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DistilledViT(nn.Module):
    """DeiT with a distillation token; names follow timm, as in AST's `v` submodule."""

    def __init__(self, config: ASTConfig) -> None:
        super().__init__()
        f, t = config.grid
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, f * t + 2, config.embed_dim))
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = LayerNorm(config.embed_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.dist_token, std=0.02)


class AST(nn.Module):
    """Audio Spectrogram Transformer: log-mel [B, frames, mels] to the mean of its two token outputs."""

    def __init__(self, config: ASTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ASTConfig()
        self.v = DistilledViT(config)
        self.embed_dim = config.embed_dim

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = logmel.unsqueeze(1).transpose(2, 3)  # [B, 1, mels, frames], as AST
        x = self.v.patch_embed.proj(x).flatten(2).transpose(1, 2)
        # Broadcast the two tokens over the batch by adding zeros shaped like it (no Shape/Expand in the graph).
        tokens = torch.cat([self.v.cls_token, self.v.dist_token], dim=1) + torch.zeros_like(x[:, :2])
        x = torch.cat([tokens, x], dim=1) + self.v.pos_embed
        for block in self.v.blocks:
            x = block(x)
        x = self.v.norm(x)
        return (x[:, 0] + x[:, 1]) / 2


def adapt_position_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, D, H, W] position embeddings to `size`: centre-crop an axis that shrinks, interpolate one that grows."""
    for axis, target in ((2, size[0]), (3, size[1])):
        current = grid.shape[axis]
        if target < current:
            start = (current - target) // 2
            grid = grid.narrow(axis, start, target)
        elif target > current:
            new = list(grid.shape[2:])
            new[axis - 2] = target
            grid = F.interpolate(grid, size=tuple(new), mode="bilinear", align_corners=False)
    return grid


def load_ast_weights(model: AST, state: dict[str, torch.Tensor]) -> list[str]:
    """Load an AudioSet AST checkpoint or an ImageNet DeiT state dict into `model.v`; returns ignored keys.

    AudioSet AST (`module.v.*`, `module.mlp_head.*`): position embeddings are cropped or stretched to this
    model's patch grid. ImageNet DeiT (`cls_token`, `blocks.*`, `head.*`): the RGB patch filters are summed to
    one input channel and the square position grid is adapted the same way. Classifier heads are ignored:
    the QLung head is trained for the four classes.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("v.") for k in state):
        body = {k[2:]: v for k, v in state.items() if k.startswith("v.")}
        ignored = sorted(k for k in state if not k.startswith("v."))
    else:
        body = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))}
        ignored = sorted(set(state) - set(body))
    if "pos_embed" not in body or "patch_embed.proj.weight" not in body:
        raise ValueError("not an AST or DeiT state dict: no pos_embed or patch_embed.proj.weight")
    dim = model.config.embed_dim
    if body["pos_embed"].shape[-1] != dim:
        raise ValueError(f"pos_embed has width {body['pos_embed'].shape[-1]}, this AST has {dim}")
    patch = body["patch_embed.proj.weight"]
    if patch.shape[1] == 3:
        body["patch_embed.proj.weight"] = patch.sum(dim=1, keepdim=True)
    pos = body["pos_embed"]
    tokens = pos.shape[1] - 2
    f, t = model.config.grid
    side = int(round(tokens**0.5))
    old = (side, side) if side * side == tokens else (f, tokens // f)  # ImageNet grids are square
    if old[0] * old[1] != tokens:
        raise ValueError(f"cannot read a patch grid from pos_embed with {tokens} patches")
    grid = pos[:, 2:].transpose(1, 2).reshape(1, dim, *old)
    grid = adapt_position_grid(grid, (f, t)).reshape(1, dim, f * t).transpose(1, 2)
    body["pos_embed"] = torch.cat([pos[:, :2], grid], dim=1)
    missing, unexpected = model.v.load_state_dict(body, strict=False)
    if missing or unexpected:
        raise ValueError(f"state dict does not fit this AST: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ignored


# --------------------------------------------------------------------------- heads and the whole model


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row divided by its L2 norm (at least `eps`), as `F.normalize(x, dim=1)` computes it.

    Written out because `F.normalize` exports as Shape(start, end) -> Expand, and TensorRT 8.5/8.6 ignore
    Shape's start/end: the head's Gemm then sees a rank-3 input and the Jetson's parser stops. Broadcasting a
    keepdim norm needs neither Shape nor Expand.
    """
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)


class AngularHead(nn.Module):
    """cos(theta_k) between the L2-normalised embedding and class weights; logits are s_a * cos."""

    def __init__(self, embed_dim: int, classes: int, scale: float = 37.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(unit_rows(embedding), unit_rows(self.weight))

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cosine(embedding)
        return self.scale * cos, cos


class LinearHead(AngularHead):
    """Plain linear logits for the CE baseline; the cosine to its weights still feeds margin ablations."""

    def __init__(self, embed_dim: int, classes: int) -> None:
        super().__init__(embed_dim, classes, scale=1.0)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.linear(embedding, self.weight, self.bias), self.cosine(embedding)


BACKBONES = ("edge-cnn", "ast")
STEP_CHANNELS = 2
"""Sounds the step detector says yes or no to per step: crackle, wheeze (`training.timing.CHANNELS`)."""


class QLungModel(nn.Module):
    """Raw 16 kHz waveform [B, samples] to logits, probabilities, cosines and embedding."""

    def __init__(
        self,
        backbone: str = "edge-cnn",
        head: str = "angular",
        classes: tuple[str, ...] = CLASS_NAMES,
        scale: float = 37.0,
        frontend: FrontEndConfig | None = None,
        edge: EdgeCNNConfig | None = None,
        ast: ASTConfig | None = None,
        spec_augment: SpecAugment | None = None,
        step_detector: bool = False,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r} (expected one of {', '.join(BACKBONES)})")
        if head not in ("angular", "linear"):
            raise ValueError(f"unknown head {head!r} (expected angular or linear)")
        self.backbone_name, self.head_name, self.classes = backbone, head, tuple(classes)
        self.frontend = KaldiFbank(frontend)
        self.augment = spec_augment or SpecAugment(freq_masks=0, time_masks=0)
        frames = self.frontend.config.frames(WINDOW_SAMPLES)
        self.backbone: nn.Module = (
            EdgeCNN(edge)
            if backbone == "edge-cnn"
            else AST(ast or ASTConfig(frames=frames, n_mels=self.frontend.config.n_mels))
        )
        dim = self.backbone.embed_dim
        self.head = AngularHead(dim, len(classes), scale) if head == "angular" else LinearHead(dim, len(classes))
        self.quality_head: nn.Linear | None = None
        """P(poor recording) from the embedding (`training.quality_model`); None until one is fitted."""
        self.step_head: nn.Conv1d | None = None
        """Crackle and wheeze logits per time step (`training.timing`); trained, never exported."""
        if step_detector:
            if not isinstance(self.backbone, EdgeCNN):
                raise ValueError("a per-step event detector needs the edge-cnn backbone")
            with torch.random.fork_rng(devices=[]):  # the rest of training draws as without it
                self.step_head = nn.Conv1d(self.backbone.channels, STEP_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`x`: a raw 16 kHz waveform [B, samples], or its log-mel [B, frames, mels] already computed (the
        training cache: the front end is deterministic, so it runs once per example, not once per epoch)."""
        if x.dim() == 3:
            logmel = x.float()
        else:
            with torch.autocast(x.device.type, enabled=False):  # the log-mel needs float32 under AMP
                logmel = self.frontend(x.float())
        step_logits = None
        if self.step_head is not None and self.training:
            assert isinstance(self.backbone, EdgeCNN)
            logmel, blanked = self.augment.with_time_mask(logmel)
            steps = self.backbone.steps(logmel)
            embedding, step_logits = self.backbone.pool(steps), self.step_head(steps)
        else:
            embedding = self.backbone(self.augment(logmel))
        logits, cos = self.head(embedding)
        out = {"logits": logits, "probabilities": logits.softmax(dim=1), "cosine": cos, "embedding": embedding}
        if step_logits is not None:
            out["steps"], out["blanked_frames"] = step_logits, blanked
        if self.quality_head is not None:
            out["poor"] = torch.sigmoid(self.quality_head(embedding)).squeeze(1)
        return out

    def step_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [B, classes], step detector logits [B, 2, steps]) of waveforms or cached log-mel, without
        SpecAugment: how `scripts/step_detector.py` reads the detector beside the head."""
        if self.step_head is None or not isinstance(self.backbone, EdgeCNN):
            raise QLungError("this model has no step detector (trained without train.event_timing)")
        logmel = x.float() if x.dim() == 3 else self.frontend(x.float())
        steps = self.backbone.steps(logmel)
        return self.head(self.backbone.pool(steps))[0], self.step_head(steps)

    def attach_quality_head(self) -> nn.Linear:
        """An (unfitted) quality head on the embedding, on the model's device; its output is `poor`, exported with
        the rest."""
        self.quality_head = nn.Linear(self.backbone.embed_dim, 1).to(next(self.backbone.parameters()).device)
        return self.quality_head

    @property
    def output_names(self) -> tuple[str, ...]:
        """The outputs an exported graph has, in order."""
        return OUTPUT_NAMES + (("poor",) if self.quality_head is not None else ())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, samples: int = WINDOW_SAMPLES) -> int:
    """FLOPs (a multiply-add counts 2) of one forward pass on one window, as torch's flop counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, samples))
    model.train(was_training)
    return counter.get_total_flops()


def load_pretrained(model: QLungModel, path: str | Path) -> list[str]:
    """Load a local AST/DeiT checkpoint file (tensors only, never arbitrary pickles) into an AST model."""
    if not isinstance(model.backbone, AST):
        raise QLungError(f"--pretrained needs the ast backbone, this model is {model.backbone_name}")
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise QLungError("pretrained checkpoint does not exist", path=path) from None
    except Exception as err:  # torch raises many kinds for a file that is not a tensor checkpoint
        raise QLungError(f"not a loadable tensor checkpoint ({err})", path=path) from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # DeiT releases wrap the weights
    try:
        return load_ast_weights(model.backbone, state)
    except ValueError as err:
        raise QLungError(f"{err}", path=path) from err
