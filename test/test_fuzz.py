"""Hostile input: generated sensor_msgs/Image messages through the node's message path.

In-process (hypothesis): camera and ground-truth messages whose fields hold wrong values and
wrong Python types go through :class:`~semseg_ros.node.core.NodeCore` exactly as the rclpy
callbacks and the worker thread hand them over. Nothing may escape, every message lands in
one column of the accounting, and each kind of error is logged once, naming the field.

In a process: realistic malformed messages (the types rclpy enforces, wrong values) go to the
real ``semseg_node`` between good ones, camera frames and, with ``ground_truth`` on, ground
truth; it stays up and its last /diagnostics adds up.

``make test`` runs a few hundred seeded examples; ``make fuzz`` runs
``SEMSEG_FUZZ_EXAMPLES=10000`` in process and ``SEMSEG_FUZZ_PROCESS_MESSAGES=3000`` ground
truth messages through the node process (any seed: ``SEMSEG_FUZZ_SEED``).
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

hypothesis = pytest.importorskip('hypothesis', reason='pip install hypothesis (the test extra)')
from hypothesis import HealthCheck, example, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from semseg_ros.imaging import ENCODINGS, RGB_ENCODINGS, ImageFormatError, frame_to_rgb  # noqa: E402
from semseg_ros.labels import CARLA23  # noqa: E402
from semseg_ros.node.core import ALL_OUTPUTS, NodeCore  # noqa: E402
from semseg_ros.node.params import NodeParams  # noqa: E402

from ros_graph import wait_for_node  # noqa: E402  isort: skip
from test_node_core import BandSegmenter  # noqa: E402  isort: skip

EXAMPLES = int(os.environ.get('SEMSEG_FUZZ_EXAMPLES', '300'))
PROCESS_MESSAGES = int(os.environ.get('SEMSEG_FUZZ_PROCESS_MESSAGES', '300'))
SEED = int(os.environ.get('SEMSEG_FUZZ_SEED', '14'))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

#: The field each error kind must name in its warning.
FIELD_OF_KIND = {
    'encoding': ('encoding',),
    'size': ('height', 'width', 'ground truth is'),
    'step': ('step',),
    'short_data': ('data',),
    'data': ('data',),
    'is_bigendian': ('is_bigendian',),
    'header': ('header.stamp',),
}

# --- strategies -----------------------------------------------------------------------------

weird = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.lists(st.integers(0, 3), min_size=1, max_size=3).map(np.array),
    st.just(np.zeros((2, 2))),
    st.just(object()),
    st.complex_numbers(max_magnitude=4),
)
SIZES = st.integers(1, 12)
huge = st.sampled_from([0, -1, -(2**31), 100_000, 2**31, 2**32 + 1, 2**63, 10**30])
dimension = st.one_of(
    st.integers(1, 12),
    huge,
    st.integers(1, 12).map(np.int64),
    st.integers(1, 12).map(float),
    weird,
)
encoding = st.one_of(
    st.sampled_from([*ENCODINGS, 'yuv422', '', 'BGRA8', '8UC3', '32FC1', 'bayer_rggb8']),
    st.text(max_size=8),
    weird,
)
flag = st.one_of(st.integers(0, 1), st.integers(-300, 300), st.booleans(), weird)
stamp = st.builds(
    lambda sec, nanosec: SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)),
    st.one_of(st.integers(0, 2**31 - 1), weird),
    st.one_of(st.integers(0, 999_999_999), weird),
)
good_header = st.integers(0, 10**6).map(
    lambda sec: SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=0), frame_id='cam')
)


def data_like(size: int):
    """``data`` of about ``size`` bytes, in every container adapters use and some they do not."""
    length = st.one_of(st.just(size), st.integers(0, size + 16))
    return st.one_of(
        length.flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        length.map(lambda n: bytearray(n)),
        length.map(lambda n: np.zeros(n, np.uint8)),
        length.map(lambda n: array.array('B', bytes(n))),
        length.map(lambda n: memoryview(bytes(n))),
        st.lists(st.integers(-300, 300), max_size=min(size, 64)),
        st.sampled_from([np.float32, np.int16, np.uint16, np.bool_, np.int64]).map(
            lambda dtype: np.ones(size, dtype)
        ),
        length.map(lambda n: array.array('H', [1] * n)),
        weird,
    )


@st.composite
def image_messages(draw, *, sizes=SIZES) -> SimpleNamespace:
    """A good Image, then up to four of its fields replaced by anything."""
    height, width = draw(sizes), draw(sizes)
    enc = draw(st.sampled_from(RGB_ENCODINGS))
    step = width * ENCODINGS[enc].channels + draw(st.sampled_from([0, 0, 0, 1, 3]))
    fields = {
        'header': draw(good_header),
        'height': height,
        'width': width,
        'encoding': enc,
        'is_bigendian': 0,
        'step': step,
        'data': bytes(step * height),
    }
    mutations = {
        'header': stamp,
        'height': dimension,
        'width': dimension,
        'encoding': encoding,
        'is_bigendian': flag,
        'step': st.one_of(st.integers(-8, 64), huge, weird, st.integers(1, 8).map(width.__mul__)),
        'data': data_like(step * height),
    }
    for name in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=4, unique=True)):
        fields[name] = draw(mutations[name])
    return SimpleNamespace(**fields)


# --- in process ------------------------------------------------------------------------------


def make_core(**params) -> tuple[NodeCore, list[str]]:
    warnings: list[str] = []
    core = NodeCore(NodeParams(model_path='bands.onnx', **params), BandSegmenter(),
                    log_warning=warnings.append)  # fmt: skip
    return core, warnings


def columns(core: NodeCore) -> dict[str, int]:
    return {
        'received': core.slot.received,
        'published': core.published,
        'stale': core.slot.dropped,
        'bad': core.bad_input.total,
        'failed': core.failed,
        'skipped': core.skipped,
        'pending': core.pending,
    }


def assert_accounted(core: NodeCore, warnings: list[str], sent: int) -> None:
    n = columns(core)
    assert n['received'] == sent
    assert n['received'] == sum(n[k] for k in ('published', 'stale', 'bad', 'failed', 'skipped'))
    assert n['failed'] == 0 and n['pending'] == 0, n
    counts = core.bad_input.counts
    suspect = [w for w in warnings if 'padding' in w and 'dropping such frames' not in w]
    assert len(suspect) == int(core.suspect > 0), suspect  # one warning, the frames counted
    warnings = [w for w in warnings if w not in suspect]
    assert len(warnings) == len(counts), (warnings, counts)  # one warning per kind
    for kind in counts:
        (line,) = [w for w in warnings if f'{kind!r} errors' in w]
        assert any(field in line for field in FIELD_OF_KIND[kind]), line
        assert len(line) < 600, line  # a fuzzed value never floods the log


def fuzz_peer(ros_context, *topics: str) -> tuple:
    """The node process's counterpart: a node that records /diagnostics and ~/mask and
    publishes Images on ``topics`` (RELIABLE, depth 100: nothing lost on our side), with its
    executor. Returns (peer, executor, reports, masks, publishers)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    peer = rclpy.create_node('fuzzer', context=ros_context)
    reports: list = []
    masks: list = []
    peer.create_subscription(DiagnosticArray, '/diagnostics', reports.append, 10)
    peer.create_subscription(Image, '/semseg_node/mask', masks.append, 100)
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    publishers = tuple(peer.create_publisher(Image, topic, qos) for topic in topics)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(peer)
    return peer, executor, reports, masks, publishers


