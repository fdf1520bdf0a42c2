"""The rclpy node on real ROS 2 (Kilted from PyPI, or a sourced install).

In-process tests build the node with rclpy's own options (``parameter_overrides``,
``cli_args`` remaps) on a context of their own and talk to it from a second node through an
executor; process tests start ``semseg_node`` the way ``ros2 run`` / ``ros2 launch`` do, with
``--ros-args --params-file config/semseg.yaml`` and remaps, and send it signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='ROS 2 is not installed: pip install -e .[ros]')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_graph import wait_for_node  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from test_bag import export_tiny_model  # noqa: E402

from semseg_ros.ground_truth import OnlineIoU  # noqa: E402
from semseg_ros.labels import CARLA23, LYFT13, remap  # noqa: E402
from semseg_ros.model_file import WEIGHTS_DIGEST_KEY  # noqa: E402
from semseg_ros.node.live_params import LIVE_PARAMETERS, ros_description  # noqa: E402
from semseg_ros.node.params import PARAMETERS, NodeParams  # noqa: E402
from semseg_ros.node.ros_node import SemsegNode  # noqa: E402
from semseg_ros.segmenter import Segmenter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'semseg.yaml'
CAMERA = '/carla/ego_vehicle/rgb_front/image'
SEG_CAMERA = '/carla/ego_vehicle/semantic_segmentation_front/image'
FRAME_ID = 'ego_vehicle/rgb_front'
WIDTH, HEIGHT = 96, 72


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp('model'))


@pytest.fixture(scope='module')
def segmenter(tiny_model) -> Segmenter:
    """The reference: what the node must publish is what this returns for the same frame."""
    return Segmenter.from_model(tiny_model, backend='onnxruntime', device='cpu')


def camera_frame(seed: int) -> np.ndarray:
    """(H, W, 4) uint8 bgra8, as the CARLA bridge publishes it."""
    rng = np.random.default_rng(seed)
    bgra = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    bgra[..., 3] = 255
    return bgra


def image_msg(pixels: np.ndarray, encoding: str, *, sec: int, nanosec: int = 0) -> Image:
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.step = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg.data = pixels.tobytes()
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = FRAME_ID
    return msg


def as_array(msg: Image) -> np.ndarray:
    channels = msg.step // msg.width
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(shape)


class Graph:
    """The node under test plus a peer node (camera publishers, output subscribers) spun by one
    executor in a background thread."""

    def __init__(self, context, model: Path, **overrides) -> None:
        overrides.setdefault('backend', 'onnxruntime')
        overrides.setdefault('device', 'cpu')
        remaps = overrides.pop('remaps', {'image': CAMERA, 'ground_truth': SEG_CAMERA})
        self.context = context
        self.node = SemsegNode(
            context=context,
            parameter_overrides=[
                Parameter('model_path', value=str(model)),
                *(Parameter(name, value=value) for name, value in overrides.items()),
            ],
            cli_args=['--ros-args', *(x for a, b in remaps.items() for x in ('-r', f'{a}:={b}'))],
        )
        self.peer = rclpy.create_node('peer', context=context)
        self.received: dict[str, list] = {}
        self.executor = SingleThreadedExecutor(context=context)
        for node in (self.node, self.peer):
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def publisher(self, msg_type, topic: str, qos: QoSProfile | int = 10):
        return self.peer.create_publisher(msg_type, topic, qos)

    def subscribe(self, topic: str, msg_type=Image) -> list:
        got: list = []
        self.received[topic] = got
        self.peer.create_subscription(msg_type, topic, got.append, 10)
        return got

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0, what: str = '') -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout} s waiting for {what}')
            time.sleep(0.01)

    def diagnostics(self) -> dict[str, str]:
        """The node's next /diagnostics report as {key: value} (a report is due every 1 s)."""
        got = self.received.get('/diagnostics') or self.subscribe('/diagnostics', DiagnosticArray)
        before = len(got)
        self.wait(lambda: len(got) > before, 5.0, '/diagnostics')
        (status,) = got[-1].status
        return {'level': status.level, **{kv.key: kv.value for kv in status.values}}

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(5)
        self.node.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def graph(ros_context, tiny_model):
    graphs: list[Graph] = []

    def make(**overrides) -> Graph:
        graphs.append(Graph(ros_context, tiny_model, **overrides))
        return graphs[-1]

    yield make
    for g in graphs:
        g.close()


