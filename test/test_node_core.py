"""The node's logic without ROS: parameters, newest-frame slot, stats, GT matching, IoU, frames.

Messages are real sensor_msgs/Image and diagnostic_msgs/DiagnosticArray built with rosbags'
typestore (the same layouts rclpy and the DDS adapter hand to node_core).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from semseg_ros.ground_truth import GroundTruthMatcher, OnlineIoU
from semseg_ros.imaging import ImageFields, image_to_array
from semseg_ros.labels import CARLA23, LYFT13, ClassSet
from semseg_ros.node.core import (
    ALL_OUTPUTS,
    NO_OUTPUTS,
    FrameProcessor,
    FrameWorker,
    LatestFrameSlot,
    NodeCore,
    Outputs,
)
from semseg_ros.node.diagnostics import ERROR, OK, WARN, diagnostics_status
from semseg_ros.node.params import PARAMETERS, NodeParams, NodeStartupError, ParamError
from semseg_ros.node.statistics import LatencyStats, RateMeter, stamp_of
from semseg_ros.visualize import overlay

REPO_CONFIG = Path(__file__).resolve().parents[1] / 'config'
TS = get_typestore(Stores.ROS2_HUMBLE)
Image = TS.types['sensor_msgs/msg/Image']
Header = TS.types['std_msgs/msg/Header']
Time = TS.types['builtin_interfaces/msg/Time']
DiagnosticArray = TS.types['diagnostic_msgs/msg/DiagnosticArray']
DiagnosticStatus = TS.types['diagnostic_msgs/msg/DiagnosticStatus']
KeyValue = TS.types['diagnostic_msgs/msg/KeyValue']

CHANNELS = {'bgra8': 4, 'bgr8': 3, 'rgba8': 4, 'rgb8': 3, 'mono8': 1}


# --- helpers --------------------------------------------------------------------------------


class BandSegmenter:
    """A deterministic stand-in with the Segmenter's interface: class id = brightness band.

    Colouring and blending use the project's own palette and overlay, as the Segmenter does.
    """

    backend_name = 'bands'
    model_info = None

    def __init__(self, class_set=LYFT13, delay: float = 0.0, fail: Exception | None = None):
        self.class_set = class_set
        self.delay = delay
        self.fail = fail
        self.calls = {'segment': 0, 'colorize': 0, 'overlay': 0}

    def ids_of(self, rgb: np.ndarray) -> np.ndarray:
        return (rgb.astype(np.uint16).sum(axis=2) * self.class_set.num_classes // 766).astype(
            np.uint8
        )

    def segment(self, rgb):
        self.calls['segment'] += 1
        if self.fail is not None:
            raise self.fail
        if self.delay:
            time.sleep(self.delay)
        return SimpleNamespace(ids=self.ids_of(rgb), timings={'infer_ms': 0.0})

    def colorize(self, ids):
        self.calls['colorize'] += 1
        return self.class_set.id_to_color(ids)

    def overlay(self, rgb, ids, alpha):
        self.calls['overlay'] += 1
        return overlay(rgb, self.class_set.id_to_color(ids), alpha)


def header(sec: int = 7, nanosec: int = 50_000_000, frame_id: str = 'ego_vehicle/rgb_front'):
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def rgb_frame(height: int = 6, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def encode(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """RGB -> pixels in ``encoding`` by plain numpy (independent of imaging.py)."""
    if encoding == 'rgb8':
        return rgb
    if encoding == 'bgr8':
        return rgb[..., ::-1]
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    if encoding == 'rgba8':
        return np.concatenate([rgb, alpha], axis=2)
    if encoding == 'bgra8':
        return np.concatenate([rgb[..., ::-1], alpha], axis=2)
    raise AssertionError(encoding)


def image_msg(
    pixels: np.ndarray,
    encoding: str,
    *,
    pad: int = 0,
    hdr=None,
    is_bigendian: int = 0,
) -> Image:
    """A real sensor_msgs/Image with ``pad`` junk bytes after each row."""
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    padded = np.full((height, rows.shape[1] + pad), 0xAB, np.uint8)
    padded[:, : rows.shape[1]] = rows
    return Image(
        header=hdr if hdr is not None else header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=is_bigendian,
        step=rows.shape[1] + pad,
        data=padded.reshape(-1),
    )


def as_received_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What the model sees for ``rgb`` sent in ``encoding`` (mono8 loses colour)."""
    if encoding != 'mono8':
        return rgb
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[..., None], 3, axis=2)