def stop_and_collect_last_reports(node, executor, peer) -> tuple[int, str]:
    """SIGINT the node process, spin 3 s more for its last /diagnostics, tear ``peer`` down;
    returns the node's exit code and output."""
    from test_node import stop

    code, _, out = stop(node, signal.SIGINT)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        executor.spin_once(0.05)
    executor.shutdown()
    peer.destroy_node()
    return code, out


def test_generated_camera_messages_never_escape_and_all_add_up():
    core, warnings = make_core()
    sent = 0

    @FUZZ
    @seed(SEED)
    @given(image_messages())
    # Found by make fuzz at 10,000: a float stamp escaped through the sim-time gap count.
    @example(SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=float('inf'))),
        height=1, width=1, encoding='bgra8', is_bigendian=0, step=4, data=bytes(4),
    ))  # fmt: skip
    def feed(msg):
        nonlocal sent
        sent += 1
        before = columns(core)
        core.on_image(msg)  # the subscription callback: must never raise
        core.step(lambda: ALL_OUTPUTS, lambda frame: None, timeout=0)  # nor the worker
        after = columns(core)
        moved = {k: after[k] - before[k] for k in ('published', 'bad', 'failed')}
        assert sorted(moved.values()) == [0, 0, 1] and moved['failed'] == 0, (msg, moved)

    feed()
    print(f'fuzz: {sent} camera messages: {columns(core)}, bad by kind {core.bad_input.counts}')
    assert_accounted(core, warnings, sent)
    assert core.published > 0 and core.bad_input.total > 0
    assert set(core.bad_input.counts) >= {'encoding', 'size', 'step', 'short_data', 'data'}