def connected(publisher, count: int = 1) -> Callable[[], bool]:
    return lambda: publisher.get_subscription_count() >= count


# --- In one process ----------------------------------------------------------------------------


def test_masks_equal_the_segmenters_and_every_output_carries_the_input_header(graph, segmenter):
    g = graph()
    outputs = {name: g.subscribe(f'/semseg_node/{name}') for name in ('mask', 'color', 'overlay')}
    camera = g.publisher(Image, CAMERA)
    g.wait(connected(camera), what='the node to subscribe the camera')
    g.wait(lambda: g.node.wanted_outputs().overlay, what='our subscriptions to match')
    for k in range(3):  # one at a time: the newest-frame slot drops nothing
        camera.publish(image_msg(camera_frame(k), 'bgra8', sec=10, nanosec=k))
        g.wait(lambda k=k: all(len(got) > k for got in outputs.values()), what=f'frame {k}')
    for k in range(3):
        bgra = camera_frame(k)
        expected = segmenter.segment(bgra[..., 2::-1].copy()).ids  # (H, W) uint8
        mask, color, overlay = (outputs[name][k] for name in ('mask', 'color', 'overlay'))
        for msg in (mask, color, overlay):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (10, k)
            assert msg.header.frame_id == FRAME_ID
            assert (msg.height, msg.width) == (HEIGHT, WIDTH)
        assert mask.encoding == 'mono8'
        np.testing.assert_array_equal(as_array(mask), expected)
        assert color.encoding == overlay.encoding == 'rgb8'
        np.testing.assert_array_equal(as_array(color), LYFT13.id_to_color(expected))
    report = g.diagnostics()
    assert report['frames received'] == report['frames published'] == '3'
    assert report['frames lost in transport'] == report['frames dropped (stale)'] == '0'
    assert report['backend'].startswith('onnxruntime') and report['class set'] == 'lyft13'


def test_outputs_are_computed_only_when_subscribed(graph):
    g = graph()
    camera = g.publisher(Image, CAMERA)
    g.wait(connected(camera), what='the node to subscribe the camera')
    report = g.diagnostics()
    camera.publish(image_msg(camera_frame(0), 'bgra8', sec=1))
    g.wait(lambda: g.node.core.skipped == 1, what='the frame to be skipped')
    assert g.node.core.processing.p50 != g.node.core.processing.p50  # NaN: nothing was run
    masks = g.subscribe('/semseg_node/mask')
    g.wait(lambda: g.node.wanted_outputs().mask, what='the mask subscription to match')
    assert g.node.wanted_outputs() == type(g.node.wanted_outputs())(True, False, False)
    camera.publish(image_msg(camera_frame(1), 'bgra8', sec=2))
    g.wait(lambda: len(masks) == 1, what='a mask')
    report = g.diagnostics()
    assert report['frames skipped (no subscriber)'] == '1'
    assert report['frames published'] == '1' and report['frames received'] == '2'


def test_every_parameter_is_declared_with_its_description_and_live_or_read_only(graph):
    g = graph()
    declared = sorted({p.name for p in PARAMETERS} - {'use_sim_time'})  # rclpy declares that
    descriptors = dict(zip(declared, g.node.describe_parameters(declared), strict=True))
    for spec in PARAMETERS:
        if spec.name in descriptors:
            descriptor = descriptors[spec.name]
            assert descriptor.description == ros_description(
                spec.name, spec.metadata['description']
            )
            live = spec.name in LIVE_PARAMETERS
            assert descriptor.read_only is not live, spec.name
            assert ('Read-only' in descriptor.description) is not live, spec.name
    (result,) = g.node.set_parameters([Parameter('qos_depth', value=9)])
    assert not result.successful and 'read-only' in result.reason
    assert g.node.get_parameter('qos_depth').value == 5


