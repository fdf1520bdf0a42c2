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

Beside it: :mod:`~semseg_ros.node.params` (the parameter table),
:mod:`~semseg_ros.node.statistics` (rates, latency), :mod:`~semseg_ros.node.diagnostics` (the
status) and :mod:`semseg_ros.ground_truth` (matching and online IoU).
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from semseg_ros.compressed import CompressedFields
from semseg_ros.ground_truth import GroundTruthMatcher, OnlineIoU
from semseg_ros.imaging import (
    ImageFields,
    ImageFormatError,
    WarnOncePerKind,
    array_to_image_fields,
    frame_to_rgb,
    from_rgb,
    mislabelled_padding,
)
from semseg_ros.labels import ClassSet, ClassSetError, get_class_set
from semseg_ros.node.diagnostics import diagnostics_status
from semseg_ros.node.live_params import DisplaySettings
from semseg_ros.node.params import (
    COLOR_ENCODINGS,
    GROUND_TRUTH_TOPIC,
    INPUT_TOPIC,
    NODE_NAME,
    OUTPUT_TOPICS,
    NodeParams,
    NodeStartupError,
    ParamError,
    check_choice,
)
from semseg_ros.node.statistics import (
    LatencyStats,
    RateMeter,
    SimTimeGaps,
    stamp_of,
    stamp_to_ns,
)
from semseg_ros.visualize import error_image
from semseg_ros.visualize import overlay as blend

T = TypeVar('T')


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
    confidence: bool = False  # the model's confidence (mono8), when it has that output
    error: bool = False  # wrong pixels against ground truth: published when matched

    def any(self) -> bool:
        return self.mask or self.color or self.overlay or self.confidence or self.error

    def names(self) -> tuple[str, ...]:
        return tuple(name for name in OUTPUT_TOPICS if getattr(self, name))


ALL_OUTPUTS = Outputs()
NO_OUTPUTS = Outputs(False, False, False)


@dataclass(frozen=True, eq=False)
class ReceivedFrame:
    """A camera message as the slot holds it: its fields, its header, when it arrived."""

    image: ImageFields | CompressedFields  # compressed: decoded on the worker
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
    rgb: np.ndarray | None = None  # (H, W, 3) uint8, kept only when ~/error is wanted