@st.composite
def ground_truth_messages(draw) -> SimpleNamespace:
    """Ground truth for a 6x5 camera: carla23 palette pixels, then fields replaced."""
    msg = draw(image_messages(sizes=st.just(5)))
    plain = all(type(v) in (bytes, str, int) for v in (msg.data, msg.encoding, msg.step))
    if plain and (msg.encoding, msg.step) == ('rgb8', 15):
        ids = draw(st.lists(st.integers(0, 22), min_size=25, max_size=25))
        msg.data = CARLA23.id_to_color(np.array(ids, np.uint8).reshape(5, 5)).tobytes()
    return msg


def test_generated_ground_truth_never_escapes_and_all_add_up():
    core, warnings = make_core(ground_truth=True, gt_class_set='carla23')
    gt_sent = 0
    scored = 0

    @FUZZ
    @seed(SEED)
    @given(ground_truth_messages())
    def feed(gt):
        nonlocal gt_sent, scored
        gt_sent += 1
        camera = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(
            sec=gt_sent, nanosec=0)), height=5, width=5, encoding='rgb8', is_bigendian=0,
            step=15, data=bytes(75))  # fmt: skip
        try:
            stamp = (int(gt.header.stamp.sec), int(gt.header.stamp.nanosec))
        except (TypeError, ValueError, OverflowError):
            stamp = None
        else:  # pair it with a camera frame of its own stamp
            gt.header.stamp.sec, gt.header.stamp.nanosec = gt_sent, 0
            stamp = (gt_sent, 0)
        core.on_ground_truth(gt)
        core.on_image(camera)
        core.step(lambda: ALL_OUTPUTS, lambda frame: None, timeout=0)
        core.step(lambda: ALL_OUTPUTS, lambda frame: None, timeout=0)  # scores what is pending
        if stamp is not None:
            with contextlib.suppress(ImageFormatError):
                scored += frame_to_rgb(gt).shape[:2] == (5, 5)

    feed()
    matcher = core.matcher
    bad = core.bad_ground_truth.counts
    print(f'fuzz: {gt_sent} ground-truth messages: {core.iou.frames} scored, bad by kind {bad}')
    assert core.failed == 0
    assert core.iou.frames == scored > 0
    assert gt_sent == (
        core.iou.frames
        + core.bad_ground_truth.total
        + matcher.unmatched_ground_truth
        + matcher.pending[0]
    )
    counts = core.bad_ground_truth.counts
    values = dict(core.diagnostics()['values'])
    assert {kind: int(values[f'ground truth dropped ({kind})']) for kind in counts} == counts
    warnings = [w for w in warnings if 'dropping such frames' in w]  # the camera's are fine
    assert len(warnings) == len(counts) and 'size' in counts  # a 5x5 GT for a 5x5 camera only
    for kind in counts:
        (line,) = [w for w in warnings if f'{kind!r} errors' in w]
        assert line.startswith('ground_truth: ') or '/ground_truth' in line.split(':')[0], line
        assert any(field in line for field in FIELD_OF_KIND[kind]), line