def make_core(segmenter=None, **params) -> tuple[NodeCore, list[str]]:
    logged: list[str] = []
    core = NodeCore(
        NodeParams(model_path='unused.onnx', **params),
        segmenter or BandSegmenter(),
        log_warning=logged.append,
    )
    return core, logged


# --- parameters -------------------------------------------------------------------------------


def test_every_parameter_has_a_default_and_a_description():
    names = [p.name for p in PARAMETERS]
    assert names[:3] == ['model_path', 'backend', 'device']
    assert set(names) >= {
        'class_set', 'color_encoding', 'overlay_alpha', 'qos_reliability', 'qos_depth',
        'gt_class_set', 'ground_truth', 'use_sim_time',
    }  # fmt: skip
    for p in PARAMETERS:
        assert p.default is not dataclass_missing()
        assert len(p.metadata['description']) > 20, p.name
    defaults = NodeParams()
    assert (defaults.qos_reliability, defaults.qos_depth) == ('best_available', 5)
    assert (defaults.color_encoding, defaults.overlay_alpha) == ('rgb8', 0.5)


def dataclass_missing():
    import dataclasses

    return dataclasses.MISSING


@pytest.mark.parametrize(
    ('field', 'value', 'expected'),
    [
        ('backend', 'tensorrtx', "backend 'tensorrtx'"),
        ('device', 'gpu0', "device 'gpu0'"),
        ('color_encoding', 'rgba8', "color_encoding 'rgba8'"),
        ('overlay_alpha', 1.5, 'overlay_alpha 1.5'),
        ('overlay_alpha', '0.5', "overlay_alpha must be a float, got '0.5'"),
        ('qos_reliability', 'Reliable', "qos_reliability 'Reliable'"),
        ('qos_depth', 0, 'qos_depth 0'),
        ('qos_depth', True, 'qos_depth must be a int, got True'),
        ('ground_truth', 'yes', "ground_truth must be a bool, got 'yes'"),
        ('class_set', 'lyft12', "'lyft12'"),
        ('gt_class_set', 'carla24', "'carla24'"),
        ('threads', -1, 'threads -1 is negative'),
        ('opencv_threads', -2, 'opencv_threads -2 is negative'),
    ],
)
def test_bad_parameters_are_rejected_naming_the_value(field, value, expected):
    with pytest.raises(ParamError, match=expected.replace('.', r'\.')):
        NodeParams(**{field: value})


def test_int_alpha_from_yaml_is_accepted_as_float():
    assert NodeParams(overlay_alpha=1).overlay_alpha == 1.0


def test_from_mapping_takes_what_rclpy_hands_back():
    flat = NodeParams.from_mapping({'model_path': 'm.onnx', 'qos_depth': 3})
    assert (flat.model_path, flat.qos_depth) == ('m.onnx', 3)


def test_from_mapping_errors_name_the_problem():
    with pytest.raises(ParamError, match=r"unknown parameter\(s\) \['modle_path'\]"):
        NodeParams.from_mapping({'modle_path': 'x'})


def test_start_fails_clearly_without_a_model(tmp_path):
    with pytest.raises(NodeStartupError, match='model_path is not set'):
        NodeCore.start({}, log_warning=print)
    missing = tmp_path / 'nope.onnx'
    with pytest.raises(NodeStartupError, match=f"model_path '{missing}' does not exist"):
        NodeCore.start({'model_path': str(missing)}, log_warning=print)
    with pytest.raises(NodeStartupError, match="invalid parameter: device 'gpu'"):
        NodeCore.start({'model_path': str(missing), 'device': 'gpu'}, log_warning=print)


# --- newest frame wins ------------------------------------------------------------------------


def test_slot_keeps_the_newest_and_counts_the_dropped():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.take(timeout=0.01) is None
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(timeout=0) == 3
    assert (slot.received, slot.dropped) == (3, 2)
    assert slot.take(timeout=0.01) is None


def test_slot_close_wakes_a_waiting_consumer():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    result = []
    consumer = threading.Thread(target=lambda: result.append(slot.take(timeout=10)))
    consumer.start()
    time.sleep(0.05)
    slot.close()
    consumer.join(2)
    assert not consumer.is_alive() and result == [None]


