"""The training configuration: typed dataclasses loaded from YAML, with ``--set`` overrides.

A config file (``training/configs/*.yaml``) has one mapping per section::

    data:          where the samples come from, the split, input size, label transform, cache
    augment:       flip / scale+crop / colour jitter / blur+noise of the training pairs
    model:         a UNet preset plus field overrides (num_classes comes from the class set)
    loss:          focal | ce | dice | focal+dice | ce+dice, gamma, alpha from frequencies
    optim:         AdamW, warmup + poly|cosine schedule, gradient clipping
    train:         epochs, batch size, device, AMP, seed, checkpoint / log / validation cadence
    normalization: mean, std, channel order (semseg_ros.pipeline.Normalization)

Every key is checked against the dataclass that holds it: an unknown key or a value of the
wrong type is a :class:`ConfigError` naming the key, the file and the valid choices. Values
of ``--set section.key=value`` are parsed as YAML (``1e-3``, ``true``, ``[320, 240]``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from semseg_ros.pipeline import IMAGENET_MEAN, IMAGENET_STD, Normalization

from .data.lyft import LabelTransform
from .losses import LOSS_NAMES
from .model import PRESETS, UNetConfig, preset

#: The config ``semseg train`` uses when no ``--config`` is given.
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEFAULT_CONFIG = CONFIG_DIR / 'cpu.yaml'


# YAML 1.1 reads '1e-3' as a string (it wants '1.0e-3'); on the command line a number is meant.
_NUMBER = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+')


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it and how to fix it."""


# --- Sections -------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """Generate a synthetic dataset into ``data.data_dir`` when that folder does not exist."""

    frames: int = 600
    seed: int = 0
    #: [width, height] of the generated PNGs; None: the generator's default (800x600).
    size: list[int] | None = None
    #: Generator processes (capped at the CPU count). 1 (in-process) is ~50 ms per 800x600
    #: frame, and a multi-process pool forked after torch started its threads can hang.
    workers: int = 1


@dataclass
class DataConfig:
    #: Dataset root in the Lyft-Udacity layout (dataA..dataE or CameraRGB/ + CameraSeg/).
    data_dir: str | None = None
    #: A manifest from ``semseg data split``; default: DATA_DIR/manifest.json if present, else
    #: one written into the run folder with ``split``.
    manifest: str | None = None
    #: How to split when no manifest exists: auto (original A,B,C/D/E when those episodes
    #: exist, else random), original, episodes (whole episodes per split), random.
    split: Literal['auto', 'original', 'episodes', 'random'] = 'auto'
    split_seed: int = 0
    #: Random split sizes for train, val, test: fractions (0.8) or counts (640).
    split_sizes: list[int | float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    #: Class set name or YAML; None: the manifest's.
    class_set: str | None = None
    #: [width, height] the model is fed (after the label transform's crop): frames are
    #: resized to this once; validation, test and inference run on it.
    input_size: list[int] = field(default_factory=lambda: [320, 240])
    #: [width, height] of random training crops cut from the input_size frames (same pixel
    #: scale, so small objects keep their size at a fraction of the compute); None: whole.
    train_crop: list[int] | None = None
    merge_roadlines: bool = False
    hood_row: int | None = None
    crop_top: int = 0
    crop_bottom: int = 0
    #: Keep the decoded, resized uint8 pairs in RAM (decode each PNG once).
    cache: bool = True
    num_workers: int = 0
    synthetic: SyntheticConfig | None = None

    def label_transform(self) -> LabelTransform:
        return LabelTransform(
            merge_roadlines=self.merge_roadlines,
            hood_row=self.hood_row,
            crop_top=self.crop_top,
            crop_bottom=self.crop_bottom,
        )


@dataclass
class AugmentConfig:
    """Training-only augmentation (see :mod:`training.augment`); 0 turns a part off."""

    enabled: bool = True
    hflip: float = 0.5  # probability
    scale: list[float] = field(default_factory=lambda: [0.75, 1.25])  # zoom range, then crop
    brightness: float = 0.25  # +- fraction
    contrast: float = 0.25  # +- fraction
    saturation: float = 0.25  # +- fraction
    hue: float = 0.03  # +- fraction of the colour circle
    blur: float = 0.1  # probability of a 3x3 / 5x5 Gaussian blur
    noise: float = 0.1  # probability of Gaussian noise
    noise_std: float = 6.0  # in 0..255 pixel units


@dataclass
class ModelSection:
    """A preset from :data:`training.model.PRESETS`; any other field set here overrides it."""

    preset: str = 'realtime'
    base_channels: int | None = None
    depth: int | None = None
    batch_norm: bool | None = None
    upsampling: Literal['transpose', 'bilinear', 'nearest'] | None = None
    dropout: float | None = None
    pad_mode: Literal['replicate', 'constant'] | None = None
    stem_stride: int | None = None

    def unet_config(self, num_classes: int) -> UNetConfig:
        overrides = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != 'preset' and getattr(self, f.name) is not None
        }
        return preset(self.preset, num_classes=num_classes, **overrides)