class FrameProcessor:
    """Camera message -> the requested output images: decode, segment, colour, encode."""

    def __init__(
        self,
        segmenter: SegmenterLike,
        *,
        color_encoding: str = 'rgb8',
        overlay_alpha: float = 0.5,
        palette: ClassSet | None = None,
        highlight_classes: Any = (),
    ) -> None:
        check_choice('color_encoding', color_encoding, COLOR_ENCODINGS)
        self.segmenter = segmenter
        #: Logs once that this model has no confidence output (the node sets a logger).
        self.log_unavailable: Callable[[str], object] | None = None
        self._unavailable_logged = False
        if palette is not None and palette.num_classes != segmenter.class_set.num_classes:
            msg = (
                f'class_set {palette.name!r} has {palette.num_classes} classes but the model '
                f'predicts {segmenter.class_set.num_classes}; leave class_set empty to use the '
                "model's"
            )
            raise NodeStartupError(msg)
        #: The class set whose colours ~/color and ~/overlay use (the ``class_set`` param).
        self.palette = segmenter.class_set if palette is None else palette
        try:
            #: The live display values, swapped as a whole (see node/live_params.py).
            self.display = DisplaySettings.create(
                self.palette,
                color_encoding=color_encoding,
                overlay_alpha=overlay_alpha,
                highlight_classes=highlight_classes,
            )
        except ParamError as err:
            raise NodeStartupError(f'invalid parameter: {err}') from err

    @property
    def color_encoding(self) -> str:
        return self.display.color_encoding

    @property
    def overlay_alpha(self) -> float:
        return self.display.overlay_alpha

    def process(self, image: Any, header: Any, outputs: Outputs = ALL_OUTPUTS) -> ProcessedFrame:
        """Segment one frame. ``image``: an Image message or ImageFields.

        Raises :class:`~semseg_ros.imaging.ImageFormatError` for a malformed frame.
        """
        start = time.perf_counter()
        display = self.display  # one snapshot per frame: a live change never tears a frame
        if isinstance(image, CompressedFields):  # input_transport: compressed
            rgb = image.to_rgb()  # (H, W, 3) uint8
        else:
            rgb = frame_to_rgb(image)  # (H, W, 3) uint8
        images: dict[str, ImageFields] = {}
        segment_with_confidence = getattr(self.segmenter, 'segment_with_confidence', None)
        if outputs.confidence and segment_with_confidence is not None:
            result, confidence = segment_with_confidence(rgb)
            if confidence is not None:
                images['confidence'] = array_to_image_fields(confidence, 'mono8')
            else:
                self.confidence_unavailable()
        else:
            result = self.segmenter.segment(rgb)
            if outputs.confidence:
                self.confidence_unavailable()
        ids = result.ids  # (H, W) uint8
        if outputs.mask:
            images['mask'] = array_to_image_fields(ids, 'mono8')
        if outputs.color or outputs.overlay:
            color = display.colorize(ids)  # (H, W, 3) RGB, once for both outputs
            if outputs.color:
                images['color'] = self._encode(color, display.color_encoding)
            if outputs.overlay:
                overlay = blend(rgb, color, display.overlay_alpha)
                images['overlay'] = self._encode(overlay, display.color_encoding)
        elapsed = time.perf_counter() - start
        timings = getattr(result, 'timings', None)
        kept = rgb if outputs.error else None
        return ProcessedFrame(header, images, ids, elapsed, timings, kept)

    def confidence_unavailable(self) -> None:
        """A frame wanted ~/confidence from a model without it: log that once."""
        if self._unavailable_logged or self.log_unavailable is None:
            return
        self._unavailable_logged = True
        self.log_unavailable(
            f'{OUTPUT_TOPICS["confidence"]} is unavailable for this model: it has no '
            f"'confidence' output (exported before it existed, or backend "
            f'{self.segmenter.backend_name}); re-export it with semseg export for one. '
            'The other outputs go on.'
        )

    def _encode(self, rgb: np.ndarray, encoding: str | None = None) -> ImageFields:
        encoding = encoding or self.display.color_encoding
        return array_to_image_fields(from_rgb(rgb, encoding), encoding)


def checked_stamp(header: Any) -> tuple[int, int]:
    """``(sec, nanosec)`` of a message's header; ImageFormatError('header') if it has none.

    rclpy's setters keep a received header well-typed; a duck-typed message (a bag reader, a
    test) may carry anything, and that must drop the frame, not the worker.
    """
    try:
        return stamp_of(header)
    except (AttributeError, TypeError, ValueError, OverflowError) as err:
        stamp = getattr(header, 'stamp', header)
        text = repr(stamp)
        text = text if len(text) <= 60 else f'{text[:57]}...'
        message = (
            f'header.stamp must hold integer sec and nanosec, got {text} ({err}): fill the '
            'header from the clock (builtin_interfaces/msg/Time)'
        )
        raise ImageFormatError('header', message) from err


class SequenceGaps:
    """Frames skipped in each publisher's sequence numbers, for a bounded set of publishers."""

    def __init__(self, max_publishers: int = 64) -> None:
        self._last: OrderedDict[Any, int] = OrderedDict()
        self._max = max_publishers
        self.missing = 0

    def see(self, publisher: Any, sequence: int) -> None:
        key = repr(publisher)
        last = self._last.get(key)
        if last is not None and sequence > last + 1:
            self.missing += sequence - last - 1
        if last is None or sequence > last:
            self._last[key] = sequence
            self._last.move_to_end(key)
            while len(self._last) > self._max:
                self._last.popitem(last=False)


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

    if params.opencv_threads:
        import cv2

        cv2.setNumThreads(params.opencv_threads)  # the whole process: the node's own
    threads = {'threads': params.threads} if params.threads else {}
    try:
        segmenter = Segmenter.from_model(
            path, backend=params.backend, device=params.device, **threads
        )
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as err:
        msg = f'cannot load model_path {str(path)!r} (backend {params.backend}): {err}'
        raise NodeStartupError(msg) from err
    return segmenter


