"""Self-describing training checkpoints, written atomically and loaded with ``weights_only``.

A checkpoint carries everything needed to rebuild and use its model without the run that
made it: the model config, the class set, the input size and normalization (the one
preprocessing path, :mod:`semseg_ros.pipeline`), the label preprocessing, the training
config, and, for ``--resume``, the optimizer/scheduler/scaler/RNG state and the position in
the run.  Only plain containers, numbers, strings and tensors are stored, so
``torch.load(weights_only=True)`` (no pickled code) can read it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from semseg_ros.labels import ClassSet, ClassSetError, class_set_from_dict
from semseg_ros.model_file import ModelInfo
from semseg_ros.pipeline import InputSpec, Normalization
from semseg_ros.staged_output import remove_stale_temporaries, temporary_for

from .model import UNet, UNetConfig, build_model

#: Bumped when the stored layout changes incompatibly.
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit what it is used for."""


@dataclass
class Checkpoint:
    model_config: dict[str, Any]
    class_set: dict[str, Any]  # ClassSet.to_dict()
    normalization: dict[str, Any]  # Normalization.to_dict()
    input_size: list[int]  # [width, height] the model is fed (after cropping)
    model_state: dict[str, torch.Tensor]
    label_transform: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    metrics: dict[str, Any] = field(default_factory=dict)
    best_miou: float = float('-inf')
    # Resume state: None in an exported / stripped checkpoint.
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    #: Batches of epoch ``epoch`` already consumed (a mid-epoch checkpoint), in the order of
    #: the epoch's seeded shuffle, so a resumed run skips exactly those.
    batches_done: int = 0
    format: int = CHECKPOINT_FORMAT

    # --- typed views -------------------------------------------------------------------
    def get_model_config(self) -> UNetConfig:
        return UNetConfig.from_dict(self.model_config)

    def get_class_set(self) -> ClassSet:
        return class_set_from_dict(self.class_set, source='checkpoint class_set')

    def get_normalization(self) -> Normalization:
        return Normalization.from_dict(self.normalization)

    def get_input_spec(self) -> InputSpec:
        """What the model is fed: input size, cropped rows, normalization."""
        return InputSpec.from_checkpoint_fields(
            self.input_size, self.label_transform, self.normalization
        )

    def model_info(self, path: str | Path) -> ModelInfo:
        """The runtime's view of this checkpoint (what the torch engine runs), checked.

        Raises :class:`CheckpointError` when the class set, input size or normalization is
        invalid, or the model's outputs do not match the class set.
        """
        where = f'checkpoint {path}'
        try:
            class_set = self.get_class_set()
            spec = self.get_input_spec()
            num_outputs = self.get_model_config().num_classes
        except (ClassSetError, ValueError, KeyError, TypeError) as err:
            msg = f'{where} has an invalid class set, input size or normalization: {err}'
            raise CheckpointError(msg) from err
        if num_outputs != class_set.num_classes:
            msg = (
                f'{where}: the model has {num_outputs} outputs but its class set '
                f'{class_set.name!r} has {class_set.num_classes} classes'
            )
            raise CheckpointError(msg)
        return ModelInfo(
            path=Path(path),
            class_set=class_set,
            input_spec=spec,
            provenance={'checkpoint': str(path)},
        )

    def build_model(self, device: str | torch.device = 'cpu') -> UNet:
        """The model with the checkpoint's weights, in eval mode, on ``device``."""
        model = build_model(self.get_model_config())
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as err:  # state dict does not fit the recorded model config
            raise CheckpointError(f'its weights do not fit its model config ({err})') from err
        return model.to(device).eval()


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    A run killed at any moment leaves either the previous file or the new one, never half;
    the temporary it may leave is removed by the next save to the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # what killed runs left: one per kill, never growing
    tmp_name = temporary_for(path)  # .NAME.tmp-<pid>-<thread>
    try:
        with open(tmp_name, 'wb') as tmp:
            torch.save(asdict(checkpoint), tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = 'cpu') -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        msg = f'checkpoint {path} does not exist; train one with `semseg train --config ...`'
        raise CheckpointError(msg)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated/garbage files
        msg = (
            f'checkpoint {path} is corrupt or not a semseg_ros checkpoint ({type(err).__name__}:'
            f' {err}); use the other of last.pt/best.pt or retrain'
        )
        raise CheckpointError(msg) from err
    if not isinstance(data, dict) or 'model_state' not in data or 'model_config' not in data:
        msg = f'{path} is not a semseg_ros training checkpoint (no model_state/model_config)'
        raise CheckpointError(msg)
    if data.get('format') != CHECKPOINT_FORMAT:
        msg = (
            f'checkpoint {path} has format {data.get("format")}, this version reads '
            f'{CHECKPOINT_FORMAT}; use the semseg_ros version that wrote it'
        )
        raise CheckpointError(msg)
    known = {f.name for f in fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in data.items() if k in known})


def check_compatible(
    checkpoint: Checkpoint, *, model_config: UNetConfig, class_set: ClassSet, source: str
) -> None:
    """Raise :class:`CheckpointError` if ``checkpoint`` cannot continue a run configured so."""
    problems = []
    stored_set = checkpoint.get_class_set()
    if stored_set.names != class_set.names:
        problems.append(
            f'class set {stored_set.name} ({stored_set.num_classes} classes) != '
            f'{class_set.name} ({class_set.num_classes} classes)'
        )
    stored_model = checkpoint.get_model_config()
    if stored_model != model_config:
        diff = {
            k: (v, getattr(model_config, k))
            for k, v in stored_model.to_dict().items()
            if getattr(model_config, k) != v
        }
        problems.append(f'model config differs (checkpoint vs config): {diff}')
    if problems:
        msg = (
            f'cannot resume from {source}: ' + '; '.join(problems) + '. Resume with the config '
            'the checkpoint was trained with, or start a new run in another --out folder'
        )
        raise CheckpointError(msg)