def test_slot_under_a_fast_producer_and_a_slow_consumer():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    taken: list[int] = []

    def consume():
        while (item := slot.take(timeout=0.5)) is not None:
            taken.append(item)
            time.sleep(0.002)  # inference slower than the camera

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(2000):
        slot.put(i)
        if i % 100 == 0:
            time.sleep(0.001)
    consumer.join(5)
    assert taken == sorted(taken) and len(set(taken)) == len(taken)  # never an older frame
    assert taken[-1] == 1999  # the newest is always delivered
    assert slot.dropped > 0 and slot.received == 2000
    assert len(taken) + slot.dropped == slot.received  # every frame: taken or counted


# --- rates and latency ------------------------------------------------------------------------


def test_rate_meter_measures_a_steady_stream_and_decays():
    now = [0.0]
    meter = RateMeter(window_s=2.0, clock=lambda: now[0])
    for i in range(40):
        now[0] = i * 0.05  # 20 Hz
        meter.tick()
    assert meter.rate() == pytest.approx(20.0)
    now[0] = 10.0
    assert meter.rate() == 0.0
    assert meter.count == 40


def test_latency_percentiles_over_a_window():
    stats = LatencyStats(window=100)
    assert np.isnan(stats.p50)
    for ms in range(1, 201):  # only the last 100 (101..200 ms) are kept
        stats.add(ms / 1000)
    assert len(stats) == 100
    assert stats.p50 == pytest.approx(0.1505)
    assert stats.p99 == pytest.approx(np.percentile(np.arange(101, 201) / 1000, 99))


# --- ground truth -----------------------------------------------------------------------------


def test_matcher_pairs_by_stamp_in_either_order():
    matcher: GroundTruthMatcher[str] = GroundTruthMatcher(capacity=4)
    assert matcher.add_ground_truth((1, 0), 'gt1') is None
    assert matcher.add_prediction((1, 0), 'p1') == ('p1', 'gt1')
    assert matcher.add_prediction((2, 5), 'p2') is None
    assert matcher.add_ground_truth((2, 5), 'gt2') == ('p2', 'gt2')
    assert matcher.add_prediction((3, 0), 'p3') is None  # no GT of that stamp (yet)
    assert matcher.add_ground_truth((3, 1), 'gt3') is None  # 1 ns apart: not the same tick
    assert matcher.matched == 2
    assert matcher.pending == (1, 1)


def test_matcher_memory_is_bounded_and_evictions_counted():
    matcher: GroundTruthMatcher[int] = GroundTruthMatcher(capacity=3)
    for sec in range(10):
        matcher.add_ground_truth((sec, 0), sec)  # predictions never come (frames dropped)
    assert matcher.pending == (3, 0)
    assert matcher.unmatched_ground_truth == 7
    assert matcher.add_prediction((9, 0), 'p') == ('p', 9)  # the newest are kept
    assert matcher.add_prediction((0, 0), 'old') is None  # evicted long ago


def test_online_iou_matches_a_hand_computed_confusion_matrix():
    # Ground truth in CARLA 0.9.13 colours (carla23), model in lyft13.
    c = {name: tuple(CARLA23.colors[CARLA23.id_of(name)]) for name in CARLA23.names}
    gt_rows = [
        [c['Roads'], c['Roads'], c['Roads'], c['Vehicles']],
        [c['Sky'], c['Sky'], c['Vehicles'], c['Vehicles']],
        [c['Terrain'], (1, 2, 3), c['Roads'], c['Sky']],  # (1, 2, 3): not in the palette
    ]
    gt_rgb = np.array(gt_rows, np.uint8)  # (3, 4, 3)
    road, veh, none, veg = (LYFT13.id_of(n) for n in ('Roads', 'Vehicles', 'None', 'Vegetation'))
    pred = np.array(
        [
            [road, road, veh, veh],
            [none, road, veh, none],
            [veg, road, road, none],
        ],
        np.uint8,
    )
    iou = OnlineIoU('carla23', 'lyft13')
    iou.update(pred, gt_rgb)
    # Mapped GT (Sky -> None, Terrain -> Vegetation, unknown ignored), by hand:
    #   Roads:    gt at (0,0),(0,1),(0,2),(2,2); pred road at (0,0),(0,1),(1,1),(2,2)
    #             tp 3, fp 1 (1,1), fn 1 (0,2)          -> 3 / 5
    #   Vehicles: gt (0,3),(1,2),(1,3); pred veh (0,2),(0,3),(1,2)
    #             tp 2, fp 1 (0,2), fn 1 (1,3)          -> 2 / 4
    #   None:     gt (1,0),(1,1),(2,3); pred none (1,0),(1,3),(2,3)
    #             tp 2, fp 1 (1,3), fn 1 (1,1)          -> 2 / 4
    #   Vegetation: gt (2,0), pred (2,0)                -> 1 / 1
    expected = {'Roads': 3 / 5, 'Vehicles': 2 / 4, 'None': 2 / 4, 'Vegetation': 1.0}
    assert iou.per_class() == pytest.approx(expected)
    assert iou.miou() == pytest.approx(np.mean(list(expected.values())))
    assert iou.frames == 1