@pytest.mark.parametrize('height', [100_000, 2**31, 2**32 + 1])
def test_a_huge_size_with_tiny_data_is_refused_before_allocating(height):
    msg = SimpleNamespace(height=height, width=100_000, encoding='bgra8', is_bigendian=0,
                          step=400_000, data=bytes(64))  # fmt: skip
    tracemalloc.start()
    try:
        with pytest.raises(ImageFormatError) as err:
            frame_to_rgb(msg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.kind == 'short_data' and peak < 1_000_000


def test_an_array_for_is_bigendian_is_a_bad_frame_naming_the_field():
    core, warnings = make_core()
    msg = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0)),
                          height=2, width=2, encoding='rgb8', is_bigendian=np.array([1, 0]),
                          step=6, data=bytes(12))  # fmt: skip
    core.on_image(msg)
    core.step(lambda: ALL_OUTPUTS, lambda frame: None, timeout=0)
    assert core.bad_input.counts == {'is_bigendian': 1}
    (line,) = warnings
    assert 'is_bigendian must be 0 or 1, got array([1, 0])' in line


def test_bgra8_data_labelled_bgr8_is_published_with_one_warning_and_warn():
    """Legal by the step rules (800 bytes of padding a row), so not dropped; but a user
    wants to know the label is probably wrong: one warning saying so, a count, WARN."""
    from semseg_ros.node.diagnostics import WARN

    core, warnings = make_core()
    core.diagnostics()
    for sec in range(3):
        msg = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=0)),
                              height=6, width=8, encoding='bgr8', is_bigendian=0, step=32,
                              data=bytes(6 * 32))  # fmt: skip
        core.on_image(msg)
        core.step(lambda: ALL_OUTPUTS, lambda frame: None, timeout=0)
    assert core.published == 3 and core.bad_input.total == 0
    (line,) = warnings
    assert 'step 32 is width 8 x 4 bytes' in line and 'bgra8' in line and 'bgr8' in line
    status = core.diagnostics()
    assert status['level'] == WARN and 'encoding label' in status['message']
    assert dict(status['values'])['frames suspect (padding fits another encoding)'] == '3'


# --- the node process ------------------------------------------------------------------------


def realistic_malformed(rng: np.random.Generator, sec: int):
    """An rclpy Image with well-typed but wrong fields (what a buggy publisher sends)."""
    from sensor_msgs.msg import Image

    height, width = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    enc = str(rng.choice([*RGB_ENCODINGS, 'mono16', 'yuv422', '32FC1', 'nonsense', '']))
    bpp = ENCODINGS[enc].channels * ENCODINGS[enc].itemsize if enc in ENCODINGS else 3
    step = width * bpp
    size = step * height
    what = rng.integers(0, 7)
    if what == 0:
        height = int(rng.choice([0, 100_000, 2**32 - 1]))
    elif what == 1:
        width = int(rng.choice([0, 100_000, 2**32 - 1]))
    elif what == 2:
        step = int(rng.integers(0, max(step, 1)))
    elif what == 3:
        size = int(rng.integers(0, max(size, 1)))
    elif what == 4:
        step = width * int(rng.choice([1, 2, 4, 8]))
        size = step * height
    msg = Image(height=height, width=width, encoding=enc, step=step,
                is_bigendian=int(rng.integers(0, 2)), data=bytes(size))  # fmt: skip
    msg.header.stamp.sec = sec
    return msg