@pytest.mark.parametrize(
    ('name', 'value', 'expected'),
    [
        ('overlay_alpha', 1.5, 'overlay_alpha 1.5 is outside 0..1'),
        ('overlay_alpha', 'half', "'half'"),
        ('color_encoding', 'yuv422', "color_encoding 'yuv422'"),
        ('highlight_classes', ['Roads', 'rod'], "no class 'rod' in class set lyft13"),
        ('highlight_classes', [13], 'class id 13 is outside 0..12'),
    ],
)
def test_a_bad_live_value_is_refused_naming_it_and_nothing_changes(graph, name, value, expected):
    g = graph()
    before, stored = g.node.core.processor.display, g.node.get_parameter(name).value
    (result,) = g.node.set_parameters([Parameter(name, value=value)])
    assert not result.successful and expected in result.reason, result.reason
    assert g.node.core.processor.display is before  # the next frames look as before
    assert g.node.get_parameter(name).value == stored


def test_display_parameters_change_the_published_images_while_running(graph, segmenter):
    g = graph()
    color, overlay = g.subscribe('/semseg_node/color'), g.subscribe('/semseg_node/overlay')
    camera = g.publisher(Image, CAMERA)
    g.wait(connected(camera), what='the node to subscribe the camera')
    g.wait(lambda: g.node.wanted_outputs().overlay, what='our subscriptions to match')
    bgra = camera_frame(0)
    rgb = bgra[..., 2::-1].copy()
    ids = segmenter.segment(rgb).ids
    camera.publish(image_msg(bgra, 'bgra8', sec=1))
    g.wait(lambda: len(overlay) == 1 and len(color) == 1, what='the first frame')
    np.testing.assert_array_equal(as_array(color[0]), LYFT13.id_to_color(ids))

    highlighted = int(np.bincount(ids.ravel()).argmax())  # the most frequent class
    results = g.node.set_parameters(
        [
            Parameter('overlay_alpha', value=1.0),
            Parameter('color_encoding', value='bgr8'),
            Parameter('highlight_classes', value=[LYFT13.names[highlighted]]),
        ]
    )
    assert all(r.successful for r in results), results
    assert g.node.core.processor.display.highlight == (highlighted,)
    camera.publish(image_msg(bgra, 'bgra8', sec=2))
    g.wait(lambda: len(overlay) == 2 and len(color) == 2, what='the second frame')
    got_color, got_overlay = as_array(color[1]), as_array(overlay[1])
    assert color[1].encoding == overlay[1].encoding == 'bgr8'
    np.testing.assert_array_equal(got_overlay, got_color)  # alpha 1: the mask alone
    got_rgb = got_color[..., ::-1]
    keep = ids == highlighted
    np.testing.assert_array_equal(got_rgb[keep], LYFT13.id_to_color(ids)[keep])
    others = got_rgb[~keep]
    assert (others[:, 0] == others[:, 1]).all() and (others[:, 1] == others[:, 2]).all()

    # By id too, and back to none highlighted.
    (result,) = g.node.set_parameters([Parameter('highlight_classes', value=[highlighted])])
    assert result.successful and g.node.core.processor.display.highlight == (highlighted,)
    (result,) = g.node.set_parameters([Parameter('highlight_classes', value=[])])
    assert result.successful and g.node.core.processor.display.highlight == ()


@pytest.mark.parametrize('namespace', ['/', '/carla', '/a/b'])
def test_the_params_file_loads_for_the_node_in_any_namespace(ros_context, tiny_model, namespace):
    node = SemsegNode(
        context=ros_context,
        parameter_overrides=[Parameter('model_path', value=str(tiny_model))],
        cli_args=['--ros-args', '--params-file', str(PARAMS_FILE), '-r', f'__ns:={namespace}'],
    )
    try:
        # The file documents the defaults; it must not silently differ from the code.
        defaults = NodeParams(model_path=str(tiny_model))
        assert node.core.params == defaults
        assert node.get_fully_qualified_name() == f'{namespace.rstrip("/")}/semseg_node'
        # One camera per namespace: each node's /diagnostics status has a name of its own.
        sent = []
        node.diagnostics_publisher.publish = sent.append
        node.diagnostics_callback()
        (status,) = sent[0].status
        expected = {'/': 'semseg_node', '/carla': 'carla/semseg_node', '/a/b': 'a/b/semseg_node'}
        assert status.name == f'{expected[namespace]}: segmentation'
    finally:
        node.destroy_node()


