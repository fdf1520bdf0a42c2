"""What the semseg node does, apart from ROS I/O: plain Python under the rclpy adapter.

The adapter (:mod:`semseg_ros.node`) only moves messages; this module holds the rest::

    image callback     -> NodeCore.on_image(msg)          header + fields into a LatestFrameSlot
    gt callback        -> NodeCore.on_ground_truth(msg)   kept by stamp in a GroundTruthMatcher
    message_lost event -> NodeCore.on_message_lost(n)     frames DDS lost before the callback
    FrameWorker thread -> NodeCore.step(wanted, publish)  newest frame -> FrameProcessor
                          -> Segmenter -> ProcessedFrame (ImageFields + the header to copy)
                          -> publish(frame)               the adapter builds and sends messages
    1 s timer          -> NodeCore.diagnostics()          plain dict -> DiagnosticArray

Every camera frame is accounted for on /diagnostics: the publisher's frames are received or
lost in transport (rclpy's ``message_lost`` event), and every received frame is published,
dropped as stale (a newer one replaced it in the slot), dropped as bad input, failed, skipped
(no output had a subscriber) or still pending in the slot.

Messages are read by duck typing (``msg.header.stamp.sec``, ``ImageFields.from_msg``), so
rclpy and rosbags messages both work; the header object is passed through untouched.

Parameters are one table, :class:`NodeParams` (its dataclass fields, with defaults and
descriptions, listed as :data:`PARAMETERS`); the node declares them with rclpy, which reads
the params file and the command line, and validates what it hands back here.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from semseg_ros.devices import DEVICE_HELP, parse_device
from semseg_ros.engines import BACKENDS  # light: backends import their library lazily
from semseg_ros.imaging import (
    ImageFields,
    ImageFormatError,
    WarnOncePerKind,
    array_to_image_fields,
    frame_to_rgb,
    from_rgb,
)
from semseg_ros.labels import ClassSet, ClassSetError, get_class_set, mapping_lut
from semseg_ros.metrics import ConfusionMatrix
from semseg_ros.segmenter import LatencyStats
from semseg_ros.visualize import overlay as blend

NODE_NAME = 'semseg_node'
INPUT_TOPIC = 'image'
GROUND_TRUTH_TOPIC = 'ground_truth'
#: Output name -> topic (private names: ``/<namespace>/semseg_node/mask`` and so on).
OUTPUT_TOPICS: dict[str, str] = {'mask': '~/mask', 'color': '~/color', 'overlay': '~/overlay'}
DIAGNOSTICS_TOPIC = '/diagnostics'
DIAGNOSTICS_PERIOD_S = 1.0
#: Outputs are published RELIABLE with this depth, like the bridge's cameras, so reliable
#: subscribers (rviz2's default, rosbag record) and best-effort ones both match.
OUTPUT_QOS_DEPTH = 10

COLOR_ENCODINGS = ('rgb8', 'bgr8')
QOS_RELIABILITIES = ('best_available', 'reliable', 'best_effort')

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3

T = TypeVar('T')
Stamp = tuple[int, int]  # (sec, nanosec) of a builtin_interfaces/Time


class ParamError(ValueError):
    """A node parameter or params file is invalid; the message names it, its value and the fix."""


class NodeStartupError(RuntimeError):
    """The node cannot start (e.g. no model at ``model_path``); the adapter exits with it."""


# --- Parameters -------------------------------------------------------------------------------


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
        f'Inference backend: one of {", ".join(BACKENDS)}; auto picks TensorRT, then '
        'onnxruntime, by what is installed.',
    )
    device: str = _param('auto', 'Device: auto, cpu, cuda or cuda:<index>.')
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
    use_sim_time: bool = _param(
        False, 'Use /clock (simulation time) for stamps and latency; set true with CARLA.'
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.default)
        object.__setattr__(self, 'overlay_alpha', float(self.overlay_alpha))
        _check_choice('backend', self.backend, BACKENDS)
        try:
            object.__setattr__(self, 'device', parse_device(self.device))
        except ValueError as err:
            msg = f'device {self.device!r} is not valid: use one of {DEVICE_HELP}'
            raise ParamError(msg) from err
        _check_choice('color_encoding', self.color_encoding, COLOR_ENCODINGS)
        if not 0.0 <= self.overlay_alpha <= 1.0:
            msg = f'overlay_alpha {self.overlay_alpha} is outside 0..1: use e.g. 0.5'
            raise ParamError(msg)
        _check_choice('qos_reliability', self.qos_reliability, QOS_RELIABILITIES)
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


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParamError(f'{name} {value!r} is not valid: use one of {", ".join(choices)}')


PARAMETERS: tuple[dataclasses.Field, ...] = dataclasses.fields(NodeParams)
"""The parameters in declaration order: ``.name``, ``.default``, ``.metadata['description']``."""

#: Declared by rclpy itself: read it, never declare it again.
BUILTIN_PARAMETERS = frozenset({'use_sim_time'})


# --- Real time: newest frame wins -------------------------------------------------------------


class LatestFrameSlot(Generic[T]):
    """A thread-safe slot for one item: the newest ``put`` wins, the one it replaces is dropped.

    Subscription callbacks ``put`` (never blocks); the inference thread ``take``s. A frame
    that arrives while the previous one still waits means inference is behind: the older one
    is stale, so it is dropped and counted (``dropped``), never queued.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.received = 0
        self.dropped = 0
        self.taken = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced (dropped) an untaken one."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self.received += 1
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, emptying the slot; None on timeout or once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self.taken += 1
            return item

    def close(self) -> None:
        """Wake every ``take`` (they return None from now on once the slot is empty)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """1 while an item waits to be taken, else 0."""
        return int(self._full)


# --- Statistics for /diagnostics ----------------------------------------------------------


class RateMeter:
    """Events per second over the last ``window_s`` seconds (thread-safe)."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError(f'window_s must be positive, got {window_s}')
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.count = 0

    def tick(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._times.append(now)
            self.count += 1
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Hz from the spacing of the events in the window; 0 with fewer than two."""
        now = self._clock() if now is None else now
        with self._lock:
            self._prune(now)
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


def stamp_of(header: Any) -> Stamp:
    """``(sec, nanosec)`` of a std_msgs/Header (rclpy, rosbags or DDS); the match key."""
    stamp = header.stamp
    return int(stamp.sec), int(stamp.nanosec)


def stamp_to_ns(stamp: Stamp) -> int:
    return stamp[0] * 1_000_000_000 + stamp[1]


# --- Ground truth ----------------------------------------------------------------------------


class GroundTruthMatcher(Generic[T]):
    """Pairs predictions with ground-truth frames of the same stamp, in bounded memory.

    CARLA stamps every sensor of a tick with the same time, so an exact ``(sec, nanosec)``
    match is right. Either side may come first (rosbag play reorders topics), so each side
    waits in its own bounded buffer; when a buffer is full its oldest entry is evicted and
    counted as unmatched. Items are opaque (keep the raw message: decode only matched GT).
    """

    def __init__(self, capacity: int = 30) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be at least 1, got {capacity}')
        self.capacity = capacity
        self._gt: OrderedDict[Stamp, Any] = OrderedDict()
        self._pred: OrderedDict[Stamp, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.matched = 0
        self.unmatched_ground_truth = 0
        self.unmatched_predictions = 0

    def add_ground_truth(self, stamp: Stamp, gt: T) -> tuple[Any, T] | None:
        """Keep ``gt``; ``(prediction, gt)`` if a prediction of this stamp was waiting."""
        with self._lock:
            pred = self._pred.pop(stamp, None)
            if pred is not None:
                self.matched += 1
                return pred, gt
            self.unmatched_ground_truth += self._store(self._gt, stamp, gt)
        return None

    def add_prediction(self, stamp: Stamp, pred: Any) -> tuple[Any, T] | None:
        """Keep ``pred``; ``(pred, ground truth)`` if ground truth of this stamp was waiting."""
        with self._lock:
            gt = self._gt.pop(stamp, None)
            if gt is not None:
                self.matched += 1
                return pred, gt
            self.unmatched_predictions += self._store(self._pred, stamp, pred)
        return None

    def _store(self, buffer: OrderedDict[Stamp, Any], stamp: Stamp, item: Any) -> int:
        replaced = stamp in buffer  # a repeated stamp: the newer copy wins
        buffer[stamp] = item
        buffer.move_to_end(stamp)
        evicted = int(replaced)
        while len(buffer) > self.capacity:
            buffer.popitem(last=False)
            evicted += 1
        return evicted

    @property
    def pending(self) -> tuple[int, int]:
        """``(ground truth, predictions)`` waiting for their partner."""
        with self._lock:
            return len(self._gt), len(self._pred)


class OnlineIoU:
    """Running per-class IoU of a model's ids against palette ground truth (thread-safe).

    Ground-truth colours -> ids of ``gt_class_set`` (unknown colours ignored) -> ids of the
    model's set through :func:`~semseg_ros.labels.mapping_lut` -> one
    :class:`~semseg_ros.metrics.ConfusionMatrix` over the model's classes.
    """

    def __init__(self, gt_class_set: ClassSet | str, model_class_set: ClassSet | str) -> None:
        self.gt_class_set = get_class_set(gt_class_set)
        self.model_class_set = get_class_set(model_class_set)
        self.lut = mapping_lut(self.gt_class_set, self.model_class_set)  # (256,) uint8
        self._cm = ConfusionMatrix(self.model_class_set.num_classes)
        self._lock = threading.Lock()
        self.frames = 0

    def gt_ids(self, gt_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 palette RGB -> (H, W) uint8 model ids (255 = not counted)."""
        return self.lut[self.gt_class_set.color_to_id(gt_rgb)]

    def update(self, pred_ids: np.ndarray, gt_rgb: np.ndarray) -> None:
        """Add one frame: ``pred_ids`` (H, W) uint8 model ids, ``gt_rgb`` (H, W, 3) palette."""
        if pred_ids.shape != gt_rgb.shape[:2]:
            msg = (
                f'ground truth is {gt_rgb.shape[1]}x{gt_rgb.shape[0]} but the camera '
                f'{pred_ids.shape[1]}x{pred_ids.shape[0]}: give the segmentation camera the '
                'same image_size_x/y, fov and spawn_point as the RGB camera'
            )
            raise ImageFormatError('size', msg)
        target = self.gt_ids(gt_rgb)
        with self._lock:
            self._cm.update(pred_ids, target)
            self.frames += 1

    def iou(self) -> np.ndarray:
        with self._lock:
            return self._cm.iou()

    def miou(self) -> float:
        with self._lock:
            return self._cm.miou()

    def per_class(self) -> dict[str, float]:
        """``{class name: IoU}`` for the classes seen so far (NaN ones left out)."""
        return {
            name: float(value)
            for name, value in zip(self.model_class_set.names, self.iou(), strict=True)
            if not math.isnan(value)
        }


# --- Per frame ---------------------------------------------------------------------------------


class SegmenterLike(Protocol):
    """What :class:`FrameProcessor` needs of :class:`semseg_ros.segmenter.Segmenter`."""

    class_set: ClassSet
    backend_name: str

    def segment(self, rgb: np.ndarray) -> Any: ...  # result with .ids (H, W) uint8


@dataclass(frozen=True)
class Outputs:
    """Which outputs to compute: those that have subscribers."""

    mask: bool = True
    color: bool = True
    overlay: bool = True

    def any(self) -> bool:
        return self.mask or self.color or self.overlay

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in OUTPUT_TOPICS if getattr(self, name))