def test_online_iou_rejects_a_differently_sized_ground_truth():
    iou = OnlineIoU('carla23', 'lyft13')
    with pytest.raises(ValueError, match='ground truth is 4x3 but the camera 5x2'):
        iou.update(np.zeros((2, 5), np.uint8), np.zeros((3, 4, 3), np.uint8))


# --- frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize('encoding', list(CHANNELS))
@pytest.mark.parametrize('pad', [0, 3])
def test_processor_every_encoding_with_row_padding(encoding, pad):
    rgb = rgb_frame(6, 5)
    pixels = encode(rgb, encoding) if encoding != 'mono8' else rgb[..., 0]
    msg = image_msg(pixels, encoding, pad=pad)
    seg = BandSegmenter()
    out = FrameProcessor(seg, color_encoding='rgb8', overlay_alpha=0.5).process(msg, msg.header)
    seen = (
        as_received_rgb(rgb, encoding)
        if encoding != 'mono8'
        else np.repeat(pixels[..., None], 3, 2)
    )
    expected_ids = seg.ids_of(seen)
    assert out.header is msg.header  # stamp and frame_id passed through untouched
    np.testing.assert_array_equal(out.ids, expected_ids)
    mask = out.images['mask']
    assert (mask.encoding, mask.height, mask.width, mask.step) == ('mono8', 6, 5, 5)
    np.testing.assert_array_equal(image_to_array(mask), expected_ids)
    color = out.images['color']
    assert (color.encoding, color.step) == ('rgb8', 15)
    np.testing.assert_array_equal(image_to_array(color), LYFT13.id_to_color(expected_ids))
    np.testing.assert_array_equal(
        image_to_array(out.images['overlay']),
        overlay(seen, LYFT13.id_to_color(expected_ids), 0.5),
    )


def test_processor_bgr8_outputs_and_big_endian_flag_on_8_bit_data():
    rgb = rgb_frame(4, 7, seed=3)
    seg = BandSegmenter()
    processor = FrameProcessor(seg, color_encoding='bgr8', overlay_alpha=1.0)
    little = processor.process(image_msg(encode(rgb, 'bgra8'), 'bgra8'), header())
    big = processor.process(image_msg(encode(rgb, 'bgra8'), 'bgra8', is_bigendian=1), header())
    np.testing.assert_array_equal(little.ids, big.ids)  # byte order means nothing for 8-bit
    color = image_to_array(little.images['color'])
    assert little.images['color'].encoding == 'bgr8'
    np.testing.assert_array_equal(color, LYFT13.id_to_color(little.ids)[..., ::-1])
    # alpha 1: the overlay is the mask itself
    np.testing.assert_array_equal(image_to_array(little.images['overlay']), color)


def test_processor_computes_only_the_outputs_asked_for():
    seg = BandSegmenter()
    msg = image_msg(rgb_frame(), 'rgb8')
    out = FrameProcessor(seg).process(
        msg, msg.header, Outputs(mask=True, color=False, overlay=False)
    )
    assert set(out.images) == {'mask'}
    assert seg.calls == {'segment': 1, 'colorize': 0, 'overlay': 0}


def test_outputs_round_trip_as_real_image_messages():
    msg = image_msg(encode(rgb_frame(3, 4), 'bgra8'), 'bgra8', hdr=header(12, 345, 'cam'))
    out = FrameProcessor(BandSegmenter()).process(msg, msg.header)
    for name, fields in out.images.items():
        published = Image(header=out.header, **fields.msg_kwargs())
        raw = TS.serialize_cdr(published, Image.__msgtype__)
        back = TS.deserialize_cdr(raw, Image.__msgtype__)
        assert (back.header.stamp.sec, back.header.stamp.nanosec) == (12, 345), name
        assert back.header.frame_id == 'cam'
        np.testing.assert_array_equal(
            image_to_array(back), image_to_array(ImageFields.from_msg(published))
        )


