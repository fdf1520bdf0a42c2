"""Evaluation figures: the row-normalized confusion matrix and the per-class IoU bars.

matplotlib (the ``train`` extra) is imported inside the functions, so importing this module
costs nothing. The figures are drawn with the object-oriented API on an Agg canvas, never
through pyplot: no display is needed, and no global backend or figure state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # attaches itself: savefig renders with Agg
    return fig


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = 'Confusion matrix (rows: ground truth, normalized per row)',
) -> Path:
    """Row-normalized confusion matrix as a PNG: cell (i, j) = share of class i predicted j.

    ``matrix`` (C, C) counts with rows = ground truth. Rows without ground-truth pixels are
    shaded grey and marked "no gt"; each row's pixel count is shown next to its name.
    """
    counts = np.asarray(matrix, np.float64)
    n = counts.shape[0]
    if counts.shape != (n, n) or len(class_names) != n:
        msg = f'a ({len(class_names)}, {len(class_names)}) matrix is needed, got {counts.shape}'
        raise ValueError(msg)
    row_sums = counts.sum(axis=1)
    norm = np.divide(
        counts, row_sums[:, None], out=np.zeros_like(counts), where=row_sums[:, None] > 0
    )

    cell = 0.55 if n <= 15 else 0.42
    fig = _figure(max(6.0, n * cell + 3.2), max(5.0, n * cell + 2.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0, interpolation='nearest')
    font = 8 if n <= 15 else 6
    for i in range(n):
        if row_sums[i] == 0:
            ax.axhspan(i - 0.5, i + 0.5, color='0.88', zorder=1)
            ax.text(n / 2 - 0.5, i, 'no gt', ha='center', va='center', fontsize=font,
                    color='0.4', zorder=2)  # fmt: skip
            continue
        for j in range(n):
            value = norm[i, j]
            if counts[i, j] == 0:
                continue
            text = f'{value:.2f}' if value >= 0.005 else '<.01'
            ax.text(j, i, text, ha='center', va='center', fontsize=font,
                    color='white' if value > 0.55 else 'black')  # fmt: skip
    ylabels = [f'{name} ({_human(row_sums[i])})' for i, name in enumerate(class_names)]
    ax.set_xticks(range(n), labels=list(class_names), rotation=60, ha='right', fontsize=font + 1)
    ax.set_yticks(range(n), labels=ylabels, fontsize=font + 1)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('ground-truth class (pixels)')
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_iou_per_class(
    iou: Mapping[str, float | None],
    colors: np.ndarray,
    path: str | Path,
    *,
    miou: float | None = None,
    title: str = 'IoU per class',
) -> Path:
    """Bar chart of IoU per class in the class palette colours, with the mIoU as a line.

    ``iou`` maps class name -> IoU, ``None`` (undefined: absent from ground truth and
    prediction) drawn as "n/a"; ``colors`` (C, 3) uint8 RGB in the same order.
    """
    names = list(iou)
    values = [iou[k] for k in names]
    colors = np.asarray(colors, np.float64) / 255.0
    if colors.shape != (len(names), 3):
        raise ValueError(f'need one RGB colour per class ({len(names)}), got {colors.shape}')
    fig = _figure(max(6.0, 0.5 * len(names) + 2.0), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    heights = [0.0 if v is None else v for v in values]
    ax.bar(x, heights, color=colors, edgecolor='black', linewidth=0.6, zorder=2)
    for xi, v in zip(x, values, strict=True):
        label = 'n/a' if v is None else f'{v:.2f}'
        ax.text(xi, (v or 0.0) + 0.015, label, ha='center', va='bottom', fontsize=7)
    if miou is not None:
        ax.axhline(miou, color='crimson', linestyle='--', linewidth=1.2, zorder=3,
                   label=f'mIoU {miou:.3f}')  # fmt: skip
        ax.legend(loc='upper right', fontsize=8)
    ax.set_xticks(x, labels=names, rotation=60, ha='right', fontsize=8)
    ax.set_ylim(0.0, 1.08)
    ax.set_ylabel('IoU')
    ax.set_title(title, fontsize=10)
    ax.grid(axis='y', color='0.9', zorder=0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _human(count: float) -> str:
    for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if count >= scale:
            return f'{count / scale:.1f}{unit}'
    return f'{int(count)}'