ALL_OUTPUTS = Outputs()
NO_OUTPUTS = Outputs(False, False, False)


@dataclass(frozen=True, eq=False)
class ReceivedFrame:
    """A camera message as the slot holds it: its fields, its header, when it arrived."""

    image: ImageFields
    header: Any
    received: float  # time.monotonic() at the callback

    @classmethod
    def from_msg(cls, msg: Any, *, received: float | None = None) -> ReceivedFrame:
        return cls(
            ImageFields.from_msg(msg),
            msg.header,
            time.monotonic() if received is None else received,
        )


@dataclass(frozen=True, eq=False)
class ProcessedFrame:
    """The outputs of one frame, ready to publish.

    ``images`` maps an output name (``mask``, ``color``, ``overlay``; only those asked for)
    to :class:`~semseg_ros.imaging.ImageFields`; build each message as
    ``Image(header=frame.header, **fields.msg_kwargs(...))``. ``ids`` (H, W) uint8.
    """

    header: Any
    images: dict[str, ImageFields]
    ids: np.ndarray
    processing_s: float
    timings: Any = None


class FrameProcessor:
    """Camera message -> the requested output images: decode, segment, colour, encode."""

    def __init__(
        self,
        segmenter: SegmenterLike,
        *,
        color_encoding: str = 'rgb8',
        overlay_alpha: float = 0.5,
        palette: ClassSet | None = None,
    ) -> None:
        _check_choice('color_encoding', color_encoding, COLOR_ENCODINGS)
        self.segmenter = segmenter
        self.color_encoding = color_encoding
        self.overlay_alpha = float(overlay_alpha)
        if palette is not None and palette.num_classes != segmenter.class_set.num_classes:
            msg = (
                f'class_set {palette.name!r} has {palette.num_classes} classes but the model '
                f'predicts {segmenter.class_set.num_classes}; leave class_set empty to use the '
                "model's"
            )
            raise NodeStartupError(msg)
        #: The class set whose colours ~/color and ~/overlay use (the ``class_set`` param).
        self.palette = segmenter.class_set if palette is None else palette

    def process(self, image: Any, header: Any, outputs: Outputs = ALL_OUTPUTS) -> ProcessedFrame:
        """Segment one frame. ``image``: an Image message or ImageFields.

        Raises :class:`~semseg_ros.imaging.ImageFormatError` for a malformed frame.
        """
        start = time.perf_counter()
        rgb = frame_to_rgb(image)  # (H, W, 3) uint8
        result = self.segmenter.segment(rgb)
        ids = result.ids  # (H, W) uint8
        images: dict[str, ImageFields] = {}
        if outputs.mask:
            images['mask'] = array_to_image_fields(ids, 'mono8')
        if outputs.color or outputs.overlay:
            color = self.palette.id_to_color(ids)  # (H, W, 3) RGB, once for both outputs
            if outputs.color:
                images['color'] = self._encode(color)
            if outputs.overlay:
                images['overlay'] = self._encode(blend(rgb, color, self.overlay_alpha))
        elapsed = time.perf_counter() - start
        return ProcessedFrame(header, images, ids, elapsed, getattr(result, 'timings', None))

    def _encode(self, rgb: np.ndarray) -> ImageFields:
        return array_to_image_fields(from_rgb(rgb, self.color_encoding), self.color_encoding)