# --- the node minus ROS -----------------------------------------------------------------------


def run_steps(core: NodeCore, outputs: Outputs = ALL_OUTPUTS) -> list:
    published: list = []
    while core.step(lambda: outputs, published.append, timeout=0) is not None:
        pass
    return published


@pytest.mark.parametrize(
    ('msg', 'kind'),
    [
        (image_msg(np.zeros((2, 2, 2), np.uint8).reshape(2, 4), 'yuv422'), 'encoding'),
        (
            Image(
                header=header(),
                height=4,
                width=4,
                encoding='rgb8',
                is_bigendian=0,
                step=12,
                data=np.zeros(40, np.uint8),
            ),
            'short_data',
        ),
        (
            Image(
                header=header(),
                height=0,
                width=4,
                encoding='rgb8',
                is_bigendian=0,
                step=12,
                data=np.zeros(0, np.uint8),
            ),
            'size',
        ),
    ],
)
def test_bad_frames_are_dropped_with_one_warning_per_kind(msg, kind):
    core, logged = make_core()
    good = image_msg(rgb_frame(), 'rgb8')
    published = []
    for _ in range(5):
        core.on_image(msg)
        assert core.step(lambda: ALL_OUTPUTS, published.append, timeout=0) is None
    core.on_image(good)
    assert core.step(lambda: ALL_OUTPUTS, published.append, timeout=0) is not None
    assert len(logged) == 1 and logged[0].startswith('image: ')
    assert kind in logged[0] or (kind == 'encoding' and 'yuv422' in logged[0])
    assert core.bad_input.counts == {kind: 5}
    assert len(published) == 1
    status = core.diagnostics()
    values = dict(status['values'])
    assert values['frames dropped (bad input)'] == '5'
    assert values[f'frames dropped ({kind})'] == '5'
    assert status['level'] == WARN


def test_no_subscribers_means_no_inference():
    seg = BandSegmenter()
    core, _ = make_core(seg)
    core.on_image(image_msg(rgb_frame(), 'rgb8'))
    assert run_steps(core, NO_OUTPUTS) == []
    assert seg.calls['segment'] == 0 and core.skipped == 1
    status = core.diagnostics()  # says why nothing comes out, rather than looking stuck
    assert status['message'].startswith('idle: no subscriber on any output (1 frame')
    assert dict(status['values'])['frames skipped (no subscriber)'] == '1'


def test_worker_thread_newest_frame_wins_and_headers_pass_through():
    seg = BandSegmenter(delay=0.02)  # 50 Hz inference
    core, _ = make_core(seg)
    published: list = []
    done = threading.Event()

    def publish(frame):
        published.append(frame)
        if stamp_of(frame.header) == (99, 0):
            done.set()

    worker = FrameWorker(core, lambda: ALL_OUTPUTS, publish)
    worker.start()
    try:
        for sec in range(100):  # a 1 kHz camera
            frame = encode(rgb_frame(), 'bgra8')
            core.on_image(image_msg(frame, 'bgra8', hdr=header(sec, 0, f'f{sec}')))
            time.sleep(0.001)
        assert done.wait(5)
    finally:
        worker.stop()
    assert not worker.is_alive()
    stamps = [stamp_of(f.header)[0] for f in published]
    assert stamps == sorted(stamps) and stamps[-1] == 99
    assert [f.header.frame_id for f in published] == [f'f{s}' for s in stamps]
    assert core.slot.dropped > 0
    assert len(published) + core.slot.dropped == core.slot.received == 100
    values = dict(core.diagnostics()['values'])
    assert values['frames dropped (stale)'] == str(core.slot.dropped)
    assert float(values['processing p50 (ms)']) >= 20.0


def test_worker_survives_a_failing_segmenter_and_reports_error():
    errors: list[str] = []
    seg = BandSegmenter(fail=RuntimeError('CUDA out of memory'))
    core = NodeCore(
        NodeParams(model_path='m.onnx'), seg, log_warning=errors.append, log_error=errors.append
    )
    worker = FrameWorker(core, lambda: ALL_OUTPUTS, lambda frame: None)
    worker.start()
    try:
        for sec in range(3):
            core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(sec)))
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while core.failed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert core.failed == 3
    assert len(errors) == 1 and 'RuntimeError: CUDA out of memory' in errors[0]
    status = core.diagnostics()
    assert status['level'] == WARN and dict(status['values'])['frames failed'] == '3'