@pytest.mark.slow
def test_the_node_process_survives_malformed_frames_between_good_ones(
    ros_env, ros_context, tmp_path
):
    """A few hundred malformed frames between good ones, RELIABLE end to end: the node stays
    up, publishes the good ones, and its last /diagnostics accounts for every frame."""
    from test_bag import export_tiny_model
    from test_node import camera_frame, image_msg, start_node

    model = export_tiny_model(tmp_path)
    node = start_node(ros_env, '-p', f'model_path:={model}', '-p', 'qos_depth:=100')
    peer, executor, reports, _, (camera,) = fuzz_peer(ros_context, 'image')
    rng = np.random.default_rng(SEED)
    sent = bad_sent = 0
    try:
        wait_for_node(executor, peer, node, publishers=[camera])
        for k in range(1, 301):
            if k % 5 == 0:
                msg = image_msg(camera_frame(k), 'bgra8', sec=k)
            else:
                msg = realistic_malformed(rng, k)
                bad_sent += 1
            camera.publish(msg)
            sent += 1
            executor.spin_once(0.002)
        camera.wait_for_all_acked()
        time.sleep(0.5)
        assert node.poll() is None, 'the node died'
    finally:
        code, out = stop_and_collect_last_reports(node, executor, peer)
    assert code == 0, out
    values = {kv.key: kv.value for kv in reports[-1].status[0].values}
    n = {
        'lost': int(values['frames lost in transport']),
        'received': int(values['frames received']),
        'published': int(values['frames published']),
        'pending': int(values['frames pending']),
        'stale': int(values['frames dropped (stale)']),
        'bad': int(values['frames dropped (bad input)']),
        'failed': int(values['frames failed']),
        'skipped': int(values['frames skipped (no subscriber)']),
    }
    assert n['received'] + n['lost'] == sent, values
    assert n['received'] == sum(
        n[k] for k in ('published', 'pending', 'stale', 'bad', 'failed', 'skipped')
    ), values
    assert n['failed'] == 0 and n['published'] > 0 and n['bad'] > 0, values
    kinds = [k for k in values if k.startswith('frames dropped (') and k not in (
        'frames dropped (stale)', 'frames dropped (bad input)')]  # fmt: skip
    warned = [line for line in out.splitlines() if 'dropping such frames' in line]
    assert len(warned) == len(kinds), (warned, kinds)
    assert 'Traceback' not in out


def realistic_malformed_ground_truth(rng: np.random.Generator, sec: int, size: tuple[int, int]):
    """Ground truth for a ``size`` (width, height) camera, carla23 palette colours, with one
    field wrong, well-typed (what a misconfigured segmentation camera or bridge sends)."""
    from sensor_msgs.msg import Image

    width, height = size
    ids = rng.integers(0, len(CARLA23.names), (height, width), dtype=np.uint8)
    enc, step, data = 'rgb8', width * 3, CARLA23.id_to_color(ids).tobytes()
    what = rng.integers(0, 7)
    if what == 0:  # another image size than the camera's (a camera set up differently)
        width, height = int(rng.integers(1, 2 * width)), int(rng.integers(1, 2 * height))
        step = width * 3
        data = bytes(step * height)
    elif what == 1:
        height = int(rng.choice([0, 100_000, 2**32 - 1]))
    elif what == 2:
        width = int(rng.choice([0, 100_000, 2**32 - 1]))
    elif what == 3:
        step = int(rng.integers(0, step))
    elif what == 4:
        data = data[: int(rng.integers(0, len(data)))]
    elif what == 5:
        enc = str(rng.choice(['yuv422', '32FC1', 'bayer_rggb8', 'nonsense', '', 'mono16']))
    else:  # padded rows the data does not hold
        step += int(rng.integers(1, 8))
    msg = Image(height=height, width=width, encoding=enc, step=step, data=data)
    msg.header.stamp.sec = sec
    return msg


def ground_truth_outcome(msg, size: tuple[int, int]) -> str:
    """What the node must make of ``msg``: 'scored', or the kind of error it drops it for."""
    try:
        rgb = frame_to_rgb(msg)
    except ImageFormatError as err:
        return err.kind
    return 'scored' if rgb.shape[1::-1] == size else 'size'


