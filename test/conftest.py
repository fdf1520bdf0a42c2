"""Shared test settings.

Tests marked ``slow`` are end-to-end runs. ``make test`` runs them at a small size;
``SEMSEG_TEST_SCALE=full`` runs them at the real size (800x600 frames, longer streams).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class TestScale:
    full: bool

    def pick(self, small, full):
        """``small`` in ``make test``, ``full`` under SEMSEG_TEST_SCALE=full."""
        return full if self.full else small


@pytest.fixture(scope='session')
def test_scale() -> TestScale:
    value = os.environ.get('SEMSEG_TEST_SCALE', 'small')
    if value not in ('small', 'full'):
        raise pytest.UsageError(f"SEMSEG_TEST_SCALE must be 'small' or 'full', got {value!r}")
    return TestScale(full=value == 'full')