def gt_msg(ids: np.ndarray, hdr) -> Image:
    """A CARLA segmentation-camera frame: carla23 palette colours as bgra8."""
    return image_msg(encode(CARLA23.id_to_color(ids), 'bgra8'), 'bgra8', hdr=hdr)


@pytest.mark.parametrize('gt_first', [True, False])
def test_ground_truth_is_matched_by_stamp_and_scored(gt_first):
    seg = BandSegmenter()
    core, logged = make_core(seg, ground_truth=True, gt_class_set='carla23')
    rgb = rgb_frame(6, 5, seed=1)
    pred = seg.ids_of(rgb)
    truth = pred.copy()
    truth[0, :] = (truth[0, :] + 1) % LYFT13.num_classes  # one row wrong
    cam = image_msg(rgb, 'rgb8', hdr=header(3, 0, 'ego_vehicle/rgb_front'))
    gt = gt_msg(truth, header(3, 0, 'ego_vehicle/semantic_segmentation_front'))
    other = gt_msg(truth, header(4, 0))  # another tick: never scored against frame 3
    if gt_first:
        core.on_ground_truth(other)
        core.on_ground_truth(gt)
        core.on_image(cam)
        run_steps(core)
    else:
        core.on_image(cam)
        run_steps(core)
        core.on_ground_truth(gt)  # scored by the worker, not in the callback
        assert core.iou.frames == 0
        run_steps(core)
    assert core.iou.frames == 1 and logged == []
    expected = OnlineIoU('carla23', 'lyft13')
    expected.update(pred, CARLA23.id_to_color(truth))
    assert core.iou.miou() == pytest.approx(expected.miou())
    assert 0 < core.iou.miou() < 1
    values = dict(core.diagnostics()['values'])
    assert values['mIoU'] == f'{expected.miou():.4f}'
    assert values['ground truth frames scored'] == '1'


def test_ground_truth_still_scored_without_subscribers():
    seg = BandSegmenter()
    core, _ = make_core(seg, ground_truth=True)
    rgb = rgb_frame()
    core.on_ground_truth(gt_msg(seg.ids_of(rgb), header(5)))
    core.on_image(image_msg(rgb, 'rgb8', hdr=header(5)))
    assert run_steps(core, NO_OUTPUTS) == []
    assert core.iou.miou() == pytest.approx(1.0)


def test_ground_truth_size_mismatch_warns_once():
    seg = BandSegmenter()
    core, logged = make_core(seg, ground_truth=True)
    for sec in range(3):
        core.on_ground_truth(gt_msg(np.zeros((3, 4), np.uint8), header(sec)))
        core.on_image(image_msg(rgb_frame(6, 5), 'rgb8', hdr=header(sec)))
        run_steps(core)
    assert len(logged) == 1 and 'ground_truth: ground truth is 4x3 but the camera 5x6' in logged[0]
    assert core.bad_ground_truth.counts == {'size': 3}


# --- diagnostics ------------------------------------------------------------------------------


def to_diagnostic_array(status: dict, sec: int = 1) -> DiagnosticArray:
    """What an adapter does with the dict (rosbags' level is an int, rclpy's bytes)."""
    return DiagnosticArray(
        header=header(sec, 0, ''),
        status=[
            DiagnosticStatus(
                level=status['level'],
                name=status['name'],
                message=status['message'],
                hardware_id=status['hardware_id'],
                values=[KeyValue(key=k, value=v) for k, v in status['values']],
            )
        ],
    )


def test_diagnostics_serialize_as_a_real_diagnostic_array():
    core, _ = make_core(ground_truth=True)
    assert core.diagnostics()['level'] == WARN  # nothing received yet
    core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(1)))
    core.on_image(image_msg(rgb_frame(), 'rgb8', hdr=header(2)))  # replaces frame 1
    run_steps(core)
    status = core.diagnostics(hardware_id='/semseg_node')
    assert status['level'] == OK
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in status['values'])
    raw = TS.serialize_cdr(to_diagnostic_array(status), DiagnosticArray.__msgtype__)
    back = TS.deserialize_cdr(raw, DiagnosticArray.__msgtype__).status[0]
    assert (back.level, back.name, back.hardware_id) == (
        OK,
        'semseg_node: segmentation',
        '/semseg_node',
    )
    values = {kv.key: kv.value for kv in back.values}
    for key in (
        'input rate (Hz)', 'output rate (Hz)', 'latency stamp to publish p50 (ms)',
        'latency stamp to publish p99 (ms)', 'processing p50 (ms)', 'processing p99 (ms)',
        'frames dropped (stale)', 'backend', 'model', 'mIoU',
    ):  # fmt: skip
        assert key in values, key
    assert values['frames dropped (stale)'] == '1'
    assert (values['backend'], values['model'], values['class set']) == (
        'bands',
        'unused.onnx',
        'lyft13',
    )
    assert values['mIoU'] == 'n/a'  # no ground truth matched yet
    assert core.diagnostics()['level'] == WARN  # no new frame since the last report