@dataclass
class LossConfig:
    name: str = 'focal+dice'
    gamma: float = 2.0
    #: Per-class alpha (focal) / weight (CE) from pixel frequencies of the training split.
    alpha_from_frequencies: bool = True
    alpha_method: Literal['inverse_log', 'inverse_sqrt', 'median_freq'] = 'inverse_log'
    dice_weight: float = 1.0
    ignore_index: int = 255


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    schedule: Literal['poly', 'cosine', 'constant'] = 'poly'
    poly_power: float = 0.9
    #: The schedule decays to ``lr * min_lr_ratio``.
    min_lr_ratio: float = 0.0
    #: Max gradient norm; 0 or None: no clipping.
    grad_clip: float | None = 1.0


@dataclass
class TrainSection:
    epochs: int = 10
    batch_size: int = 8
    #: Mixed precision (torch.amp autocast + GradScaler); only ever used on CUDA.
    amp: bool = True
    seed: int = 0
    device: Literal['auto', 'cpu', 'cuda'] = 'auto'
    #: torch.use_deterministic_algorithms (CPU; on CUDA it needs CUBLAS_WORKSPACE_CONFIG).
    deterministic: bool = True
    #: torch.set_num_threads; None leaves torch's default.
    num_threads: int | None = None
    channels_last: bool = False
    #: Write OUT/last.pt every N optimizer steps (and always at the end of an epoch).
    checkpoint_every_steps: int = 200
    log_every: int = 10  # steps between TensorBoard scalars
    image_every: int = 200  # steps between TensorBoard image grids; 0: off
    val_every: int = 1  # epochs between validations; 0: only after the last epoch
    #: Stop after this many optimizer steps in total (None: run all epochs). For tests and
    #: quick looks; the LR schedule still spans all epochs.
    max_steps: int | None = None
    #: Images per TensorBoard grid.
    num_images: int = 4
    #: Evaluate best.pt on the test split after training (when the manifest has one).
    test_at_end: bool = True


@dataclass
class NormalizationSection:
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    channel_order: Literal['RGB', 'BGR'] = 'RGB'

    def build(self) -> Normalization:
        return Normalization(tuple(self.mean), tuple(self.std), self.channel_order)


