"""Crash-safe outputs: write beside the target, swap in when complete, clean up after a kill.

Every writer of a folder (``semseg bag``, ``semseg data synth``, ``semseg data collect``)
stages its output in a hidden sibling of the target, ``.NAME.partial-<pid>/new/``, and moves
it into place only when it is complete (``semseg record`` does the same in a sibling of its
own, ``.BAG.recording``: see :mod:`semseg_ros.record`)::

    DIR/.NAME.partial-<pid>/new/ENTRY...    written here (data files already under final names)
    DIR/.NAME.partial-<pid>/old/ENTRY...    what --overwrite replaces, kept until the swap ends
    DIR/.NAME.partial-<pid>/phase           'old' while old entries move out, 'new' while new
                                            ones move in, 'done' once the swap is complete

So a SIGKILL at any point leaves the target either as it was or complete, never half-written
under its final name. What a killed run leaves is recovered by the next writer of the same
target (:func:`recover`): before the swap it is deleted; during the swap the old entries are
put back (or, once 'done', the leftovers deleted). A staging folder is stale when the process
named by its pid is gone, so nothing a kill leaves grows without bound.

Single files (models, checkpoints, PNGs, JSON) use :func:`atomic_write_bytes`-style
temporaries (``.NAME.tmp-<pid>-<thread>``) and ``os.replace``, which is atomic on POSIX, and
:func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

_PARTIAL = re.compile(r'\.(?P<name>.+)\.partial-(?P<pid>\d+)$')
_TMP = re.compile(r'\.(?P<name>.+)\.tmp-(?P<pid>\d+)(?:-\d+)?$')


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (it may be another program: then we wait)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StagedEntries:
    """Stage entries (files or folders) of the folder ``target`` and swap them in together.

    Write the entries under :attr:`path` (as if it were ``target``), then :meth:`commit`.
    For a whole folder ``OUT`` use :meth:`for_folder`: the entry is OUT itself, and
    :attr:`path` is the staged ``OUT``.
    """

    def __init__(self, target: Path, entries: Iterable[str], *, _whole: bool = False) -> None:
        self.target = Path(target)
        self.entries = list(entries)
        self.whole = _whole
        self.name = self.entries[0] if _whole else self.target.name
        base = self.target if _whole else self.target.parent
        self.root = base / f'.{self.name}.partial-{os.getpid()}'
        self.new = self.root / 'new'
        self.old = self.root / 'old'

    @classmethod
    def for_folder(cls, out: Path) -> StagedEntries:
        out = Path(out)
        return cls(out.parent, [out.name], _whole=True)

    @property
    def path(self) -> Path:
        """Where to write: the staged folder (``new/OUT`` for a whole folder)."""
        return self.new / self.name if self.whole else self.new

    def open(self) -> Path:
        """Recover what killed runs left, create the staging folder; returns :attr:`path`."""
        recover(self.root.parent, self.name, self.target, self.entries)
        _remove(self.root)
        self.new.mkdir(parents=True)
        return self.path

    def discard(self) -> None:
        _remove(self.root)

    def commit(self) -> None:
        """Move the old entries aside, the new ones in, then drop the staging folder."""
        self.target.mkdir(parents=True, exist_ok=True)
        self.old.mkdir()
        phase = self.root / 'phase'
        phase.write_text('old')
        for entry in self.entries:
            if (self.target / entry).exists() or (self.target / entry).is_symlink():
                (self.target / entry).rename(self.old / entry)
        phase.write_text('new')
        for entry in self.entries:
            if (self.new / entry).exists():
                (self.new / entry).rename(self.target / entry)
        phase.write_text('done')
        _remove(self.root)


def recover(parent: Path, name: str, target: Path, entries: Iterable[str]) -> list[Path]:
    """Undo (or finish) what killed writers of ``name`` left in ``parent``; the paths handled.

    Before the swap: the staging folder goes. While old entries move out: they come back.
    While new entries move in: those moved in go, the old ones come back. Once done: the
    leftovers go.
    """
    entries = list(entries)
    handled: list[Path] = []
    if not parent.is_dir():
        return handled
    for root in list(parent.iterdir()):
        match = _PARTIAL.fullmatch(root.name)
        if not match or match['name'] != name or pid_alive(int(match['pid'])):
            continue
        phase_file = root / 'phase'
        phase = phase_file.read_text() if phase_file.is_file() else ''
        if phase in ('old', 'new'):
            for entry in entries:
                moved_in = phase == 'new' and not (root / 'new' / entry).exists()
                if moved_in and (target / entry).exists():
                    _remove(target / entry)
                old = root / 'old' / entry
                if old.exists() and not (target / entry).exists():
                    old.rename(target / entry)
        _remove(root)
        handled.append(root)
    return handled


def temporary_for(path: Path) -> Path:
    """``DIR/.NAME.tmp-<pid>-<thread>``: where to write ``path`` before ``os.replace`` (two
    threads writing the same file each get their own)."""
    return path.with_name(f'.{path.name}.tmp-{os.getpid()}-{threading.get_ident()}')


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete ``.NAME.tmp-<pid>[-<thread>]`` siblings of ``path`` whose process is gone."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f'.{path.name}.tmp-*'):
        match = _TMP.fullmatch(tmp.name)
        if match and not pid_alive(int(match['pid'])):
            _remove(tmp)
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a kill leaves at most a stale temporary)."""
    tmp = temporary_for(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
