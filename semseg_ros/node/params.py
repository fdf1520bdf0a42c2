"""The node's parameters: one table, :class:`NodeParams`, with defaults and descriptions.

The rclpy node declares every field as a ROS parameter (rclpy reads the params file and the
command line) and validates what it hands back here; the display ones
(:data:`~semseg_ros.node.live_params.LIVE_PARAMETERS`) change at run time, the rest are
read-only; ``config/semseg.yaml``
lists them all. Topic names and QoS constants the node, the tools and the tests share live
here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from semseg_ros.devices import DEVICE_HELP, parse_device
from semseg_ros.engines import BACKENDS  # light: backends import their library lazily
from semseg_ros.labels import ClassSetError, get_class_set

NODE_NAME = 'semseg_node'
INPUT_TOPIC = 'image'
GROUND_TRUTH_TOPIC = 'ground_truth'
#: Output name -> topic (private names: ``/<namespace>/semseg_node/mask`` and so on).
OUTPUT_TOPICS: dict[str, str] = {
    'mask': '~/mask',
    'color': '~/color',
    'overlay': '~/overlay',
    'confidence': '~/confidence',  # mono8, 255 = certain; models with a confidence output
    'error': '~/error',  # rgb8, wrong pixels red; only with ground_truth
}
DIAGNOSTICS_TOPIC = '/diagnostics'
DIAGNOSTICS_PERIOD_S = 1.0
#: Outputs are published RELIABLE with this depth, like the bridge's cameras, so reliable
#: subscribers (rviz2's default, rosbag record) and best-effort ones both match.
OUTPUT_QOS_DEPTH = 10

#: Thread defaults, measured with the node on the 2-core CPU (semseg bench --only threads,
#: the real node under 30 Hz input): the engine and OpenCV each on every core gave the
#: lowest processing time (13.4 ms p50 vs 17-25 ms for the settings with 1 thread in either);
#: they run one after the other on the worker, so they do not oversubscribe the cores.
#: 0 = the library's own default (every core).
DEFAULT_ENGINE_THREADS = 0
DEFAULT_OPENCV_THREADS = 0

COLOR_ENCODINGS = ('rgb8', 'bgr8')
QOS_RELIABILITIES = ('best_available', 'reliable', 'best_effort')
INPUT_TRANSPORTS = ('raw', 'compressed')


class ParamError(ValueError):
    """A node parameter or params file is invalid; the message names it, its value and the fix."""


class NodeStartupError(RuntimeError):
    """The node cannot start (e.g. no model at ``model_path``); the adapter exits with it."""


def _param(default: Any, description: str) -> Any:
    return field(default=default, metadata={'description': description})


@dataclass(frozen=True)
class NodeParams:
    """Every node parameter with its default and description, validated on construction.

    Field order is declaration order. Build it from a params file with :meth:`from_yaml`,
    from a parsed document or a flat ``{name: value}`` mapping with :meth:`from_mapping`.
    """

    model_path: str = _param(
        '',
        'Model to load: an exported .onnx (its metadata gives the class set, input size and '
        'normalization), a TensorRT .engine or a checkpoint. Required.',
    )
    backend: str = _param(
        'auto',
        f'Inference backend: one of {", ".join(BACKENDS)}; auto picks by what is installed '
        'and the file: on a GPU TensorRT, then onnxruntime GPU, then PyTorch CUDA; on a CPU '
        'OpenVINO for an FP32 ONNX, else onnxruntime. The log says what it chose and why.',
    )
    device: str = _param('auto', 'Device: auto, cpu, cuda or cuda:<index>.')
    threads: int = _param(
        DEFAULT_ENGINE_THREADS,
        'Inference threads of a CPU engine (OpenVINO, onnxruntime, PyTorch). 0 = the '
        "engine's own default (the physical cores). The default is what measured best for the "
        'node on 2 cores (semseg bench --only threads).',
    )
    opencv_threads: int = _param(
        DEFAULT_OPENCV_THREADS,
        "OpenCV's threads for the node's resizes, colour conversion and overlay (the whole "
        "process). 0 = OpenCV's default (every core); 1 = on the worker thread alone. The "
        'default measured best (semseg bench --only threads).',
    )
    class_set: str = _param(
        '',
        "Class set for the palette: empty = the model's own (from its metadata); else a "
        'built-in name (lyft13, carla23, cityscapes29) or a class-set YAML with as many classes.',
    )
    color_encoding: str = _param(
        'rgb8', 'Encoding of ~/color and ~/overlay: rgb8 or bgr8 (mask is always mono8).'
    )
    overlay_alpha: float = _param(
        0.5, 'Weight of the colour mask in ~/overlay, 0 (image only) to 1 (mask only).'
    )
    highlight_classes: tuple[str, ...] = _param(
        (),
        'Classes to highlight in ~/color and ~/overlay, by name or id of the palette class '
        'set (e.g. [road, car] or [7, 10]); the other classes are greyed. Empty = none '
        'highlighted (every class in its colour).',
    )
    input_transport: str = _param(
        'raw',
        'Camera transport: raw subscribes image (sensor_msgs/Image); compressed subscribes '
        "image/compressed (sensor_msgs/CompressedImage, JPEG or PNG as image_transport's "
        'compressed plugin publishes it), decoded with OpenCV on the inference thread.',
    )
    qos_reliability: str = _param(
        'best_available',
        'Reliability of the image subscriptions: best_available (reliable when the publishers '
        'are, like the CARLA bridge: nothing lost; best effort for best-effort cameras; '
        'Humble has no such policy and uses reliable), reliable, or best_effort (matches every '
        'publisher, but loses most large frames from a reliable one).',
    )
    qos_depth: int = _param(
        5,
        'History depth of the image subscriptions. The callback only moves a frame into the '
        'newest-frame slot (stale ones are dropped and counted there), so the history just '
        'absorbs executor stalls: DDS overwrites a full history without telling anyone.',
    )
    ground_truth: bool = _param(
        False,
        'Subscribe ground_truth (the CARLA semantic segmentation camera, palette colours) '
        'and report online per-class IoU / mIoU on /diagnostics.',
    )
    gt_class_set: str = _param(
        'carla23',
        'Class set of the ground-truth palette: carla23 for the released bridge (CARLA '
        '0.9.13), cityscapes29 for CARLA 0.9.14+, lyft13 for CARLA <= 0.9.9.',
    )
    sim_tick_s: float = _param(
        0.05,
        "Simulation seconds between two camera frames (the bridge's fixed_delta_seconds): "
        'gaps in the sim-time stamps of the frames received are counted on /diagnostics as '
        "'frames never received (sim-time gaps)'. 0 disables the count (cameras whose stamps "
        'are not on a fixed tick).',
    )
    use_sim_time: bool = _param(
        False, 'Use /clock (simulation time) for stamps and latency; set true with CARLA.'
    )

    def __post_init__(self) -> None:
        from semseg_ros.node.live_params import normalize_highlight  # imports this module

        object.__setattr__(self, 'highlight_classes', normalize_highlight(self.highlight_classes))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.default)
        object.__setattr__(self, 'overlay_alpha', float(self.overlay_alpha))
        check_choice('backend', self.backend, BACKENDS)
        try:
            object.__setattr__(self, 'device', parse_device(self.device))
        except ValueError as err:
            msg = f'device {self.device!r} is not valid: use one of {DEVICE_HELP}'
            raise ParamError(msg) from err
        check_choice('color_encoding', self.color_encoding, COLOR_ENCODINGS)
        if not 0.0 <= self.overlay_alpha <= 1.0:
            msg = f'overlay_alpha {self.overlay_alpha} is outside 0..1: use e.g. 0.5'
            raise ParamError(msg)
        check_choice('input_transport', self.input_transport, INPUT_TRANSPORTS)
        check_choice('qos_reliability', self.qos_reliability, QOS_RELIABILITIES)
        if self.sim_tick_s < 0:
            msg = f'sim_tick_s {self.sim_tick_s} is negative: use e.g. 0.05, or 0 to disable'
            raise ParamError(msg)
        object.__setattr__(self, 'sim_tick_s', float(self.sim_tick_s))
        for name in ('threads', 'opencv_threads'):
            if getattr(self, name) < 0:
                msg = f'{name} {getattr(self, name)} is negative: use 0 (the default) or a count'
                raise ParamError(msg)
        if self.qos_depth < 1:
            msg = f'qos_depth {self.qos_depth} must be at least 1 (1 = newest frame only)'
            raise ParamError(msg)
        for name in ('class_set', 'gt_class_set'):
            value = getattr(self, name)
            if value or name == 'gt_class_set':
                try:
                    get_class_set(value)
                except ClassSetError as err:
                    raise ParamError(f'{name}: {err}') from err

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> NodeParams:
        """From a flat ``{parameter: value}`` mapping (what rclpy hands back after declaring
        them); an unknown name is an error that lists the valid ones."""
        if not isinstance(data, Mapping):
            raise ParamError(f'parameters must be a mapping, got {type(data).__name__}')
        values = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            msg = f'unknown parameter(s) {unknown} for {NODE_NAME}; valid: {sorted(known)}'
            raise ParamError(msg)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(name: str, value: Any, default: Any) -> None:
    kind = type(default)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        msg = f'{name} must be a {kind.__name__}, got {value!r} ({type(value).__name__})'
        raise ParamError(msg)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParamError(f'{name} {value!r} is not valid: use one of {", ".join(choices)}')


PARAMETERS: tuple[dataclasses.Field, ...] = dataclasses.fields(NodeParams)
"""The parameters in declaration order: ``.name``, ``.default``, ``.metadata['description']``."""

#: Declared by rclpy itself: read it, never declare it again.
BUILTIN_PARAMETERS = frozenset({'use_sim_time'})