def test_diagnostics_status_levels_and_messages():
    empty = LatencyStats()
    common = {
        'name': 'n', 'input_rate': 20.0, 'output_rate': 19.5, 'latency': empty,
        'processing': empty, 'received': 10, 'dropped_stale': 0, 'dropped_bad': {},
        'backend': 'b', 'model': 'm', 'class_set': 'c',
    }  # fmt: skip
    ok = diagnostics_status(**common, miou=0.5, ground_truth={'frames': 3})
    assert ok['level'] == OK and ok['message'] == '19.5 Hz out, p50 latency n/a ms, mIoU 0.500'
    assert dict(ok['values'])['mIoU'] == '0.5000'
    assert 'mIoU' not in dict(diagnostics_status(**common)['values'])  # GT off: no IoU row
    assert diagnostics_status(**common, new_bad=2)['level'] == WARN
    assert diagnostics_status(**common, new_frames=0)['level'] == WARN
    assert diagnostics_status(**common, new_failed=1)['level'] == WARN
    assert diagnostics_status(**common, new_failed=1, failing_reports=2)['level'] == ERROR
    assert diagnostics_status(**common, fatal='the inference thread died')['level'] == ERROR
    idle = diagnostics_status(**common, skipped=7, new_frames=3, new_skipped=3)
    assert idle['level'] == OK
    assert idle['message'] == 'idle: no subscriber on any output (3 frame(s) not processed)'
    assert dict(idle['values'])['frames skipped (no subscriber)'] == '7'


# --- proof of life: the real Segmenter on a tiny ONNX model -----------------------------------


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> Path:
    """A 1x1-conv "UNet" with the project's metadata: class = argmax of a fixed linear map."""
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    from onnx import TensorProto, helper, numpy_helper

    from semseg_ros.model_file import WEIGHTS_DIGEST_KEY, metadata_dict
    from semseg_ros.pipeline import InputSpec

    num_classes, (width, height) = LYFT13.num_classes, (16, 12)
    weights = np.random.default_rng(0).normal(size=(num_classes, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node('Conv', ['image', 'w'], ['logits'])],
        'tiny',
        [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['N', 3, height, width])],
        [
            helper.make_tensor_value_info(
                'logits', TensorProto.FLOAT, ['N', num_classes, height, width]
            )
        ],
        initializer=[numpy_helper.from_array(weights, 'w')],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    for key, value in metadata_dict(LYFT13, InputSpec((width, height))).items():
        model.metadata_props.add(key=key, value=value)
    digest = hashlib.sha256(model.graph.SerializeToString()).hexdigest()
    model.metadata_props.add(key=WEIGHTS_DIGEST_KEY, value=digest)  # as an export records
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp('model') / 'tiny.onnx'
    onnx.save(model, path)
    return path


def test_node_core_runs_the_real_segmenter_on_a_carla_frame(tiny_model):
    logged: list[str] = []
    params = {'model_path': str(tiny_model), 'backend': 'onnxruntime', 'device': 'cpu',
              'color_encoding': 'bgr8', 'ground_truth': True}  # fmt: skip
    core = NodeCore.start(params, log_warning=logged.append)
    assert core.segmenter.backend_name.startswith('onnxruntime')
    assert core.segmenter.class_set.name == 'lyft13'  # from the model's metadata
    rgb = rgb_frame(60, 80, seed=5)  # a 80x60 bgra8 camera, padded rows, as the bridge sends
    cam = image_msg(
        encode(rgb, 'bgra8'), 'bgra8', pad=8, hdr=header(42, 5, 'ego_vehicle/rgb_front')
    )
    expected = core.segmenter.segment(rgb).ids
    core.on_ground_truth(gt_msg(expected, header(42, 5)))
    core.on_image(cam)
    (frame,) = run_steps(core)
    assert frame.header is cam.header
    np.testing.assert_array_equal(frame.ids, expected)
    np.testing.assert_array_equal(image_to_array(frame.images['mask']), expected)
    color = image_to_array(frame.images['color'])
    np.testing.assert_array_equal(color, LYFT13.id_to_color(expected)[..., ::-1])
    assert core.iou.frames == 1 and core.iou.miou() == pytest.approx(1.0)
    values = dict(core.diagnostics()['values'])
    assert values['backend'] == core.segmenter.backend_name
    assert (values['model'], values['mIoU']) == ('tiny.onnx', '1.0000')
    assert logged == []


