"""UNet (Ronneberger, Fischer & Brox, 2015) for per-pixel classification of camera frames.

The classic encoder-decoder with skip connections, with two changes that make it practical:
3x3 convolutions are padded ("same"), so the output has the input's size, and inputs whose
height or width is not a multiple of ``2 ** depth`` are padded inside :meth:`UNet.forward`
and the logits cropped back, so an 800x600 CARLA frame just works.

Presets (measured with :func:`count_parameters` and :func:`count_macs` on a 1x3x600x800
input, 13 classes; MACs count convolutions only, one multiply-accumulate each, and include
the padding of 600 to 608 rows). CPU time: one forward pass, batch 1, one thread of the
2-core x86 dev box, torch 2.13 CPU, ``inference_mode`` (indicative only):

========  ====  =====  ===========  ==========  ==========  =============  ==============
preset    base  depth  stem stride  upsampling  parameters  GMACs 800x600  CPU ms 800x600
========  ====  =====  ===========  ==========  ==========  =============  ==============
realtime  16    3      2            nearest     0.45 M      4.19           ~120
accurate  32    5      1            transpose   31.1 M      110.9          ~2500
========  ====  =====  ===========  ==========  ==========  =============  ==============

``realtime`` is shaped for CPUs and INT8: the classic full-resolution first level with 8
channels (0.49 M parameters, 5.73 GMACs) spent most of its time in thin layers where
onnxruntime's int8 kernels are no faster than float (INT8 1.01x FP32); this one trains twice
as fast on the CPU, scores higher there (test mIoU 0.736 vs 0.705) and runs INT8 1.6x faster
than FP32 (models/README.md). Its logits come from the half-resolution first level, repeated
2x2: thin classes (road lines) lose a little of their edges.

(The original paper's network is ``base_channels=64, depth=4``: 31.0 M parameters.)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Upsampling = Literal['transpose', 'bilinear', 'nearest']
PadMode = Literal['replicate', 'constant']


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet`; checkpoints carry ``to_dict()``.

    ``depth`` is the number of 2x downsamplings (the paper's network has 4); the channel
    count at level ``i`` is ``base_channels * 2 ** i``. ``upsampling='bilinear'`` is the
    resize-then-convolve decoder (no checkerboard artefacts, fewer parameters);
    ``'transpose'`` is the paper's learned 2x2 up-convolution; ``'nearest'`` projects with a
    1x1 convolution, then repeats pixels 2x2 (see :class:`Up`). ``dropout`` applies
    ``Dropout2d`` at the bottleneck, as the paper does at the end of the contracting path.
    ``pad_mode`` fills the padding added for sizes that are not multiples of
    :attr:`size_multiple`.

    ``stem_stride=2`` makes the first convolution stride 2, so the first level (the fewest
    channels on the most pixels) runs at half resolution, and the logits are upsampled 2x at
    the end (bilinear with ``upsampling='bilinear'``, else nearest). On a CPU, thin
    full-resolution layers dominate the time and gain nothing from INT8: onnxruntime's int8
    convolutions beat float only from about 16 channels up (models/README.md).
    """

    num_classes: int = 13
    in_channels: int = 3
    base_channels: int = 32
    depth: int = 4
    batch_norm: bool = True
    upsampling: Upsampling = 'transpose'
    dropout: float = 0.0
    pad_mode: PadMode = 'replicate'
    stem_stride: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.num_classes < 1:
            problems.append(f'num_classes must be >= 1, got {self.num_classes}')
        if self.in_channels < 1:
            problems.append(f'in_channels must be >= 1, got {self.in_channels}')
        if self.base_channels < 1:
            problems.append(f'base_channels must be >= 1, got {self.base_channels}')
        if not 1 <= self.depth <= 7:
            problems.append(f'depth must be 1..7 downsamplings, got {self.depth}')
        if self.upsampling not in ('transpose', 'bilinear', 'nearest'):
            choices = "'transpose', 'bilinear' or 'nearest'"
            problems.append(f'upsampling must be {choices}, got {self.upsampling!r}')
        if self.stem_stride not in (1, 2):
            problems.append(f'stem_stride must be 1 or 2, got {self.stem_stride}')
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f'dropout must be in [0, 1), got {self.dropout}')
        if self.pad_mode not in ('replicate', 'constant'):
            problems.append(f"pad_mode must be 'replicate' or 'constant', got {self.pad_mode!r}")
        if problems:
            raise ValueError('invalid UNetConfig: ' + '; '.join(problems))

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (``stem_stride * 2 ** depth``)."""
        return self.stem_stride * 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer or foreign file)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f'unknown UNetConfig keys {unknown}; valid keys are {sorted(known)}'
            raise ValueError(msg)
        return cls(**dict(data))


PRESETS: dict[str, UNetConfig] = {
    # CPU-first: the first level at half resolution, no layer thinner than 16 channels, a
    # decoder that stays int8 in onnxruntime (models/README.md has the measurements).
    'realtime': UNetConfig(base_channels=16, depth=3, stem_stride=2, upsampling='nearest'),
    # The paper's capacity (its deepest level has 1024 channels too) with one level more
    # of receptive field for 800x600 frames.
    'accurate': UNetConfig(base_channels=32, depth=5),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    """A preset config with fields replaced, e.g. ``preset('realtime', num_classes=23)``."""
    if name not in PRESETS:
        raise ValueError(f'unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}')
    return replace(PRESETS[name], **overrides)


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> [BN] -> ReLU) x 2. Shape: (N, C_in, H, W) -> (N, C_out, H / s, W / s).

    ``stride`` (s) applies to the first convolution (the stem of ``stem_stride=2``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, batch_norm: bool = True, stride: int = 1
    ) -> None:
        layers: list[nn.Module] = []
        for c_in, s in ((in_channels, stride), (out_channels, 1)):
            # The bias is redundant in front of batch norm (BN subtracts the mean).
            layers.append(
                nn.Conv2d(c_in, out_channels, 3, stride=s, padding=1, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample 2x, halve the channels, concatenate the skip, DoubleConv.

    Shape: x (N, 2C, H, W), skip (N, C, 2H, 2W) -> (N, C, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig) -> None:
        super().__init__()
        if config.upsampling == 'transpose':
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif config.upsampling == 'nearest':
            # A 1x1 convolution commutes with pixel repetition, so projecting first is the
            # same function as repeat-then-project at a quarter of the MACs (a transposed 2x2
            # convolution with four equal taps). Both ops run in int8 in onnxruntime, where a
            # bilinear resize or a transposed convolution falls back to float.
            self.up = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1),
                nn.Upsample(scale_factor=2, mode='nearest'),
            )
        else:
            # Resize-convolution (Odena et al., 2016); exports as an ONNX Resize + Conv.
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False),
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, config.batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (N, C, 2H, 2W)
        return self.conv(torch.cat([skip, x], dim=1))  # (N, 2C, 2H, 2W) -> (N, C, 2H, 2W)


class UNet(nn.Module):
    """UNet returning per-pixel class logits at the input resolution.

    Shape:
        input: (N, in_channels, H, W) float, any H, W >= 1 (normalized image).
        output: (N, num_classes, H, W) float logits (no softmax).

    Traceable for ONNX export: the padding is computed from ``x.shape`` with plain
    arithmetic (no branch on sizes or values), so a traced graph (``torch.onnx.export(...,
    dynamo=False, dynamic_axes=...)``) serves every input size. ``torch.export`` with
    dynamic H, W does not yet prove the padded sizes divisible; export it at a fixed size.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.inc = DoubleConv(config.in_channels, c[0], config.batch_norm, config.stem_stride)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(c[i], c[i + 1], config.batch_norm))
            for i in range(config.depth)
        )
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(Up(c[i + 1], c[i], config) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(c[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2], x.shape[-1]
        m = self.config.size_multiple
        # Pad bottom / right up to a multiple of m so every downsampling halves exactly and
        # each upsampled map matches its skip. Replicate (default) rather than zeros: the
        # padded strip is cropped away, but its content leaks into the kept border pixels
        # through the receptive field, and repeating the edge adds no artificial edge there.
        # Always pad (maybe by 0) so the exported graph has no shape-dependent branch.
        # ceil(H / m) * m - H: plain size arithmetic, which the tracer records as graph ops.
        pad_h = (H + m - 1) // m * m - H
        pad_w = (W + m - 1) // m * m - W
        x = F.pad(x, [0, pad_w, 0, pad_h], mode=self.config.pad_mode)  # (N, C_in, Hp, Wp)

        # (h, w) = (Hp, Wp) / stem_stride: the first level's size.
        skips = [self.inc(x)]  # (N, c0, h, w)
        for down in self.downs:
            skips.append(down(skips[-1]))  # (N, c_i, h / 2^i, w / 2^i)
        y = self.dropout(skips.pop())  # (N, c_depth, h / 2^depth, w / 2^depth)
        for up in self.ups:
            y = up(y, skips.pop())  # each: channels / 2, size x 2
        logits = self.head(y)  # (N, num_classes, h, w)
        if self.config.stem_stride > 1:
            mode = 'bilinear' if self.config.upsampling == 'bilinear' else 'nearest'
            logits = F.interpolate(logits, scale_factor=float(self.config.stem_stride), mode=mode)
        return logits[..., :H, :W]  # (N, num_classes, H, W)


def build_model(config: UNetConfig | Mapping[str, Any] | str) -> UNet:
    """A UNet from a config, its ``to_dict()`` form, or a preset name."""
    if isinstance(config, str):
        config = preset(config)
    elif isinstance(config, Mapping):
        config = UNetConfig.from_dict(config)
    return UNet(config)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 600, 800)) -> int:
    """Multiply-accumulates of the convolutions in one forward pass at ``input_shape``.

    Runs a copy of the model on the ``meta`` device (shapes only, no arithmetic), so it is
    cheap at any size. Batch norm, activations, pooling and resizes are not counted; they
    are a few percent of the total.
    """
    meta_model = copy.deepcopy(model).to('meta').eval()
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        k = module.weight.shape  # Conv2d: (out, in/g, kh, kw); ConvTranspose2d: (in, out/g, ..)
        if isinstance(module, nn.ConvTranspose2d):
            # Each input pixel scatters into out/g x kh x kw outputs.
            total += _inputs[0].numel() * k[1] * k[2] * k[3]
        else:
            total += output.numel() * k[1] * k[2] * k[3]

    handles = [
        mod.register_forward_hook(hook)
        for mod in meta_model.modules()
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            meta_model(torch.empty(input_shape, device='meta'))
    finally:
        for h in handles:
            h.remove()
    return total
