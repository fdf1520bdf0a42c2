"""The one device parser: ``'auto' | 'cpu' | 'cuda' | 'cuda:<n>'``, for engines, training and CLI.

:func:`parse_device` checks the text (no torch, no GPU query); :func:`torch_device` turns it
into a ``torch.device`` on this machine, importing torch only when called.
"""

from __future__ import annotations

import re
from typing import Any

DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:<n>')
DEVICE_HELP = 'auto, cpu, cuda or cuda:N (N: a GPU index)'
_DEVICE_RE = re.compile(r'auto|cpu|cuda(?::(\d+))?')


def parse_device(text: str) -> str:
    """``text`` checked and normalised (``' CUDA:01 '`` -> ``'cuda:1'``).

    Raises ValueError naming the value and the accepted forms.
    """
    value = str(text).strip().lower()
    match = _DEVICE_RE.fullmatch(value)
    if match is None:
        raise ValueError(f'unknown device {text!r}: device must be one of {DEVICE_HELP}')
    if match.group(1) is not None:
        return f'cuda:{int(match.group(1))}'
    return value


def cuda_index(device: str) -> int:
    """The GPU index of a parsed ``cuda`` / ``cuda:<n>`` device (``cuda`` is GPU 0)."""
    device = parse_device(device)
    return int(device.split(':')[1]) if ':' in device else 0


def is_cuda(device: str) -> bool:
    return parse_device(device).startswith('cuda')


def torch_device(text: str, *, local_rank: int | None = None) -> Any:
    """``text`` as a ``torch.device`` here: ``auto`` is CUDA when torch sees a GPU, else CPU.

    ``local_rank`` (a torchrun worker) picks the GPU of a plain ``cuda``. Raises ValueError
    when CUDA is asked for and this torch cannot use it, or the index is out of range.
    """
    import torch

    device = parse_device(text)
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cpu':
        return torch.device('cpu')
    if not torch.cuda.is_available():
        why = (
            'this torch build has no CUDA support'
            if torch.version.cuda is None
            else f'torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU'
        )
        msg = (
            f'device {text!r} requested but no CUDA GPU is available: '
            f'torch.cuda.is_available() is False ({why}); '
            'use --device cpu (or auto)'
        )
        raise ValueError(msg)
    index = cuda_index(device) if ':' in device else (local_rank or 0)
    if index >= torch.cuda.device_count():
        msg = (
            f'device {text!r} requested but only {torch.cuda.device_count()} GPU(s) are '
            'visible; use cuda:0 or check CUDA_VISIBLE_DEVICES'
        )
        raise ValueError(msg)
    return torch.device('cuda', index)