def test_class_set_parameter_recolours_and_must_fit_the_model(tiny_model):
    start = {'model_path': str(tiny_model), 'backend': 'onnxruntime', 'device': 'cpu'}
    with pytest.raises(
        NodeStartupError, match="'carla23' has 23 classes but the model predicts 13"
    ):
        NodeCore.start({**start, 'class_set': 'carla23'}, log_warning=print)
    custom = REPO_CONFIG / 'class_sets' / 'example.yaml'  # 5 classes: does not fit either
    with pytest.raises(NodeStartupError, match="'drivable5' has 5 classes"):
        NodeCore.start({**start, 'class_set': str(custom)}, log_warning=print)
    # A same-size palette recolours ~/color and ~/overlay; the ids stay the model's.
    greys = np.repeat(np.arange(13, dtype=np.uint8)[:, None] * 10, 3, axis=1)  # (13, 3)
    palette = ClassSet('grey13', tuple(f'c{i}' for i in range(13)), greys)
    core = NodeCore(NodeParams(**start), BandSegmenter(), log_warning=print)
    processor = FrameProcessor(core.segmenter, palette=palette)
    msg = image_msg(rgb_frame(), 'rgb8')
    out = processor.process(msg, msg.header)
    np.testing.assert_array_equal(image_to_array(out.images['color'])[..., 0], out.ids * 10)


# --- Sim-time gaps ------------------------------------------------------------------------------


def test_sim_time_gaps_count_skipped_ticks_and_restart_on_a_jump_back():
    from semseg_ros.node.statistics import SimTimeGaps

    gaps = SimTimeGaps(0.05)
    tick = 50_000_000
    added = [gaps.observe(k * tick) for k in (1, 2, 4, 7, 7, 8)]
    assert added == [0, 0, 1, 2, 0, 0] and gaps.missing == 3
    gaps.observe(1 * tick)  # a bag played again from the start: no count, new baseline
    gaps.observe(3 * tick + 3_000_000)  # jitter rounds to whole ticks
    assert gaps.missing == 4
    with pytest.raises(ValueError, match='tick_s must be positive'):
        SimTimeGaps(0)


def test_sim_tick_s_is_validated_and_zero_disables_the_count():
    with pytest.raises(ParamError, match=r'sim_tick_s -0.1 is negative: use e.g. 0.05'):
        NodeParams(sim_tick_s=-0.1)
    assert NodeParams(sim_tick_s=0).sim_tick_s == 0.0


FRAME_CHURN = """
import os, sys, threading
import numpy as np
from semseg_ros.node import return_frame_buffers_to_the_os
from semseg_ros.soak import rss_mb

if sys.argv[1] == 'node':
    assert return_frame_buffers_to_the_os()

def frames():  # 2 MB frames come and go on two threads, small allocations between them
    kept = []
    for _ in range(50):
        batch = [np.ones(2 << 20, np.uint8) for _ in range(40)]
        kept.append(np.ones(1000, np.uint8))
        del batch

threads = [threading.Thread(target=frames) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_mb(os.getpid()))
"""


@pytest.mark.skipif(__import__('platform').libc_ver()[0] != 'glibc', reason='glibc only')
def test_the_node_process_returns_frame_sized_buffers_to_the_os():
    import subprocess
    import sys

    def rss_after_churn(setting: str) -> float:
        run = subprocess.run([sys.executable, '-c', FRAME_CHURN, setting],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return float(run.stdout)

    # glibc's defaults keep freed frames in the threads' arenas (~160 MB here); the node's
    # setting gives them back (~35 MB: the interpreter and numpy).
    assert rss_after_churn('node') < 80 < rss_after_churn('glibc defaults')