@pytest.mark.slow
def test_the_node_process_survives_malformed_ground_truth_between_good_pairs(
    ros_env, ros_context, tmp_path
):
    """A few hundred malformed ground-truth messages, each with a good camera frame of its
    stamp (so each is matched and decoded), every fifth a good pair, in lock step (each mask
    awaited): the node stays up, scores the good ones, counts the bad ones by kind on
    /diagnostics, and warns once per kind naming the field."""
    from sensor_msgs.msg import Image
    from test_bag import export_tiny_model
    from test_node import HEIGHT, WIDTH, camera_frame, image_msg, start_node

    from semseg_ros.labels import LYFT13, remap

    model = export_tiny_model(tmp_path)
    node = start_node(ros_env, '-p', f'model_path:={model}', '-p', 'ground_truth:=true',
                      '-p', 'gt_class_set:=carla23', '-p', 'qos_depth:=100')  # fmt: skip
    peer, executor, reports, masks, (camera, ground_truth) = fuzz_peer(
        ros_context, 'image', 'ground_truth'
    )
    rng = np.random.default_rng(SEED)
    frames = [camera_frame(seed) for seed in range(4)]
    size = (WIDTH, HEIGHT)
    expected: dict[str, int] = {}

    def until(done, what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, f'no {what}'
            assert node.poll() is None, 'the node died'
            executor.spin_once(0.01)

    def good_ground_truth(sec: int) -> Image:
        ids = rng.integers(0, LYFT13.num_classes, (HEIGHT, WIDTH), dtype=np.uint8)
        return image_msg(CARLA23.id_to_color(remap(ids, LYFT13, CARLA23)), 'rgb8', sec=sec)

    try:
        wait_for_node(executor, peer, node, publishers=[camera, ground_truth])
        for k in range(1, PROCESS_MESSAGES + 1):
            if k % 5 == 0:
                truth = good_ground_truth(k)
            else:
                truth = realistic_malformed_ground_truth(rng, k, size)
            outcome = ground_truth_outcome(truth, size)
            expected[outcome] = expected.get(outcome, 0) + 1
            ground_truth.publish(truth)
            camera.publish(image_msg(frames[k % len(frames)], 'bgra8', sec=k))
            until(lambda k=k: masks and masks[-1].header.stamp.sec == k, f'mask {k}')
        assert expected.get('scored', 0) >= PROCESS_MESSAGES // 5 and len(expected) >= 5

        def accounted() -> bool:
            values = {kv.key: kv.value for kv in reports[-1].status[0].values} if reports else {}
            scored = int(values.get('ground truth frames scored', 0))
            return scored + int(values.get('ground truth dropped (bad)', 0)) == PROCESS_MESSAGES

        until(accounted, 'report with every ground-truth message accounted for')
    finally:
        code, out = stop_and_collect_last_reports(node, executor, peer)
    assert code == 0, out
    assert 'Traceback' not in out
    values = {kv.key: kv.value for kv in reports[-1].status[0].values}
    frames_in = {key: int(values[f'frames {key}']) for key in ('received', 'published', 'failed')}
    assert frames_in == {'received': PROCESS_MESSAGES, 'published': PROCESS_MESSAGES, 'failed': 0}
    bad = {k: n for k, n in expected.items() if k != 'scored'}
    assert int(values['ground truth frames scored']) == expected['scored'], values
    assert int(values['ground truth dropped (bad)']) == sum(bad.values()), values
    dropped = {
        k.removeprefix('ground truth dropped (')[:-1]: int(v)
        for k, v in values.items()
        if k.startswith('ground truth dropped (') and k != 'ground truth dropped (bad)'
    }
    assert dropped == bad, values  # by kind
    assert values['ground truth unmatched'] == values['ground truth lost in transport'] == '0'
    warned = [line for line in out.splitlines() if 'dropping such frames' in line]
    assert len(warned) == len(bad), warned  # one per kind
    for kind in bad:
        (line,) = [w for w in warned if f'{kind!r} errors' in w]
        assert 'ground_truth: ' in line, line
        assert any(field in line for field in FIELD_OF_KIND[kind]), line
    print(f'fuzz: {PROCESS_MESSAGES} ground-truth messages through the node: {expected}')