def qos_of(node, topic: str, *, publishers: bool):
    """The QoS an endpoint of ``topic`` was created with, as the graph reports it."""
    get = node.get_publishers_info_by_topic if publishers else node.get_subscriptions_info_by_topic
    (info,) = [i for i in get(topic) if i.node_name == 'semseg_node']
    return info.qos_profile


def test_a_qos_override_changes_that_topic_only(graph):
    g = graph(
        ground_truth=True,
        **{
            f'qos_overrides.{CAMERA}.subscription.reliability': 'best_effort',
            'qos_overrides./semseg_node/mask.publisher.reliability': 'best_effort',
            'qos_overrides./semseg_node/mask.publisher.depth': 3,
        },
    )
    best_effort, reliable = ReliabilityPolicy.BEST_EFFORT, ReliabilityPolicy.RELIABLE
    # What the graph sees (discovery carries reliability, not depth) ...
    assert qos_of(g.peer, CAMERA, publishers=False).reliability == best_effort
    # ... best_available with no publisher yet resolves to reliable
    assert qos_of(g.peer, SEG_CAMERA, publishers=False).reliability == reliable
    assert qos_of(g.peer, '/semseg_node/mask', publishers=True).reliability == best_effort
    for name in ('color', 'overlay'):
        assert qos_of(g.peer, f'/semseg_node/{name}', publishers=True).reliability == reliable
    # ... and what the endpoints were created with.
    depths = {name: pub.qos_profile.depth for name, pub in g.node.image_publishers.items()}
    assert depths == {'mask': 3, 'color': 10, 'overlay': 10, 'confidence': 10, 'error': 10}
    assert g.node.gt_subscription.qos_profile.depth == g.node.image_subscription.qos_profile.depth


