"""The one place the runtime names the training half's package.

The folder ``training/`` installs as the package ``semseg_ros_training`` (pip, wheel,
colcon), so it never collides with another distribution's top-level ``training``; in a
checkout it is the package ``training`` (``python -m training.train``, the tests). Its own
imports are relative, so its files work under either name. The runtime tools that join both
halves on purpose (``semseg train|evaluate|predict|export|data``, the torch engine, demo,
bench, replay, gpu-check) import it lazily through :func:`training_module`, so ``semseg
--help`` never imports torch (docs/architecture.md, Installing the training half).

Which name, in this order:

1. ``training`` when this ``semseg_ros`` runs from a checkout (``setup.py`` next to it, or
   ``colcon build --symlink-install``) and ``training`` is that checkout's folder: the name
   the tests and ``python -m training.X`` use, so a process holds one copy of each module;
2. ``semseg_ros_training``: an installed copy (an editable install maps it to the
   checkout's folder).

A top-level ``training`` that is not the checkout's folder next to this package is never
imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

INSTALLED = 'semseg_ros_training'
CHECKOUT = 'training'
INSTALL_HINT = 'pip install semseg_ros[train]'

_ROOT = Path(__file__).resolve().parent.parent  # the folder holding this semseg_ros


def _checkout_init() -> Path | None:
    """``training/__init__.py`` of the checkout this ``semseg_ros`` runs from, if it does."""
    init = _ROOT / CHECKOUT / '__init__.py'
    return init if (_ROOT / 'setup.py').is_file() and init.is_file() else None


def _origin(name: str) -> str | None:
    """Where the top-level package ``name`` is (or would be) loaded from; imports nothing."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, '__file__', None)
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: finds it, runs nothing
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def package_name() -> str:
    """``'training'`` (a checkout) or ``'semseg_ros_training'`` (installed); raises
    :class:`ModuleNotFoundError` naming the install command when there is neither."""
    init = _checkout_init()
    if init is not None:
        origin = _origin(CHECKOUT)
        if origin is not None and Path(origin).resolve() == init.resolve():
            return CHECKOUT
    if INSTALLED in sys.modules or _origin(INSTALLED) is not None:
        return INSTALLED
    msg = (
        f'the training half of semseg_ros ({INSTALLED}) is not installed: {INSTALL_HINT} '
        '(or run from a checkout of semseg_ros)'
    )
    raise ModuleNotFoundError(msg, name=INSTALLED)


def module_name(name: str) -> str:
    """The full module name of ``name`` (``'export'``, ``'data.synthetic'``) in the training
    half: for ``python -m`` and ``importlib``."""
    return f'{package_name()}.{name}'


def training_module(name: str) -> ModuleType:
    """The training half's module ``name`` (``'checkpoint'``, ``'data.lyft'``), imported.

    Raises :class:`ModuleNotFoundError` (an :class:`ImportError`) naming ``pip install
    semseg_ros[train]`` when the training half is not there; a missing dependency of one of its
    own dependencies (torch, onnx) says which one is missing and the same command."""
    full = module_name(name)
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.partition('.')[0] in (CHECKOUT, INSTALLED):
            raise
        msg = f'{full} needs {err.name}, which is not installed: {INSTALL_HINT}'
        raise ModuleNotFoundError(msg, name=err.name) from err
