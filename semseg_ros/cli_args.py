"""argparse checks shared by the ``semseg`` subcommands that take durations and counts."""

from __future__ import annotations

import argparse


def require_positive(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str
) -> None:
    """``parser.error`` for the first of the options ``names`` that is set but not > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f'--{name.replace("_", "-")} must be > 0, got {value}')
