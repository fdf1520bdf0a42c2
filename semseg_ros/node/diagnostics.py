"""The node's /diagnostics status as plain data (the adapter makes the message)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from semseg_ros.node.params import INPUT_TOPIC
from semseg_ros.node.statistics import LatencyStats

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3


def _ms(seconds: float) -> str:
    return 'n/a' if math.isnan(seconds) else f'{seconds * 1e3:.1f}'


def diagnostics_status(
    *,
    name: str,
    input_rate: float,
    output_rate: float,
    latency: LatencyStats,
    processing: LatencyStats,
    received: int,
    dropped_stale: int,
    lost_in_transport: int = 0,
    overwritten: int = 0,
    published: int | None = None,
    pending: int = 0,
    dropped_bad: Mapping[str, int],
    backend: str,
    model: str,
    class_set: str,
    failed: int = 0,
    skipped: int = 0,
    new_frames: int = 1,
    new_bad: int = 0,
    new_failed: int = 0,
    new_skipped: int = 0,
    new_lost: int = 0,
    failing_reports: int | None = None,
    suspect: int = 0,
    new_suspect: int = 0,
    fatal: str | None = None,
    hardware_id: str = '',
    miou: float | None = None,
    per_class_iou: Mapping[str, float] | None = None,
    ground_truth: Mapping[str, Any] | None = None,
    never_received: int | None = None,
) -> dict[str, Any]:
    """A diagnostic_msgs/DiagnosticStatus as plain data.

    Returns ``{'level': int, 'name', 'message', 'hardware_id', 'values': [(key, value)]}``,
    every value a string. ``never_received``: frames the simulator stamped that never reached
    the node (sim-time gaps; None: not counted). The level is ERROR when ``fatal`` says the
    node is going down (its inference thread died) or frames keep failing
    (``failing_reports``: reports in a row, this one included, with failed frames; 2 or more),
    WARN when frames failed since the last
    report only, when frames were lost in transport, when no frame arrived or malformed
    frames were dropped since the last report, else OK (saying so when every frame since the
    last report was skipped because no output had a subscriber): a node whose engine fails
    for a moment goes WARN, ERROR if it keeps failing, and OK once frames go through again.
    The adapter converts it to its own message type (rclpy's ``level`` is
    ``bytes([level])``; rosbags' an int).
    """
    values: list[tuple[str, str]] = [
        ('input rate (Hz)', f'{input_rate:.2f}'),
        ('output rate (Hz)', f'{output_rate:.2f}'),
        ('latency stamp to publish p50 (ms)', _ms(latency.p50)),
        ('latency stamp to publish p99 (ms)', _ms(latency.p99)),
        ('latency stamp to publish max (ms)', _ms(latency.max)),  # since the start
        ('processing p50 (ms)', _ms(processing.p50)),
        ('processing p99 (ms)', _ms(processing.p99)),
        ('processing max (ms)', _ms(processing.max)),
        ('frames lost in transport', str(lost_in_transport)),
        *(
            [('frames never received (sim-time gaps)', str(never_received))]
            if never_received is not None
            else []
        ),
        ('frames overwritten before the callback', str(overwritten)),
        ('frames received', str(received)),
        *([('frames published', str(published))] if published is not None else []),
        ('frames pending', str(pending)),
        ('frames dropped (stale)', str(dropped_stale)),
        ('frames failed', str(failed)),
        ('frames skipped (no subscriber)', str(skipped)),
        ('frames dropped (bad input)', str(sum(dropped_bad.values()))),
        *((f'frames dropped ({kind})', str(n)) for kind, n in sorted(dropped_bad.items())),
        ('frames suspect (padding fits another encoding)', str(suspect)),
        ('backend', backend),
        ('model', model),
        ('class set', class_set),
    ]
    if ground_truth is not None:
        values += [
            ('ground truth class set', str(ground_truth.get('class_set', ''))),
            ('ground truth frames scored', str(ground_truth.get('frames', 0))),
            ('ground truth unmatched', str(ground_truth.get('unmatched', 0))),
            ('ground truth dropped (bad)', str(ground_truth.get('bad', 0))),
            *(
                (f'ground truth dropped ({kind})', str(n))
                for kind, n in sorted(ground_truth.get('bad_by_kind', {}).items())
            ),
            ('ground truth lost in transport', str(ground_truth.get('lost', 0))),
            ('mIoU', 'n/a' if miou is None or math.isnan(miou) else f'{miou:.4f}'),
        ]
        values += [(f'IoU {cls}', f'{v:.4f}') for cls, v in (per_class_iou or {}).items()]
    if failing_reports is None:
        failing_reports = int(new_failed > 0)
    if fatal:
        level, message = ERROR, fatal
    elif new_failed and failing_reports >= 2:
        level = ERROR
        message = (
            f'frames keep failing: {new_failed} since the last report, failures in '
            f'{failing_reports} reports in a row: see log'
        )
    elif new_failed:
        level, message = WARN, f'{new_failed} frame(s) failed since the last report: see log'
    elif new_lost:
        level = WARN
        message = (
            f'{new_lost} frame(s) lost in transport since the last report: a best-effort '
            'subscription to large images, or a publisher history too short'
        )
    elif new_frames == 0:
        level, message = WARN, f'no images on {INPUT_TOPIC!r} since the last report'
    elif new_bad:
        level, message = WARN, f'{new_bad} malformed frame(s) dropped since the last report'
    elif new_suspect:
        level = WARN
        message = (
            f'{new_suspect} frame(s) whose row padding looks like another encoding: is the '
            'encoding label right? see log'
        )
    elif new_skipped == new_frames:
        level = OK
        message = f'idle: no subscriber on any output ({new_skipped} frame(s) not processed)'
    else:
        level = OK
        message = f'{output_rate:.1f} Hz out, p50 latency {_ms(latency.p50)} ms'
        if miou is not None and not math.isnan(miou):
            message += f', mIoU {miou:.3f}'
    return {
        'level': level,
        'name': name,
        'message': message,
        'hardware_id': hardware_id,
        'values': values,
    }