def model_warning(segmenter: Any) -> str | None:
    """The one load-time warning about the model: its weights cannot be checked."""
    from semseg_ros.model_file import ModelInfo, unverified_warning

    info = getattr(segmenter, 'model_info', None)
    return unverified_warning(info) if isinstance(info, ModelInfo) else None


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
        self._failing_reports = 0  # diagnostics reports in a row with failed frames
        #: Set when the worker thread died (see :class:`FrameWorker`): the node must go down.
        self.worker_error: BaseException | None = None
        self._failures_logged: set[str] = set()
        self.segmenter = segmenter
        self.processor = FrameProcessor(
            segmenter,
            color_encoding=params.color_encoding,
            overlay_alpha=params.overlay_alpha,
            palette=get_class_set(params.class_set) if params.class_set else None,
            highlight_classes=params.highlight_classes,
        )
        self.processor.log_unavailable = log_warning
        self.slot: LatestFrameSlot[ReceivedFrame] = LatestFrameSlot()
        self.input_rate = RateMeter(clock=clock)
        self.output_rate = RateMeter(clock=clock)
        self.latency = LatencyStats()  # header stamp -> published, on the adapter's clock
        self.processing = LatencyStats()  # decode + segment + colour, on the worker
        self.bad_input = WarnOncePerKind(log_warning, prefix=f'{INPUT_TOPIC}: ')
        self.bad_ground_truth = WarnOncePerKind(log_warning, prefix=f'{GROUND_TRUTH_TOPIC}: ')
        self.skipped = 0  # frames taken while no output had a subscriber (maybe still scored)
        self.suspect = 0  # processed frames whose padding looks like another encoding's rows
        self._log_warning = log_warning
        self.published = 0  # frames whose outputs were published
        self.lost_in_transport = 0  # image frames DDS reported lost (rclpy's message_lost)
        self._sequence_gaps = SequenceGaps()
        self.gt_lost_in_transport = 0
        self._finished = 0  # frames taken from the slot whose handling ended, however
        #: Frames the simulator stamped that never arrived (None: sim_tick_s 0, not counted).
        self.sim_gaps = SimTimeGaps(params.sim_tick_s) if params.sim_tick_s > 0 else None
        self._now_ns = now_ns
        self._clock = clock
        self._last_report = {
            'bad': 0, 'received': 0, 'failed': 0, 'skipped': 0, 'lost': 0, 'suspect': 0,
        }  # fmt: skip
        self.matcher: GroundTruthMatcher[Any] | None = None
        self.iou: OnlineIoU | None = None
        self._evaluations: deque[tuple[np.ndarray, Any]] = deque(maxlen=4)
        #: stamp -> (camera RGB, header) of frames whose ~/error waits for its ground truth.
        self._error_inputs: dict[Any, tuple[np.ndarray, Any]] = {}
        self._error_capacity = gt_capacity
        self._publish: Callable[[ProcessedFrame], object] | None = None
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
        segmenter = load_segmenter(params)
        warning = model_warning(segmenter)
        if warning:
            log_warning(warning)
        return cls(
            params,
            segmenter,
            log_warning=log_warning,
            log_error=log_error,
            now_ns=now_ns,
        )

    # Subscription callbacks: cheap, never wait on inference.

    def on_image(self, msg: Any, *, publisher: Any = None, sequence: int | None = None) -> None:
        """Image callback body: newest frame into the slot (a stale one is dropped).

        ``publisher`` and ``sequence`` (rclpy's MessageInfo: the publisher's gid and its
        publication sequence number), when the middleware gives them, reveal frames that
        never reached this callback although DDS reported no loss: a reliable reader whose
        KEEP_LAST history overwrote samples while the executor was busy.
        """
        self.input_rate.tick()
        self._observe_sim_time(msg)
        if sequence:
            self._sequence_gaps.see(publisher, int(sequence))
        self.slot.put(ReceivedFrame.from_msg(msg, received=self._clock()))

    @property
    def overwritten(self) -> int:
        """Frames missing from the publishers' sequences beyond those DDS reported lost."""
        return max(0, self._sequence_gaps.missing - self.lost_in_transport)

    def on_compressed_image(self, msg: Any) -> None:
        """CompressedImage callback body: as :meth:`on_image`; decoded on the worker."""
        self.input_rate.tick()
        self._observe_sim_time(msg)
        frame = ReceivedFrame(CompressedFields.from_msg(msg), msg.header, self._clock())
        self.slot.put(frame)

    def _observe_sim_time(self, msg: Any) -> None:
        """Count sim-time gaps before the stamp of ``msg`` (a header it cannot read: none)."""
        if self.sim_gaps is None:
            return
        try:
            stamp_ns = stamp_to_ns(checked_stamp(msg.header))
        except (AttributeError, ImageFormatError):
            return  # a malformed header is reported where the frame is processed
        self.sim_gaps.observe(stamp_ns)

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
        try:
            stamp = checked_stamp(msg.header)
        except ImageFormatError as err:
            self.bad_ground_truth(err)
            return
        pair = self.matcher.add_ground_truth(stamp, msg)
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
        self._publish = publish  # for ~/error images, published when their truth is matched
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
            stamp = checked_stamp(frame.header)
            result = self.processor.process(frame.image, frame.header, wanted)
        except ImageFormatError as err:
            if not wanted.any():
                self.skipped -= 1  # counted as bad instead: each frame in one column
            self.bad_input(err)
            return None
        # Row padding only exists in raw images (a compressed frame has no step to misread).
        suspect = (
            None if isinstance(frame.image, CompressedFields) else mislabelled_padding(frame.image)
        )
        if suspect:
            self.suspect += 1
            if self.suspect == 1:
                self._log_warning(f'{INPUT_TOPIC}: {suspect}; further such frames are counted')
        if wanted.any():
            publish(result)
            self.published += 1
            self.output_rate.tick()
            self.latency.add((self._now_ns() - stamp_to_ns(stamp)) / 1e9)
        self.processing.add(result.processing_s)
        if self.matcher is not None:
            if result.rgb is not None:
                self._keep_for_error(stamp, result.rgb, frame.header)
            pair = self.matcher.add_prediction(stamp, result.ids)
            if pair is not None:
                self._score(*pair)
        return result

    def _score_pending(self) -> None:
        while self._evaluations:
            self._score(*self._evaluations.popleft())

    def _score(self, pred_ids: np.ndarray, gt_msg: Any) -> None:
        assert self.iou is not None
        try:
            gt_rgb = frame_to_rgb(gt_msg)
            self.iou.update(pred_ids, gt_rgb)
        except ImageFormatError as err:
            self.bad_ground_truth(err)
            return
        self._publish_error(stamp_of(gt_msg.header), pred_ids, gt_rgb)

    def _keep_for_error(self, stamp: Any, rgb: np.ndarray, header: Any) -> None:
        self._error_inputs[stamp] = (rgb, header)
        while len(self._error_inputs) > self._error_capacity:  # truth that never came
            del self._error_inputs[next(iter(self._error_inputs))]

    def _publish_error(self, stamp: Any, pred_ids: np.ndarray, gt_rgb: np.ndarray) -> None:
        """~/error for a matched frame, when it was wanted (its camera image was kept)."""
        kept = self._error_inputs.pop(stamp, None)
        if kept is None or self._publish is None or self.iou is None:
            return
        rgb, header = kept
        picture = error_image(rgb, pred_ids, self.iou.gt_ids(gt_rgb))  # (H, W, 3) RGB
        fields = array_to_image_fields(picture, 'rgb8')
        self._publish(ProcessedFrame(header, {'error': fields}, pred_ids, 0.0))

    def run(
        self,
        outputs: Callable[[], Outputs],
        publish: Callable[[ProcessedFrame], object],
    ) -> None:
        """Loop :meth:`step` until :meth:`stop` (the body of the worker thread).

        An unexpected exception drops its frame, is logged (with traceback) once per type
        and counted as failed, and turns /diagnostics to WARN (ERROR while it keeps failing,
        OK once frames go through again): the node stays up and says so. Anything that ends
        this loop otherwise (a BaseException, a failure of the handler itself) ends the
        thread: :class:`FrameWorker` records it and the adapter takes the node down.
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

    def diagnostics(self, *, hardware_id: str = '', node_name: str = NODE_NAME) -> dict[str, Any]:
        """The node's DiagnosticStatus as a plain dict (see :func:`diagnostics_status`),
        named ``NODE_NAME: segmentation`` (the adapter passes its namespace with the name)."""
        bad_total = self.bad_input.total
        received = self.slot.received
        new_bad = bad_total - self._last_report['bad']
        new_frames = received - self._last_report['received']
        new_failed = self.failed - self._last_report['failed']
        new_skipped = self.skipped - self._last_report['skipped']
        new_lost = self.lost_in_transport - self._last_report['lost']
        new_suspect = self.suspect - self._last_report['suspect']
        self._failing_reports = self._failing_reports + 1 if new_failed else 0
        fatal = None
        if self.worker_error is not None:
            err = self.worker_error
            fatal = f'the inference thread died ({type(err).__name__}: {err}); the node stops'
        self._last_report = {
            'bad': bad_total,
            'received': received,
            'failed': self.failed,
            'skipped': self.skipped,
            'lost': self.lost_in_transport,
            'suspect': self.suspect,
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
                'bad_by_kind': self.bad_ground_truth.counts,
                'lost': self.gt_lost_in_transport,
            }
        return diagnostics_status(
            name=f'{node_name}: segmentation',
            hardware_id=hardware_id,
            input_rate=self.input_rate.rate(),
            output_rate=self.output_rate.rate(),
            latency=self.latency,
            processing=self.processing,
            received=received,
            lost_in_transport=self.lost_in_transport,
            overwritten=self.overwritten,
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
            failing_reports=self._failing_reports,
            suspect=self.suspect,
            new_suspect=new_suspect,
            fatal=fatal,
            backend=str(getattr(self.segmenter, 'backend_name', '?')),
            model=_describe_model(self.segmenter, self.params),
            class_set=self.processor.palette.name,
            miou=miou,
            per_class_iou=per_class,
            ground_truth=gt,
            never_received=None if self.sim_gaps is None else self.sim_gaps.missing,
        )


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
        try:
            self.core.run(self._outputs, self._publish)
        except BaseException as err:  # the thread ends: say why, for the adapter to exit on
            self.core.worker_error = err
            trace = ''.join(traceback.format_exception(err))
            with contextlib.suppress(BaseException):  # the adapter still sees worker_error
                self.core._log_error(f'the inference thread died: {err!r}\n{trace}')

    @property
    def died(self) -> bool:
        """True when the thread ended by an error rather than by :meth:`stop`."""
        return self.core.worker_error is not None

    def stop(self, timeout: float | None = 1.5) -> None:
        """Let the frame in flight finish (bounded: the node must exit within 2 s)."""
        self.core.stop()
        if self.is_alive():
            self.join(timeout)