def test_ground_truth_is_scored_online(graph, segmenter):
    g = graph(ground_truth=True)
    g.subscribe('/semseg_node/mask')
    camera, seg_camera = g.publisher(Image, CAMERA), g.publisher(Image, SEG_CAMERA)
    g.wait(lambda: connected(camera)() and connected(seg_camera)(), what='both subscriptions')
    g.wait(lambda: g.node.wanted_outputs().mask, what='the mask subscription to match')
    expected = OnlineIoU('carla23', 'lyft13')
    for k in range(4):
        bgra = camera_frame(k)
        ids = segmenter.segment(bgra[..., 2::-1].copy()).ids
        truth = ids.copy()
        truth[: HEIGHT // 2] = (truth[: HEIGHT // 2] + k + 1) % 13  # wrong in the top half
        gt_rgb = CARLA23.id_to_color(remap(truth, LYFT13, CARLA23))  # the bridge's palette
        expected.update(ids, gt_rgb)
        gt_bgra = np.concatenate([gt_rgb[..., ::-1], np.full_like(gt_rgb[..., :1], 255)], -1)
        seg_camera.publish(image_msg(gt_bgra, 'bgra8', sec=20 + k))  # either may come first
        camera.publish(image_msg(bgra, 'bgra8', sec=20 + k))
        g.wait(lambda k=k: g.node.core.iou.frames == k + 1, what=f'frame {k} scored')
    report = g.diagnostics()
    assert report['ground truth frames scored'] == '4'
    assert report['mIoU'] == f'{expected.miou():.4f}'
    assert 0 < expected.miou() < 1


def test_use_sim_time_measures_latency_on_clock(graph):
    g = graph(use_sim_time=True)
    masks = g.subscribe('/semseg_node/mask')
    clock = g.publisher(Clock, '/clock')
    camera = g.publisher(Image, CAMERA)
    g.wait(lambda: connected(camera)() and connected(clock)(), what='camera and /clock')
    g.wait(lambda: g.node.wanted_outputs().mask, what='the mask subscription to match')
    now = Clock()
    now.clock.sec = 100
    clock.publish(now)
    g.wait(lambda: g.node.get_clock().now().nanoseconds == 100 * 10**9, what='sim time 100 s')
    camera.publish(image_msg(camera_frame(0), 'bgra8', sec=99, nanosec=950_000_000))
    g.wait(lambda: len(masks) == 1, what='a mask')
    # The worker publishes, then records the latency: under load a report can fall between.
    g.wait(lambda: g.node.core.latency.count == 1, what='the latency sample')
    report = g.diagnostics()
    # Stamp 99.95 s published at sim time 100 s: 50 ms of simulated time, whatever the wall.
    assert report['latency stamp to publish p50 (ms)'] == '50.0'


def test_frames_the_simulator_stamped_but_never_sent_are_counted_from_sim_time_gaps(graph):
    """A bridge skipping ticks (stamps 0.05 s apart, some missing): the node counts what never
    reached it from the stamps alone, however the wall clock ran."""
    g = graph(sim_tick_s=0.05)
    camera = g.publisher(Image, CAMERA)
    g.wait(connected(camera), what='the node to subscribe the camera')
    ticks = [1, 2, 4, 7, 8, 12]  # 3, 5, 6, 9, 10, 11 never sent: 6 frames
    for count, k in enumerate(ticks, start=1):  # one at a time, each received
        sec, nanosec = divmod(k * 50_000_000, 1_000_000_000)
        camera.publish(image_msg(camera_frame(k), 'bgra8', sec=sec, nanosec=nanosec))
        g.wait(lambda count=count: g.node.core.slot.received == count, what=f'frame {k}')
    report = g.diagnostics()
    assert report['frames never received (sim-time gaps)'] == '6'
    assert report['frames received'] == str(len(ticks))
    keys = dict(graph(sim_tick_s=0.0).node.core.diagnostics()['values'])
    assert 'frames never received (sim-time gaps)' not in keys  # 0: not counted


def compressed_msg(data: bytes, fmt: str, *, sec: int) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    msg.header.stamp.sec = sec
    msg.header.frame_id = FRAME_ID
    return msg


def test_compressed_input_is_decoded_into_the_same_path_and_bad_frames_are_counted(
    graph, segmenter
):
    """input_transport: compressed subscribes the remapped camera + '/compressed'; a PNG frame
    gives the raw frame's mask, a corrupt JPEG and an unknown format are dropped and counted
    per kind, and the node goes on."""
    import cv2

    g = graph(input_transport='compressed')
    assert g.node.image_subscription.topic_name == CAMERA + '/compressed'
    masks = g.subscribe('/semseg_node/mask')
    camera = g.publisher(CompressedImage, CAMERA + '/compressed')
    g.wait(connected(camera), what='the node to subscribe the compressed camera')
    g.wait(lambda: g.node.wanted_outputs().mask, what='the mask subscription to match')
    bgr = camera_frame(0)[..., :3].copy()  # (H, W, 3) what image_transport encodes: bgr8
    png = cv2.imencode('.png', bgr)[1].tobytes()
    jpeg = cv2.imencode('.jpg', bgr)[1].tobytes()
    frames = [
        (png, 'rgb8; png compressed bgr8'),
        (jpeg[: len(jpeg) // 2], 'bgr8; jpeg compressed bgr8'),  # truncated
        (png, 'yuv422; h264'),
        (png, 'png'),
    ]
    for sec, (data, fmt) in enumerate(frames, start=1):
        camera.publish(compressed_msg(data, fmt, sec=sec))
        g.wait(lambda sec=sec: g.node.core.pending == 0 and g.node.core.slot.received == sec,
               what=f'frame {sec}')  # fmt: skip
    g.wait(lambda: len(masks) == 2, what='two masks')
    expected = segmenter.segment(bgr[..., ::-1].copy()).ids  # (H, W) uint8
    assert [m.header.stamp.sec for m in masks] == [1, 4]
    for mask in masks:
        assert mask.header.frame_id == FRAME_ID
        np.testing.assert_array_equal(as_array(mask), expected)
    report = g.diagnostics()
    assert report['frames dropped (compressed_data)'] == '1'
    assert report['frames dropped (compressed_format)'] == '1'
    assert report['frames dropped (bad input)'] == '2' and report['frames published'] == '2'


# --- As a process ------------------------------------------------------------------------------


def node_command(*ros_args: str) -> list[str]:
    return [sys.executable, '-m', 'semseg_ros.node', '--ros-args', *ros_args]


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal or ``ros2 launch`` leaves them. (A
    process started in the background by a non-interactive shell inherits SIGINT ignored,
    and Python keeps it so until the node installs its own handler.)"""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def start_node(env: dict[str, str], *ros_args: str) -> subprocess.Popen:
    return subprocess.Popen(
        node_command(*ros_args),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_signals,
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, float, str]:
    """Send ``sig``; returns (exit code, seconds to exit, output)."""
    start = time.monotonic()
    process.send_signal(sig)
    try:
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return process.returncode, time.monotonic() - start, out


@pytest.mark.slow
def test_the_node_process_with_the_params_file_and_remaps(ros_env, ros_context, tiny_model):
    process = start_node(
        ros_env, '--params-file', str(PARAMS_FILE), '-p', f'model_path:={tiny_model}',
        '-r', f'image:={CAMERA}', '-r', '__ns:=/cam1',
    )  # fmt: skip
    peer = rclpy.create_node('peer', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(peer)
    masks: list[Image] = []
    try:
        peer.create_subscription(Image, '/cam1/semseg_node/mask', masks.append, 10)
        camera = peer.create_publisher(Image, CAMERA, 10)
        wait_for_node(executor, peer, process, publishers=[camera],
                      mask_topic='/cam1/semseg_node/mask')  # fmt: skip
        camera.publish(image_msg(camera_frame(0), 'bgra8', sec=3))
        deadline = time.monotonic() + 20
        while not masks and time.monotonic() < deadline:
            executor.spin_once(0.05)
        assert masks, 'no mask from the node process'
        assert masks[0].header.frame_id == FRAME_ID and masks[0].header.stamp.sec == 3
    finally:
        code, seconds, out = stop(process)
        executor.shutdown()
        peer.destroy_node()
    assert code == 0 and seconds < 2.0, out
    assert 'best_available' not in out  # the params file's values were accepted as they are
    assert '/cam1/semseg_node/mask' in out  # its start line names where it publishes


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        ((), 'model_path is not set'),
        (('-p', 'model_path:=/nonexistent/model.onnx'), "model_path '/nonexistent/model.onnx'"),
        (('-p', 'model_path:=CORRUPT'), 'cannot load model_path'),
        (('-p', 'model_path:=TINY', '-p', 'overlay_alpha:=1.5'), 'overlay_alpha 1.5'),
        (('-p', 'model_path:=TINY', '-p', 'qos_depth:=deep'), "parameter 'qos_depth'"),
        (('-p', 'model_path:=TINY', '-p', 'device:=gpu'), "device 'gpu'"),
        (('-p', 'model_path:=TINY', '-p', 'class_set:=carla23'), "class_set 'carla23'"),
    ],
    ids=['no-model', 'missing-model', 'corrupt-model', 'alpha', 'type', 'device', 'class-set'],
)
def test_a_bad_parameter_or_model_is_one_fatal_line(ros_env, tiny_model, tmp_path, args, expected):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'\x08\x07not a model' * 20)
    args = tuple(a.replace('CORRUPT', str(corrupt)).replace('TINY', str(tiny_model)) for a in args)
    result = subprocess.run(
        node_command(*args), env=ros_env, cwd=REPO, capture_output=True, text=True, timeout=30
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1, lines
    assert len(lines) == 1 and '[FATAL]' in lines[0] and 'cannot start' in lines[0], lines
    assert expected in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_a_signal_at_any_moment_exits_0_within_2_s(ros_env, tiny_model, sig, test_scale):
    """From the first line of our code on: importing, rclpy.init, loading the model, spinning.

    (A signal in the interpreter's own start-up, before any line of ours runs, gets Python's
    default behaviour: about 50 ms, 150 ms when coverage measures the process, as in
    ``make test``; the delays below start after it.)
    """
    delays = test_scale.pick([0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 1.3, 1.8], np.arange(0.2, 2, 0.05))
    failures = []
    for delay in delays:
        process = start_node(ros_env, '-p', f'model_path:={tiny_model}')
        time.sleep(delay)
        code, seconds, out = stop(process, sig)
        if code != 0 or seconds >= 2.0 or 'Traceback' in out:
            failures.append((float(delay), code, round(seconds, 2), out[-500:]))
    assert not failures, failures


# A bridge stand-in with Fast DDS's defaults: `count` 800x600 bgra8 frames at 20 Hz, RELIABLE,
# between small frames (`tail` of them after, one before). A best-effort reader learns of a
# loss from the next sample that arrives (and of none before the first one it gets), and small
# ones do arrive: they make every loss known. Prints the number of frames it sent.
PUBLISHER = r"""
import sys, time
import numpy as np, rclpy
from sensor_msgs.msg import Image
count, tail = int(sys.argv[1]), int(sys.argv[2])
rclpy.init()
node = rclpy.create_node('bridge')
pub = node.create_publisher(Image, sys.argv[3], 10)
while pub.get_subscription_count() < 1:
    time.sleep(0.05)
time.sleep(0.5)
big = Image(height=600, width=800, encoding='bgra8', step=3200, data=bytes(600 * 800 * 4))
small = Image(height=8, width=8, encoding='bgra8', step=32, data=bytes(8 * 8 * 4))
for k in range(1 + count + tail):
    msg = big if 1 <= k <= count else small
    msg.header.stamp.sec = k
    pub.publish(msg)
    time.sleep(0.05 if 1 <= k < count else 0.2)
pub.wait_for_all_acked()
print('sent', 1 + count + tail, flush=True)
rclpy.shutdown()
"""

DEFAULT_FASTDDS = """<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com"><profiles>
  <participant profile_name="defaults" is_default_profile="true"><rtps/></participant>
</profiles></dds>
"""


@pytest.mark.slow
def test_frames_lost_in_transport_are_counted(ros_env, ros_context, tiny_model, tmp_path):
    """The classic trap: a best-effort subscription to a reliable publisher of large frames,
    on Fast DDS's default transports. Most frames are lost, and /diagnostics says so:
    sent = received + lost in transport, received = published + stale + bad + failed +
    skipped + pending."""
    defaults = tmp_path / 'fastdds_defaults.xml'
    defaults.write_text(DEFAULT_FASTDDS)
    env = dict(ros_env, FASTDDS_DEFAULT_PROFILES_FILE=str(defaults))
    node = start_node(
        env, '-p', f'model_path:={tiny_model}', '-p', 'qos_reliability:=best_effort',
        '-r', f'image:={CAMERA}',
    )  # fmt: skip
    reports: list[DiagnosticArray] = []
    peer = rclpy.create_node('peer', context=ros_context)
    peer.create_subscription(DiagnosticArray, '/diagnostics', reports.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(peer)
    try:
        bridge = subprocess.run(
            [sys.executable, '-c', PUBLISHER, '30', '3', CAMERA],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bridge.returncode == 0, bridge.stderr
        sent = int(bridge.stdout.split()[-1])
        deadline = time.monotonic() + 5
        values: dict[str, str] = {}
        while time.monotonic() < deadline:
            executor.spin_once(0.1)
            if reports:
                values = {kv.key: kv.value for kv in reports[-1].status[0].values}
                arrived = int(values['frames received'])
                if arrived + int(values['frames lost in transport']) == sent:
                    break
    finally:
        code, _, out = stop(node)
        executor.shutdown()
        peer.destroy_node()
    assert code == 0, out
    count = {key.removeprefix('frames ').split(' (')[0]: int(v)
             for key, v in values.items() if key.startswith('frames')}  # fmt: skip
    assert count['lost in transport'] > 0, values  # the trap is real ...
    assert count['received'] + count['lost in transport'] == sent, values  # ... and counted
    assert count['received'] == sum(
        count[k] for k in ('published', 'dropped', 'failed', 'skipped', 'pending')
    ), values


# --- Confidence and error ----------------------------------------------------------------------


def test_confidence_and_error_are_published_when_subscribed(graph, segmenter):
    g = graph(ground_truth=True)
    confidence, error = g.subscribe('/semseg_node/confidence'), g.subscribe('/semseg_node/error')
    camera, seg_camera = g.publisher(Image, CAMERA), g.publisher(Image, SEG_CAMERA)
    g.wait(lambda: connected(camera)() and connected(seg_camera)(), what='both subscriptions')
    g.wait(lambda: g.node.wanted_outputs().error, what='our subscriptions to match')
    assert g.node.wanted_outputs().confidence and not g.node.wanted_outputs().mask
    bgra = camera_frame(0)
    rgb = bgra[..., 2::-1].copy()
    result, expected_confidence = segmenter.segment_with_confidence(rgb)
    ids = result.ids
    truth = ids.copy()
    truth[: HEIGHT // 2] = (truth[: HEIGHT // 2] + 1) % 13  # wrong in the top half
    gt_rgb = CARLA23.id_to_color(remap(truth, LYFT13, CARLA23))
    gt_bgra = np.concatenate([gt_rgb[..., ::-1], np.full_like(gt_rgb[..., :1], 255)], -1)
    camera.publish(image_msg(bgra, 'bgra8', sec=30))
    seg_camera.publish(image_msg(gt_bgra, 'bgra8', sec=30))
    g.wait(lambda: len(confidence) == 1 and len(error) == 1, what='confidence and error')
    assert confidence[0].encoding == 'mono8' and error[0].encoding == 'rgb8'
    for msg in (confidence[0], error[0]):
        assert msg.header.stamp.sec == 30 and msg.header.frame_id == FRAME_ID
    np.testing.assert_array_equal(as_array(confidence[0]), expected_confidence)
    assert expected_confidence.dtype == np.uint8 and expected_confidence.max() > 0
    got = as_array(error[0])
    gt_ids = OnlineIoU('carla23', 'lyft13').gt_ids(gt_rgb)
    wrong = (ids != gt_ids) & (gt_ids != 255)
    assert wrong[: HEIGHT // 2].any() and not wrong[HEIGHT // 2 :].any()
    assert (got[wrong] == (255, 0, 0)).all()
    np.testing.assert_array_equal(got[~wrong], (rgb[~wrong] * 0.4).astype(np.uint8))


def test_error_is_not_offered_without_ground_truth(graph):
    g = graph()
    assert 'error' not in g.node.image_publishers and 'confidence' in g.node.image_publishers


def test_a_model_without_confidence_logs_once_and_the_other_outputs_go_on(
    ros_context, tiny_model, tmp_path
):
    onnx = pytest.importorskip('onnx')
    proto = onnx.load(str(tiny_model))
    outputs = [o for o in proto.graph.output if o.name != 'confidence']
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    # An export from before the confidence output had no weights digest either.
    props = [p for p in proto.metadata_props if p.key != WEIGHTS_DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    old = tmp_path / 'old.onnx'
    onnx.save(proto, str(old))
    g = Graph(ros_context, old)
    try:
        logged: list[str] = []
        g.node.core.processor.log_unavailable = logged.append
        masks, confidence = (
            g.subscribe('/semseg_node/mask'),
            g.subscribe('/semseg_node/confidence'),
        )
        camera = g.publisher(Image, CAMERA)
        g.wait(connected(camera), what='the node to subscribe the camera')
        g.wait(lambda: g.node.wanted_outputs().confidence, what='our subscriptions to match')
        for k in range(2):
            camera.publish(image_msg(camera_frame(k), 'bgra8', sec=40 + k))
            g.wait(lambda k=k: len(masks) == k + 1, what=f'mask {k}')
        assert not confidence
        assert len(logged) == 1 and '~/confidence is unavailable for this model' in logged[0]
    finally:
        g.close()
