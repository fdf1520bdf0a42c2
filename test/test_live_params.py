"""Live display parameters without ROS: validation, greying, and no torn frame."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_node_core import BandSegmenter

from semseg_ros.imaging import array_to_image_fields
from semseg_ros.labels import LYFT13
from semseg_ros.node.core import ALL_OUTPUTS, FrameProcessor
from semseg_ros.node.live_params import (
    DisplaySettings,
    normalize_highlight,
    resolve_highlight,
)
from semseg_ros.node.params import NodeParams, ParamError


@pytest.mark.parametrize(
    ('value', 'expected'),
    [(None, ()), ('', ()), ('Roads, 10', ('Roads', '10')), (['Vehicles', 7], ('Vehicles', '7'))],
)
def test_highlight_classes_take_names_ids_lists_or_one_string(value, expected):
    assert normalize_highlight(value) == expected


def test_names_are_resolved_case_insensitively_and_bad_ones_named():
    assert resolve_highlight(('roads', 'Vehicles', '7'), LYFT13) == (7, 10)
    with pytest.raises(ParamError, match="no class 'Bikes' in class set lyft13"):
        resolve_highlight(('Bikes',), LYFT13)
    with pytest.raises(ParamError, match=r'class id 99 is outside 0\.\.12'):
        resolve_highlight(('99',), LYFT13)
    with pytest.raises(ParamError, match=r'highlight_classes: 1\.5 is not a class name'):
        normalize_highlight([1.5])


def test_node_params_keep_highlight_classes_as_a_tuple_of_strings():
    assert NodeParams(highlight_classes=['Roads', 7]).highlight_classes == ('Roads', '7')
    assert NodeParams().highlight_classes == ()


def test_greying_keeps_highlighted_colours_and_turns_the_rest_grey():
    display = DisplaySettings.create(LYFT13, highlight_classes=['Roads'])
    ids = np.arange(13, dtype=np.uint8)[None]  # (1, 13)
    got = display.colorize(ids)[0]
    np.testing.assert_array_equal(got[7], LYFT13.colors[7])
    others = np.delete(got, 7, axis=0)
    assert (others[:, 0] == others[:, 1]).all() and (others[:, 1] == others[:, 2]).all()
    plain = DisplaySettings.create(LYFT13)
    np.testing.assert_array_equal(plain.colorize(ids), LYFT13.id_to_color(ids))


def test_an_update_is_a_new_snapshot_and_a_bad_one_changes_nothing():
    display = DisplaySettings.create(LYFT13)
    changed = display.updated({'overlay_alpha': 1, 'highlight_classes': 'Vehicles'})
    assert (changed.overlay_alpha, changed.highlight) == (1.0, (10,))
    assert (display.overlay_alpha, display.highlight) == (0.5, ())
    with pytest.raises(ParamError, match=r'overlay_alpha 1\.5'):
        display.updated({'overlay_alpha': 1.5})
    with pytest.raises(ParamError, match="color_encoding 'rgba8'"):
        display.updated({'color_encoding': 'rgba8'})


def test_a_frame_never_mixes_old_and_new_display_values():
    """Swap (alpha 0, rgb8) and (alpha 1, bgr8) while frames are processed: each frame's
    overlay is wholly one of them (the image in rgb8, or the colour mask in bgr8)."""
    processor = FrameProcessor(BandSegmenter(), color_encoding='rgb8', overlay_alpha=0.0)
    first = processor.display
    second = first.updated({'overlay_alpha': 1.0, 'color_encoding': 'bgr8'})
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            processor.display = second if processor.display is first else first

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    try:
        seen = set()
        frames = 0
        # At least 200 frames, and on until both settings were seen (a loaded machine may not
        # switch threads for a while).
        while frames < 200 or (len(seen) < 2 and frames < 20_000):
            frames += 1
            frame = processor.process(array_to_image_fields(rgb, 'rgb8'), None, ALL_OUTPUTS)
            overlay, color = frame.images['overlay'], frame.images['color']
            assert overlay.encoding == color.encoding
            pixels = np.frombuffer(bytes(overlay.data), np.uint8).reshape(24, 32, 3)
            if overlay.encoding == 'rgb8':
                np.testing.assert_array_equal(pixels, rgb)
            else:
                np.testing.assert_array_equal(pixels[..., ::-1], LYFT13.id_to_color(frame.ids))
            seen.add(overlay.encoding)
    finally:
        stop.set()
        thread.join()
    assert seen == {'rgb8', 'bgr8'}
