"""``semseg bag IN OUT --model M``: segment a camera topic of a ROS 2 bag offline.

Reads a rosbag2 (sqlite3 or mcap) with ``rosbags``, runs the node's per-frame path
(:class:`~semseg_ros.node_core.FrameProcessor` around the
:class:`~semseg_ros.segmenter.Segmenter`) on every message of the camera topic, and writes
a new bag holding every input message unchanged (same bytes, same log time) plus the node's
outputs ``/semseg_node/mask|color|overlay`` with the input's header (stamp, frame id) and
log time, so the new topics line up with the camera in any player.

Streams message by message (bags larger than memory are fine) with a progress bar. The
output is written to a hidden temporary folder next to OUT and renamed to OUT only when
complete (:mod:`semseg_ros.staged_output`): an interrupted run (Ctrl-C, SIGTERM, an error)
leaves no half-written OUT, and what a SIGKILLed one leaves is cleaned by the next run.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semseg_ros.cli import parse_args
from semseg_ros.compressed import COMPRESSED_SUFFIX, COMPRESSED_TYPE, CompressedFields
from semseg_ros.imaging import ImageFormatError, WarnOncePerKind
from semseg_ros.node.core import (
    ALL_OUTPUTS,
    FrameProcessor,
    Outputs,
    load_segmenter,
    model_warning,
)
from semseg_ros.node.params import (
    COLOR_ENCODINGS,
    NODE_NAME,
    OUTPUT_TOPICS,
    NodeParams,
    NodeStartupError,
    ParamError,
)
from semseg_ros.staged_output import StagedEntries
from semseg_ros.staged_output import recover as _recover
from semseg_ros.topic_names import TopicNameError, resolve_topic

IMAGE_TYPE = 'sensor_msgs/msg/Image'
DEFAULT_IMAGE_TOPIC = '/carla/ego_vehicle/rgb_front/image'
STORAGES = ('mcap', 'sqlite3')
CAMERA_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)  # camera topics segmented (compressed: decoded)


class BagError(ValueError):
    """An input bag, topic or output path that cannot be used; the message says the fix."""


@dataclass
class BagReport:
    """What :func:`process_bag` did."""

    out: Path
    image_topic: str
    output_topics: dict[str, str]  # output name -> topic
    messages_in: int = 0
    frames: int = 0  # camera messages segmented
    bad_frames: dict[str, int] = field(default_factory=dict)  # ImageFormatError kind -> count
    seconds: float = 0.0


def pick_image_topic(connections: Sequence[Any], requested: str | None) -> str:
    """The camera topic: ``requested``, else the bridge's RGB camera (raw, else compressed),
    else the only Image or CompressedImage topic."""
    images = sorted({c.topic for c in connections if c.msgtype in CAMERA_TYPES})
    if requested is not None:
        if requested not in images:
            msg = (
                f'topic {requested} is not an {IMAGE_TYPE} topic (nor {COMPRESSED_TYPE}) of '
                'the bag; camera topics: '
            )
            raise BagError(msg + (', '.join(images) or 'none'))
        return requested
    for default in (DEFAULT_IMAGE_TOPIC, DEFAULT_IMAGE_TOPIC + COMPRESSED_SUFFIX):
        if default in images:
            return default
    if len(images) == 1:
        return images[0]
    msg = (
        f'the bag has {len(images)} {IMAGE_TYPE} topics ({", ".join(images) or "none"}); '
        'choose one with --image-topic'
    )
    raise BagError(msg)


def recover_output(out: Path) -> None:
    """Clean up after runs writing ``out`` that were killed (see staged_output.recover)."""
    _recover(out.parent, out.name, out.parent, [out.name])


def process_bag(
    in_path: str | Path,
    out_path: str | Path,
    processor: FrameProcessor,
    *,
    image_topic: str | None = None,
    outputs: Outputs = ALL_OUTPUTS,
    namespace: str = '/',
    storage: str = 'mcap',
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
) -> BagReport:
    """Copy ``in_path`` to ``out_path`` adding the segmentation topics (see module doc)."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from tqdm import tqdm

    in_path, out = Path(in_path), Path(out_path)
    recover_output(out)  # what a killed run left: gone, or the OUT it was replacing back
    if storage not in STORAGES:
        raise BagError(f'storage {storage!r} is not supported; use one of {", ".join(STORAGES)}')
    if out.exists() and not overwrite:
        raise BagError(f'{out} exists; pass --overwrite to replace it, or choose another OUT')
    if out.resolve() == in_path.resolve():
        raise BagError(f'OUT {out} is the input bag; write to another folder')
    if not outputs.any():
        raise BagError('no outputs chosen; pick some of mask, color, overlay')
    try:
        output_topics = {
            name: resolve_topic(topic, node_name=NODE_NAME, namespace=namespace)
            for name, topic in OUTPUT_TOPICS.items()
            if getattr(outputs, name)
        }
    except TopicNameError as err:
        raise BagError(str(err)) from err
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    ros_image, header_type, time_type = (
        typestore.types[name]
        for name in (IMAGE_TYPE, 'std_msgs/msg/Header', 'builtin_interfaces/msg/Time')
    )
    try:
        reader = AnyReader([in_path])
        reader.open()
    except (AnyReaderError, OSError) as err:
        raise BagError(f'{in_path} is not a readable bag: {err}') from err
    staged = StagedEntries.for_folder(out)
    start = time.perf_counter()
    try:
        if not reader.is2:
            raise BagError(f'{in_path} is a ROS 1 bag; convert it first (rosbags-convert)')
        topic = pick_image_topic(reader.connections, image_topic)
        clash = sorted({c.topic for c in reader.connections} & set(output_topics.values()))
        if clash:
            msg = f'the bag already has {", ".join(clash)}; use --namespace to write elsewhere'
            raise BagError(msg)
        report = BagReport(out, topic, output_topics)
        out.parent.mkdir(parents=True, exist_ok=True)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        # Written as .OUT.partial-<pid>/new/OUT (data file OUT_0.mcap, its final name).
        writer = Writer(staged.open(), version=8, storage_plugin=plugin)
        writer.open()
        try:
            copies = {}
            for conn in reader.connections:
                ext = conn.ext
                key = (conn.topic, conn.msgtype, ext.serialization_format)
                if key in copies:  # several input connections, one output connection
                    copies[conn.id] = copies[key]
                    continue
                known = bool(conn.msgdef.data and conn.digest)
                copies[conn.id] = copies[key] = writer.add_connection(
                    conn.topic,
                    conn.msgtype,
                    typestore=None if known else reader.typestore,
                    msgdef=conn.msgdef.data if known else None,
                    rihs01=conn.digest if known else None,
                    serialization_format=ext.serialization_format,
                    offered_qos_profiles=ext.offered_qos_profiles,
                )
            added = {
                name: writer.add_connection(t, IMAGE_TYPE, typestore=typestore)
                for name, t in output_topics.items()
            }
            warn = WarnOncePerKind(log, prefix=f'{topic}: ')
            total = sum(c.msgcount for c in reader.connections if c.topic == topic)
            bar = tqdm(total=total, unit='frame', desc='segmenting', disable=not progress)
            with bar:
                for conn, timestamp, raw in reader.messages():
                    writer.write(copies[conn.id], timestamp, raw)  # unchanged
                    report.messages_in += 1
                    if conn.topic != topic:
                        continue
                    bar.update()
                    msg = reader.deserialize(raw, conn.msgtype)
                    try:
                        image = (
                            CompressedFields.from_msg(msg)
                            if conn.msgtype == COMPRESSED_TYPE
                            else msg
                        )
                        frame = processor.process(image, msg.header, outputs)
                    except ImageFormatError as err:
                        warn(err)
                        report.bad_frames[err.kind] = report.bad_frames.get(err.kind, 0) + 1
                        continue
                    stamp = msg.header.stamp
                    header = header_type(
                        stamp=time_type(sec=stamp.sec, nanosec=stamp.nanosec),
                        frame_id=msg.header.frame_id,
                    )
                    for name, fields in frame.images.items():
                        out_msg = ros_image(header=header, **fields.msg_kwargs())
                        data = typestore.serialize_cdr(out_msg, IMAGE_TYPE)
                        writer.write(added[name], timestamp, data)  # the camera's log time
                    report.frames += 1
        finally:
            writer.close()
        if out.exists() and not overwrite:
            raise BagError(f'{out} appeared while writing; the result is not moved over it')
        staged.commit()  # the old OUT stays until the new one is in place
    except BaseException:
        staged.discard()  # never leave a half-written bag behind
        raise
    finally:
        reader.close()
    report.seconds = time.perf_counter() - start
    return report