@dataclass
class Config:
    """The whole training configuration; ``to_dict()`` is what ``OUT/config.yaml`` holds."""

    name: str = 'train'
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    normalization: NormalizationSection = field(default_factory=NormalizationSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check the values across fields; raises :class:`ConfigError`. Returns self."""
        problems: list[str] = []
        d, t, o = self.data, self.train, self.optim
        if d.data_dir is None and d.manifest is None:
            problems.append('data.data_dir or data.manifest must be set (or pass --data-dir)')
        if len(d.input_size) != 2 or any(v < 8 for v in d.input_size):
            problems.append(f'data.input_size must be [width, height] >= 8, got {d.input_size}')
        if d.train_crop is not None and (
            len(d.train_crop) != 2
            or not all(8 <= c <= i for c, i in zip(d.train_crop, d.input_size, strict=False))
        ):
            problems.append(
                f'data.train_crop must be [width, height] within data.input_size '
                f'{d.input_size}, got {d.train_crop}'
            )
        if len(d.split_sizes) != 3 or any(v < 0 for v in d.split_sizes):
            problems.append(f'data.split_sizes must be 3 numbers >= 0, got {d.split_sizes}')
        if d.num_workers < 0:
            problems.append(f'data.num_workers must be >= 0, got {d.num_workers}')
        if d.synthetic is not None and d.synthetic.frames < 5:
            problems.append(f'data.synthetic.frames must be >= 5, got {d.synthetic.frames}')
        try:
            d.label_transform()
        except ValueError as err:
            problems.append(f'data: {err}')
        a = self.augment
        if len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1]:
            problems.append(f'augment.scale must be [min, max] with 0 < min <= max: {a.scale}')
        for key in ('hflip', 'blur', 'noise'):
            if not 0.0 <= getattr(a, key) <= 1.0:
                problems.append(f'augment.{key} is a probability in [0, 1], got {getattr(a, key)}')
        if self.model.preset not in PRESETS:
            problems.append(
                f'model.preset {self.model.preset!r} is unknown; choose one of {sorted(PRESETS)}'
            )
        else:
            try:
                self.model.unet_config(num_classes=13)
            except ValueError as err:
                problems.append(f'model: {err}')
        if self.loss.name not in LOSS_NAMES:
            problems.append(f'loss.name {self.loss.name!r} is unknown; choose one of {LOSS_NAMES}')
        if self.loss.gamma < 0:
            problems.append(f'loss.gamma must be >= 0, got {self.loss.gamma}')
        if o.lr <= 0:
            problems.append(f'optim.lr must be > 0, got {o.lr}')
        if o.warmup_steps < 0 or o.weight_decay < 0:
            problems.append('optim.warmup_steps and optim.weight_decay must be >= 0')
        if not 0.0 <= o.min_lr_ratio <= 1.0:
            problems.append(f'optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}')
        if t.epochs < 1 or t.batch_size < 1:
            problems.append(
                f'train.epochs and train.batch_size must be >= 1, got {t.epochs}, {t.batch_size}'
            )
        for key in ('checkpoint_every_steps', 'log_every', 'image_every', 'val_every'):
            if getattr(t, key) < 0:
                problems.append(f'train.{key} must be >= 0, got {getattr(t, key)}')
        if t.max_steps is not None and t.max_steps < 1:
            problems.append(f'train.max_steps must be >= 1 or null, got {t.max_steps}')
        try:
            self.normalization.build()
        except ValueError as err:
            problems.append(f'normalization: {err}')
        if problems:
            raise ConfigError('invalid training config: ' + '; '.join(problems))
        return self


# --- Building dataclasses from plain data ---------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, '__name__', None) or str(tp).replace('typing.', '')


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and where harmless, converted) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f'{where} must not be null')
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f'{where}: ' + ' / '.join(errors))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f'{where} must be one of {list(choices)}, got {value!r}')
        return value
    if origin in (list, Sequence):
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where} must be a list, got {value!r}')
        return [_convert(v, item_tp, f'{where}[{i}]') for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f'{where} must be a mapping, got {value!r}')
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where} must be true or false, got {value!r}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where} must be an integer, got {value!r}')
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # `lr: 3e-3` in a YAML file
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where} must be a number, got {value!r}')
        return float(value)
    if tp is str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a folder named 2024
        if not isinstance(value, (str, Path)):
            raise ConfigError(f'{where} must be a string, got {value!r}')
        return str(value)
    raise ConfigError(f'{where}: unsupported type {_type_name(tp)}')  # a bug in this module


def from_dict(cls: type, data: Any, where: str = 'config') -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and value."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f'{where} must be a mapping of keys to values, got {data!r}')
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        msg = f'{where}: unknown key(s) {unknown}; valid keys are {names}'
        raise ConfigError(msg)
    kwargs = {
        k: _convert(v, hints[k], f'{where}.{k}' if where != 'config' else k)
        for k, v in data.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=1e-3'`` -> ``(['optim', 'lr'], 0.001)``; the value is parsed as YAML."""
    key, sep, raw = text.partition('=')
    keys = [k.strip() for k in key.split('.')]
    if not sep or not all(keys):
        msg = f'--set {text!r}: write section.key=value, e.g. optim.lr=1e-3 or data.cache=false'
        raise ConfigError(msg)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f'--set {text!r}: the value is not valid YAML ({err})') from err
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``section.key=value`` applied (nested keys are created as needed)."""
    data = _merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f'--set {text!r}: {key} is a value, not a section')
                node[key] = child
            node = child
        node[keys[-1]] = value
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        shipped = ', '.join(sorted(p.name for p in CONFIG_DIR.glob('*.yaml')))
        msg = f'config file {path} does not exist; shipped configs: {shipped} in {CONFIG_DIR}'
        raise ConfigError(msg) from err
    except yaml.YAMLError as err:
        raise ConfigError(f'config file {path} is not valid YAML: {err}') from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping of sections, got {data!r}')
    return data


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or a shipped config by bare name (``tiny``, ``gpu.yaml``)."""
    path = Path(path)
    if path.exists() or path.parent != Path('.'):
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f'{path.name}.yaml'):
        if candidate.is_file():
            return candidate
    return path


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    validate: bool = True,
) -> Config:
    """Load a YAML config (default :data:`DEFAULT_CONFIG`), apply ``--set`` overrides, check it.

    A config may name a ``base:`` config file (relative to itself) whose values it extends.
    """
    data: dict[str, Any] = {}
    source = 'config'
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        data = _read_yaml(path)
        seen = {path.resolve()}
        while 'base' in data:
            base_path = (path.parent / str(data.pop('base'))).resolve()
            if base_path in seen:
                raise ConfigError(f'config {source}: "base" files form a loop at {base_path}')
            seen.add(base_path)
            data = _merge(_read_yaml(base_path), data)
    data = apply_overrides(data, overrides)
    try:
        config = from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f'{source}: {err}') from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f'{source}: {err}') from err
    if validate:
        try:
            config.validate()
        except ConfigError as err:
            raise ConfigError(f'{source}: {err}') from err
    return config


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """The inverse of :meth:`Config.to_dict` (e.g. a checkpoint's ``train_config``)."""
    return from_dict(Config, dict(data))


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (``OUT/config.yaml``); loadable with ``--config``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