# --- The node minus ROS ----------------------------------------------------------------------


def load_segmenter(params: NodeParams) -> Any:
    """``Segmenter.from_model`` for ``params``; :class:`NodeStartupError` says what to fix."""
    if not params.model_path:
        msg = 'model_path is not set: pass model_path:=/path/to/model.onnx (or model:= in launch)'
        raise NodeStartupError(msg)
    path = Path(params.model_path).expanduser()
    if not path.is_file():
        msg = f'model_path {str(path)!r} does not exist: export a model (semseg export) or fix it'
        raise NodeStartupError(msg)
    from semseg_ros.segmenter import Segmenter  # deferred: loads the inference backend

    try:
        segmenter = Segmenter.from_model(path, backend=params.backend, device=params.device)
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as err:
        msg = f'cannot load model_path {str(path)!r} (backend {params.backend}): {err}'
        raise NodeStartupError(msg) from err
    return segmenter


def _describe_model(segmenter: Any, params: NodeParams) -> str:
    """The model file's name (``model_info`` is a ModelInfo, or a dict with a path)."""
    info = getattr(segmenter, 'model_info', None)
    path = info.get('path') if isinstance(info, Mapping) else getattr(info, 'path', None)
    return Path(path or params.model_path).name or '(none)'


class NodeCore:
    """Everything the node does between receiving and publishing, middleware-free.

    ``log_warning`` is any ``str -> None`` (``node.get_logger().warning``); ``now_ns`` the
    adapter's clock in nanoseconds (the ROS clock, which honours ``use_sim_time``), used for
    the stamp-to-publish latency.
    """

    def __init__(
        self,
        params: NodeParams,
        segmenter: SegmenterLike,
        *,
        log_warning: Callable[[str], object],
        log_error: Callable[[str], object] | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
        gt_capacity: int = 30,
    ) -> None:
        self.params = params
        self._log_error = log_error or log_warning
        self.failed = 0  # frames whose processing raised something unexpected (a bug)
        self._failures_logged: set[str] = set()
        self.segmenter = segmenter
        self.processor = FrameProcessor(
            segmenter,
            color_encoding=params.color_encoding,
            overlay_alpha=params.overlay_alpha,
            palette=get_class_set(params.class_set) if params.class_set else None,
        )
        self.slot: LatestFrameSlot[ReceivedFrame] = LatestFrameSlot()
        self.input_rate = RateMeter(clock=clock)
        self.output_rate = RateMeter(clock=clock)
        self.latency = LatencyStats()  # header stamp -> published, on the adapter's clock
        self.processing = LatencyStats()  # decode + segment + colour, on the worker
        self.bad_input = WarnOncePerKind(log_warning, prefix=f'{INPUT_TOPIC}: ')
        self.bad_ground_truth = WarnOncePerKind(log_warning, prefix=f'{GROUND_TRUTH_TOPIC}: ')
        self.skipped = 0  # frames taken while no output had a subscriber (maybe still scored)
        self.published = 0  # frames whose outputs were published
        self.lost_in_transport = 0  # image frames DDS reported lost (rclpy's message_lost)
        self.gt_lost_in_transport = 0
        self._finished = 0  # frames taken from the slot whose handling ended, however
        self._now_ns = now_ns
        self._clock = clock
        self._last_report = {'bad': 0, 'received': 0, 'failed': 0, 'skipped': 0, 'lost': 0}
        self.matcher: GroundTruthMatcher[Any] | None = None
        self.iou: OnlineIoU | None = None
        self._evaluations: deque[tuple[np.ndarray, Any]] = deque(maxlen=4)
        if params.ground_truth:
            try:
                self.iou = OnlineIoU(params.gt_class_set, segmenter.class_set)
            except ClassSetError as err:
                raise NodeStartupError(f'gt_class_set: {err}') from err
            self.matcher = GroundTruthMatcher(gt_capacity)

    @classmethod
    def start(
        cls,
        params: NodeParams | Mapping[str, Any],
        *,
        log_warning: Callable[[str], object],
        log_error: Callable[[str], object] | None = None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> NodeCore:
        """Validate ``params``, load the model: NodeStartupError when the node cannot run."""
        try:
            if not isinstance(params, NodeParams):
                params = NodeParams.from_mapping(params)
        except ParamError as err:
            raise NodeStartupError(f'invalid parameter: {err}') from err
        return cls(
            params,
            load_segmenter(params),
            log_warning=log_warning,
            log_error=log_error,
            now_ns=now_ns,
        )

    # Subscription callbacks: cheap, never wait on inference.

    def on_image(self, msg: Any) -> None:
        """Image callback body: newest frame into the slot (a stale one is dropped)."""
        self.input_rate.tick()
        self.slot.put(ReceivedFrame.from_msg(msg, received=self._clock()))

    def on_message_lost(self, count: int, *, ground_truth: bool = False) -> None:
        """``count`` more frames were lost between the publisher and this subscription."""
        if ground_truth:
            self.gt_lost_in_transport += count
        else:
            self.lost_in_transport += count

    def on_ground_truth(self, msg: Any) -> None:
        """Ground-truth callback body: keep the raw message by stamp (decoded if matched)."""
        if self.matcher is None:
            return
        pair = self.matcher.add_ground_truth(stamp_of(msg.header), msg)
        if pair is not None:
            self._evaluations.append(pair)  # scored on the worker thread, not here

    # The worker thread.

    def step(
        self,
        outputs: Callable[[], Outputs],
        publish: Callable[[ProcessedFrame], object],
        timeout: float | None = 0.1,
    ) -> ProcessedFrame | None:
        """Take the newest frame, process the outputs wanted now, publish; None if none."""
        self._score_pending()
        frame = self.slot.take(timeout)
        if frame is None:
            return None
        try:
            return self._process(frame, outputs, publish)
        finally:
            self._finished += 1

    def _process(
        self,
        frame: ReceivedFrame,
        outputs: Callable[[], Outputs],
        publish: Callable[[ProcessedFrame], object],
    ) -> ProcessedFrame | None:
        wanted = outputs()
        if not wanted.any():
            self.skipped += 1  # nobody listens: nothing published
            if self.matcher is None:
                return None  # and nothing to score: no inference at all
        try:
            result = self.processor.process(frame.image, frame.header, wanted)
        except ImageFormatError as err:
            if not wanted.any():
                self.skipped -= 1  # counted as bad instead: each frame in one column
            self.bad_input(err)
            return None
        if wanted.any():
            publish(result)
            self.published += 1
            self.output_rate.tick()
            self.latency.add((self._now_ns() - stamp_to_ns(stamp_of(frame.header))) / 1e9)
        self.processing.add(result.processing_s)
        if self.matcher is not None:
            pair = self.matcher.add_prediction(stamp_of(frame.header), result.ids)
            if pair is not None:
                self._score(*pair)
        return result

    def _score_pending(self) -> None:
        while self._evaluations:
            self._score(*self._evaluations.popleft())

    def _score(self, pred_ids: np.ndarray, gt_msg: Any) -> None:
        assert self.iou is not None
        try:
            self.iou.update(pred_ids, frame_to_rgb(gt_msg))
        except ImageFormatError as err:
            self.bad_ground_truth(err)

    def run(
        self,
        outputs: Callable[[], Outputs],
        publish: Callable[[ProcessedFrame], object],
    ) -> None:
        """Loop :meth:`step` until :meth:`stop` (the body of the worker thread).

        An unexpected exception drops its frame, is logged (with traceback) once per type
        and counted, and turns /diagnostics to ERROR: the node stays up and says so, rather
        than a dead thread behind a live node.
        """
        while not self.slot.closed:
            try:
                self.step(outputs, publish)
            except Exception as err:  # reported, see docstring
                self.failed += 1
                kind = type(err).__name__
                if kind not in self._failures_logged:
                    self._failures_logged.add(kind)
                    trace = ''.join(traceback.format_exception(err))
                    self._log_error(
                        f'processing a frame failed ({kind}: {err}); dropping it, further '
                        f'{kind} failures are counted on /diagnostics\n{trace}'
                    )

    def stop(self) -> None:
        self.slot.close()

    @property
    def pending(self) -> int:
        """Frames received but not yet handled: waiting in the slot or being processed."""
        return self.slot.pending + self.slot.taken - self._finished

    # Diagnostics.

    def diagnostics(self, *, hardware_id: str = '') -> dict[str, Any]:
        """The node's DiagnosticStatus as a plain dict (see :func:`diagnostics_status`)."""
        bad_total = self.bad_input.total
        received = self.slot.received
        new_bad = bad_total - self._last_report['bad']
        new_frames = received - self._last_report['received']
        new_failed = self.failed - self._last_report['failed']
        new_skipped = self.skipped - self._last_report['skipped']
        new_lost = self.lost_in_transport - self._last_report['lost']
        self._last_report = {
            'bad': bad_total,
            'received': received,
            'failed': self.failed,
            'skipped': self.skipped,
            'lost': self.lost_in_transport,
        }
        miou = None
        per_class = None
        gt = None
        if self.iou is not None and self.matcher is not None:
            miou = self.iou.miou()
            per_class = self.iou.per_class()
            gt = {
                'frames': self.iou.frames,
                'unmatched': self.matcher.unmatched_ground_truth
                + self.matcher.unmatched_predictions,
                'class_set': self.iou.gt_class_set.name,
                'bad': self.bad_ground_truth.total,
                'lost': self.gt_lost_in_transport,
            }
        return diagnostics_status(
            name=f'{NODE_NAME}: segmentation',
            hardware_id=hardware_id,
            input_rate=self.input_rate.rate(),
            output_rate=self.output_rate.rate(),
            latency=self.latency,
            processing=self.processing,
            received=received,
            lost_in_transport=self.lost_in_transport,
            published=self.published,
            pending=self.pending,
            dropped_stale=self.slot.dropped,
            dropped_bad=self.bad_input.counts,
            failed=self.failed,
            skipped=self.skipped,
            new_frames=new_frames,
            new_lost=new_lost,
            new_skipped=new_skipped,
            new_bad=new_bad,
            new_failed=new_failed,
            backend=str(getattr(self.segmenter, 'backend_name', '?')),
            model=_describe_model(self.segmenter, self.params),
            class_set=self.processor.palette.name,
            miou=miou,
            per_class_iou=per_class,
            ground_truth=gt,
        )


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
    hardware_id: str = '',
    miou: float | None = None,
    per_class_iou: Mapping[str, float] | None = None,
    ground_truth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A diagnostic_msgs/DiagnosticStatus as plain data.

    Returns ``{'level': int, 'name', 'message', 'hardware_id', 'values': [(key, value)]}``,
    every value a string. The level is ERROR when frames failed (a bug: see the log) since
    the last report, WARN when no frame arrived since the last report or
    malformed frames were dropped since then, else OK (saying so when every frame since the
    last report was skipped because no output had a subscriber). The adapter converts it to
    its own
    message type (rclpy's ``level`` is ``bytes([level])``; rosbags' an int).
    """
    values: list[tuple[str, str]] = [
        ('input rate (Hz)', f'{input_rate:.2f}'),
        ('output rate (Hz)', f'{output_rate:.2f}'),
        ('latency stamp to publish p50 (ms)', _ms(latency.p50)),
        ('latency stamp to publish p99 (ms)', _ms(latency.p99)),
        ('processing p50 (ms)', _ms(processing.p50)),
        ('processing p99 (ms)', _ms(processing.p99)),
        ('frames lost in transport', str(lost_in_transport)),
        ('frames received', str(received)),
        *([('frames published', str(published))] if published is not None else []),
        ('frames pending', str(pending)),
        ('frames dropped (stale)', str(dropped_stale)),
        ('frames failed', str(failed)),
        ('frames skipped (no subscriber)', str(skipped)),
        ('frames dropped (bad input)', str(sum(dropped_bad.values()))),
        *((f'frames dropped ({kind})', str(n)) for kind, n in sorted(dropped_bad.items())),
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
            ('ground truth lost in transport', str(ground_truth.get('lost', 0))),
            ('mIoU', 'n/a' if miou is None or math.isnan(miou) else f'{miou:.4f}'),
        ]
        values += [(f'IoU {cls}', f'{v:.4f}') for cls, v in (per_class_iou or {}).items()]
    if new_failed:
        level, message = ERROR, f'{new_failed} frame(s) failed since the last report: see log'
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


class FrameWorker(threading.Thread):
    """The inference thread: ``core.run(outputs, publish)`` until :meth:`stop`.

    ``outputs`` is called once per frame (lazy outputs: ask the middleware for subscriber
    counts); ``publish`` builds and sends the messages of a :class:`ProcessedFrame`.
    """

    def __init__(
        self,
        core: NodeCore,
        outputs: Callable[[], Outputs],
        publish: Callable[[ProcessedFrame], object],
    ) -> None:
        super().__init__(name='semseg-inference', daemon=True)
        self.core = core
        self._outputs = outputs
        self._publish = publish

    def run(self) -> None:
        self.core.run(self._outputs, self._publish)

    def stop(self, timeout: float | None = 1.5) -> None:
        """Let the frame in flight finish (bounded: the node must exit within 2 s)."""
        self.core.stop()
        if self.is_alive():
            self.join(timeout)