# --- CLI ---------------------------------------------------------------------------------


def _outputs(text: str) -> Outputs:
    names = [n.strip() for n in text.split(',') if n.strip()]
    unknown = sorted(set(names) - set(OUTPUT_TOPICS))
    if unknown or not names:
        msg = f'{text!r}: choose outputs from {",".join(OUTPUT_TOPICS)} (comma-separated)'
        raise argparse.ArgumentTypeError(msg)
    return Outputs(**{name: name in names for name in OUTPUT_TOPICS})


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('input', type=Path, help='ROS 2 bag (folder, sqlite3 or mcap)')
    parser.add_argument('output', type=Path, help='bag folder to write (must not exist)')
    parser.add_argument('--model', required=True, help='model file: .onnx, .engine or .pt')
    parser.add_argument('--backend', default='auto', help='auto, onnxruntime, tensorrt, torch')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:<n>')
    parser.add_argument(
        '--image-topic',
        help=(
            f'camera topic, Image or CompressedImage (default {DEFAULT_IMAGE_TOPIC}[/compressed] '
            'or the only one)'
        ),
    )
    parser.add_argument(
        '--outputs',
        type=_outputs,
        default=ALL_OUTPUTS,
        help='comma-separated outputs to add: mask,color,overlay (default all)',
    )
    parser.add_argument('--color-encoding', choices=COLOR_ENCODINGS, default='rgb8')
    parser.add_argument('--overlay-alpha', type=float, default=0.5, help='0..1 (default 0.5)')
    parser.add_argument('--namespace', default='/', help='node namespace of the output topics')
    parser.add_argument('--storage', choices=STORAGES, default='mcap', help='mcap (default)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing OUT')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg bag``: returns the exit code."""
    parser = _parser(prog)
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args
    try:
        params = NodeParams(
            model_path=args.model, backend=args.backend, device=args.device,
            color_encoding=args.color_encoding, overlay_alpha=args.overlay_alpha,
        )  # fmt: skip
        segmenter = load_segmenter(params)
        warning = model_warning(segmenter)
        if warning:
            print(f'warning: {warning}', file=sys.stderr)
    except (ParamError, NodeStartupError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2 if isinstance(err, ParamError) else 1
    processor = FrameProcessor(
        segmenter, color_encoding=params.color_encoding, overlay_alpha=params.overlay_alpha
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM cleans up like ^C
    try:
        report = process_bag(
            args.input, args.output, processor, image_topic=args.image_topic,
            outputs=args.outputs, namespace=args.namespace, storage=args.storage,
            overwrite=args.overwrite, progress=not args.no_progress,
            log=lambda text: print(f'warning: {text}', file=sys.stderr),
        )  # fmt: skip
    except BagError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{parser.prog}: interrupted; {args.output} was not written', file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    fps = report.frames / report.seconds if report.seconds else 0.0
    bad = sum(report.bad_frames.values())
    print(
        f'{report.frames} frames of {report.image_topic} segmented ({fps:.1f} frames/s, '
        f'{bad} malformed skipped); {report.messages_in} input messages copied'
    )
    for name, topic in report.output_topics.items():
        print(f'  {name:<8} {topic}')
    print(f'wrote {report.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
