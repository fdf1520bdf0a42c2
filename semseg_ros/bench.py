"""``semseg bench`` / ``make bench``: measured speed of each part, printed as a table.

Every figure is a median over repeated runs (p90 alongside where it matters) and is also
written as JSON so a run can be compared with the next one.  Sections register in
:data:`SECTIONS`; ``--only`` picks some of them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Row:
    section: str
    case: str
    median: float
    unit: str
    p90: float | None = None
    note: str = ''


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> np.ndarray:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return times


def _ms_row(section: str, case: str, seconds: np.ndarray, note: str = '') -> Row:
    return Row(
        section,
        case,
        float(np.median(seconds) * 1e3),
        'ms',
        float(np.percentile(seconds, 90) * 1e3),
        note,
    )


def bench_labels(*, quick: bool = False) -> list[Row]:
    """Class-set LUT conversions on one 800x600 frame (the node does these per frame)."""
    from semseg_ros.labels import CARLA23, LYFT13, remap

    rng = np.random.default_rng(0)
    ids = rng.integers(0, CARLA23.num_classes, (600, 800), dtype=np.uint8)
    palette = CARLA23.id_to_color(ids)
    repeats = 5 if quick else 30
    note = '800x600, 23 classes'
    cases = {
        'id_to_color': lambda: CARLA23.id_to_color(ids),
        'color_to_id': lambda: CARLA23.color_to_id(palette),
        'remap carla23->lyft13': lambda: remap(ids, CARLA23, LYFT13),
    }
    return [
        _ms_row('labels', case, time_call(fn, repeats=repeats), note) for case, fn in cases.items()
    ]


def bench_synth(*, quick: bool = False) -> list[Row]:
    """The synthetic generator at 800x600 on one core (target: >= 20 frames/s with PNG writes)."""
    from semseg_ros.training_half import training_module

    result = training_module('data.synthetic').benchmark(frames=8 if quick else 40)
    return [
        Row('synth', case, float(value), 'frames/s', None, 'one core, 800x600')
        for case, value in result.items()
        if case.endswith('fps')
    ]


#: The transport cases: (case name, with the shipped Fast DDS profile).
TRANSPORT_CONFIGS = (('shipped profile', True), ('Fast DDS defaults', False))
TRANSPORT_HZ = 20.0  # the bridge's camera rate


def _transport_process(
    role: str, env: dict[str, str], reliable: bool, frames: int, ready: Any, done: Any, out: Any
) -> None:
    """One side of the transport benchmark, in a process of its own (``spawn``: no rclpy
    state inherited). ``env`` is set before rclpy creates the participant, exactly (the
    profile is not added: the defaults case runs without it).

    ``pub``: an 800x600 bgra8 Image ``frames`` times at 20 Hz, RELIABLE keep last 10 like the
    bridge, header stamp = wall time at publish. ``sub``: latency = wall time in the callback
    minus the stamp; frames the middleware reports lost (``message_lost``). Results on ``out``.
    """
    import array
    import os

    os.environ.clear()
    os.environ.update(env)
    import rclpy
    from rclpy.context import Context
    from rclpy.duration import Duration
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    context = Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f'bench_transport_{role}', context=context)
    topic = '/bench/image'
    try:
        if role == 'pub':
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            pub = node.create_publisher(Image, topic, qos)
            deadline = time.monotonic() + 20.0
            while pub.get_subscription_count() < 1 or not ready.is_set():
                if time.monotonic() > deadline:
                    out.put({'error': f'no subscriber matched {topic} in 20 s'})
                    return
                time.sleep(0.02)
            pixels = np.random.default_rng(0).integers(0, 256, 600 * 800 * 4, dtype=np.uint8)
            msg = Image(height=600, width=800, encoding='bgra8', step=3200)
            msg.data = array.array('B', pixels.tobytes())
            start = time.monotonic()
            for i in range(frames):
                time.sleep(max(start + i / TRANSPORT_HZ - time.monotonic(), 0.0))
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                pub.publish(msg)
            pub.wait_for_all_acked(Duration(seconds=2))
            out.put({'sent': frames})
            done.set()
            return
        latency_ms: list[float] = []
        lost = [0]

        def image_callback(image: Image) -> None:
            stamp_ns = image.header.stamp.sec * 10**9 + image.header.stamp.nanosec
            latency_ms.append((time.time_ns() - stamp_ns) / 1e6)

        def lost_callback(info: Any) -> None:
            lost[0] = info.total_count

        reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        sub = node.create_subscription(
            Image, topic, image_callback, QoSProfile(depth=5, reliability=reliability),
            event_callbacks=SubscriptionEventCallbacks(message_lost=lost_callback),
        )  # fmt: skip
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 20.0
        while sub.get_publisher_count() < 1 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.02)
        ready.set()
        end = time.monotonic() + 20.0 + frames / TRANSPORT_HZ
        while len(latency_ms) < frames and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
            if done.is_set() and len(latency_ms) < frames:
                end = min(end, time.monotonic() + 0.5)  # stragglers, then the lost events
        for _ in range(5):
            executor.spin_once(timeout_sec=0.02)
        out.put({'latency_ms': latency_ms, 'lost': lost[0]})
        executor.shutdown()
    finally:
        node.destroy_node()
        context.try_shutdown()


def transport_latency(*, profile: bool, reliable: bool, frames: int) -> dict[str, object]:
    """Publish -> callback between two processes in a ROS domain of their own, with or
    without the shipped Fast DDS profile (both processes): latencies (ms), sent, lost."""
    from multiprocessing import get_context

    from semseg_ros.ros_env import isolated_environment, random_domain_id

    env = isolated_environment(random_domain_id(), fastdds_profile=profile)
    mp = get_context('spawn')
    ready, done, out = mp.Event(), mp.Event(), mp.Queue()
    procs = {
        role: mp.Process(
            target=_transport_process, args=(role, env, reliable, frames, ready, done, out)
        )
        for role in ('sub', 'pub')
    }
    for proc in procs.values():
        proc.start()
    result: dict[str, object] = {}
    try:
        for _ in procs:
            result.update(out.get(timeout=60 + frames / TRANSPORT_HZ))
    finally:
        for proc in procs.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    if 'error' in result:
        raise RuntimeError(f'bench transport: {result["error"]}')
    return result


def bench_transport(*, quick: bool = False) -> list[Row]:
    """An 800x600 bgra8 Image between two rclpy processes at 20 Hz: publish -> subscriber
    callback latency (p50 / p90, p99 in the note) and the frames the middleware lost, with
    the Fast DDS profile the node ships (``config/fastdds_large_data.xml``) against Fast DDS's
    defaults, for a RELIABLE subscriber (the recorder) and a BEST_EFFORT one (the node's
    default). Target: <= 5 ms p50 with the profile. Needs rclpy (the ``ros`` extra)."""
    try:
        import rclpy  # noqa: F401
    except ImportError as err:  # the ros extra is optional
        return [Row('transport', 'skipped', float('nan'), 'ms', None, f'no rclpy: {err}')]

    frames = 30 if quick else 200
    rows: list[Row] = []
    for name, profile in TRANSPORT_CONFIGS:
        for reliable in (True, False):
            result = transport_latency(profile=profile, reliable=reliable, frames=frames)
            lat = np.asarray(result['latency_ms'], dtype=float)
            received = len(lat)
            p50 = float(np.median(lat)) if received else float('nan')
            note = (
                f'p99 {np.percentile(lat, 99) if received else float("nan"):.1f} ms; received '
                f'{received}/{result["sent"]}, lost {result["lost"]}; 2 processes, 20 Hz'
            )
            if profile:
                note += f'; {_target(p50, p50 <= 5.0, "<= 5 ms")}'
            rows.append(
                Row(
                    'transport',
                    f'Image 800x600 bgra8 pub->callback, {name}, '
                    f'{"reliable" if reliable else "best effort"} sub',
                    p50,
                    'ms',
                    float(np.percentile(lat, 90)) if received else None,
                    note,
                )
            )
    return rows


# --- Inference: engines x resolutions, and the CPU targets (issue 5) -------------------------


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux /proc); NaN elsewhere."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float('nan')


_CASE: dict[str, object] = {}  # in a bench worker process: its segmenter and frames


def _inference_case(
    path: str, backend: str, threads: int, spec: dict | None, repeats: int
) -> dict[str, object]:
    """``repeats`` frames of one backend at one input spec, in this case's own process.

    The first call loads the model (and warms it up); later calls reuse it, so the parent can
    interleave the cases in rounds. End to end: bgra8 800x600 frame -> full-frame ids.
    Returns per-frame seconds (total, pre, infer, post) and peak / pre-model RSS (MB).
    """
    if not _CASE:
        _CASE.update(_load_case(path, backend, threads, spec))
    segmenter, frames = _CASE['segmenter'], _CASE['frames']
    times: dict[str, list[float]] = {'total': [], 'pre': [], 'infer': [], 'post': [], 'cpu': []}
    for i in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = segmenter.segment(frames[i % len(frames)], encoding='bgra8')
        times['total'].append(time.perf_counter() - start)
        # CPU seconds of this process: with 1 thread, the work itself, whatever the load.
        times['cpu'].append(time.process_time() - cpu_start)
        times['pre'].append(result.timings.pre)
        times['infer'].append(result.timings.infer)
        times['post'].append(result.timings.post)
    # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec).
    return {**times, 'peak_mb': _status_mb('VmHWM'), 'base_mb': _CASE['base_mb']}


def _load_case(path: str, backend: str, threads: int, spec: dict | None) -> dict[str, object]:
    from semseg_ros.pipeline import InputSpec
    from semseg_ros.segmenter import Segmenter
    from semseg_ros.training_half import training_module

    render_frame = training_module('data.synthetic').render_frame
    frames = []
    for i in range(4):
        rgb = render_frame(123, i)[0]  # (600, 800, 3) RGB
        frames.append(np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]))
    if backend == 'torch':
        import torch  # imported before the baseline: the library is not the model's memory

        torch.set_num_threads(threads)
    base_mb = _status_mb('VmRSS')
    input_spec = InputSpec.from_dict(spec) if spec else None
    segmenter = Segmenter.from_model(
        path, device='cpu', threads=threads, input_spec=input_spec, **_backend_options(backend)
    )
    for frame in frames[:2]:  # warm-up: allocations, first-call kernel choices
        segmenter.segment(frame, encoding='bgra8')
    return {'segmenter': segmenter, 'frames': frames, 'base_mb': base_mb}


def _backend_options(backend: str) -> dict[str, object]:
    """``'openvino:int8'`` -> ``{'backend': 'openvino', 'precision': 'int8'}``."""
    from semseg_ros.engines import split_backend_choice

    name, options = split_backend_choice(backend)
    return {'backend': name, **options}


def _summarize(parts: list[dict[str, object]]) -> dict[str, float]:
    """Merge a case's rounds: total p50/p90/p99 and the stages' medians in ms, peak RSS."""
    ms = {
        k: np.concatenate([np.asarray(p[k]) for p in parts]) * 1e3
        for k in ('total', 'pre', 'infer', 'post', 'cpu')
    }
    peak = max(float(p['peak_mb']) for p in parts)
    return {
        'p50': float(np.percentile(ms['total'], 50)),
        'p90': float(np.percentile(ms['total'], 90)),
        'p99': float(np.percentile(ms['total'], 99)),
        'pre': float(np.median(ms['pre'])),
        'infer': float(np.median(ms['infer'])),
        'post': float(np.median(ms['post'])),
        'cpu': float(np.median(ms['cpu'])),
        'peak_mb': peak,
        'model_mb': peak - float(parts[0]['base_mb']),
    }


def _target(value: float, ok: bool, text: str) -> str:
    if not np.isfinite(value):
        return f'target {text}: not measured'
    return f'target {text}: {"PASS" if ok else "MISSED"}'


#: The trained CPU model the bench measures with ``--random-weights``-less runs of old.
BENCH_CHECKPOINT = Path('runs/train/cpu_default/best.pt')
#: The model `make bench` measures: the shipped one, the file the node loads by default.
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / 'models' / 'semseg_demo.onnx'
#: What the inference section benchmarks (``--model``, ``--random-weights``).
INFERENCE_MODEL: dict[str, object] = {'model': None, 'random_weights': False}


def _random_bench_checkpoint(path: Path) -> Path:
    """The default CPU config's architecture (training/configs/cpu.yaml) with random weights."""
    import torch

    from semseg_ros.labels import LYFT13
    from semseg_ros.pipeline import Normalization
    from semseg_ros.training_half import training_module

    checkpoints = training_module('checkpoint')
    cpu = training_module('config').load_config('cpu')
    config = cpu.model.unet_config(LYFT13.num_classes)
    torch.manual_seed(0)
    checkpoint = checkpoints.Checkpoint(
        model_config=config.to_dict(),
        class_set=LYFT13.to_dict(),
        normalization=Normalization().to_dict(),
        input_size=list(cpu.data.input_size),
        model_state=training_module('model').build_model(config).state_dict(),
        train_config={'name': 'bench_random_weights'},
    )
    return checkpoints.save_checkpoint(checkpoint, path)


def bench_models(
    out_dir: str | Path, *, checkpoint: str | Path | None = None, eval_frames: int = 16
) -> dict[str, object]:
    """FP32 + INT8 ONNX of the trained CPU model (or random weights), with the mIoU drop.

    Re-exported only when the checkpoint or this exporter changed. Returns paths and the
    INT8 report.
    """
    import hashlib

    from semseg_ros.model_file import file_sha256
    from semseg_ros.training_half import training_module

    export = training_module('export')

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(checkpoint) if checkpoint is not None else BENCH_CHECKPOINT
    trained = source.is_file()
    if not trained:  # (re)written each time: the default architecture may have changed
        source = _random_bench_checkpoint(out_dir / 'random_weights.pt')
    exporter = Path(export.__file__).read_bytes()
    digest = hashlib.sha256(file_sha256(source).encode() + exporter).hexdigest()[:12]
    fp32 = out_dir / f'bench-{digest}.onnx'
    int8 = export.variant_path(fp32, 'int8')
    report_path = out_dir / f'bench-{digest}.json'
    if fp32.is_file() and int8.is_file() and report_path.is_file():
        return json.loads(report_path.read_text())
    export.export_onnx(source, fp32)
    ckpt = training_module('checkpoint').load_checkpoint(source)
    result: dict[str, object] = {
        'checkpoint': str(source),
        'trained': trained,
        'fp32': str(fp32),
        'int8': str(int8),
    }
    if trained:
        frames, _ = export.calibration_frames(ckpt, source, 32)
        export.quantize_int8(fp32, frames, int8)
        result.update(export.int8_miou_drop(ckpt, source, fp32, int8, eval_frames))
    else:
        render_frame = training_module('data.synthetic').render_frame
        export.quantize_int8(fp32, [render_frame(7, i)[0] for i in range(8)], int8)
        result['miou_note'] = (
            f'no trained checkpoint at {BENCH_CHECKPOINT} (random weights): mIoU drop not '
            'measured; train it with `semseg train --config cpu`'
        )
    report_path.write_text(json.dumps(result, indent=1) + '\n')
    return result


def _bench_model_set(quick: bool) -> dict[str, object]:
    """The files to measure: the shipped model (default), ``--model PATH`` or random weights.

    Returns fp32 / int8 (onnxruntime QDQ, when present) paths, the checkpoint for the torch
    row (when there is one), a description and, for exported random weights, the report."""
    from semseg_ros.engines.openvino_engine import openvino_int8_path
    from semseg_ros.training_half import training_module

    if INFERENCE_MODEL['random_weights']:
        models = bench_models(Path('runs/bench/models'), eval_frames=4 if quick else 16)
        return {**models, 'what': f'RANDOM weights ({models["checkpoint"]})'}
    fp32 = Path(INFERENCE_MODEL['model'] or SHIPPED_MODEL)
    int8 = training_module('export').variant_path(fp32, 'int8')
    checkpoint = BENCH_CHECKPOINT if BENCH_CHECKPOINT.is_file() else None
    return {
        'fp32': str(fp32),
        'int8': str(int8) if int8.is_file() else None,
        'openvino_int8': openvino_int8_path(fp32).is_file(),
        'checkpoint': str(checkpoint) if checkpoint else None,
        'what': f'{fp32} (trained)' if fp32 == SHIPPED_MODEL else str(fp32),
    }


def _synthetic_miou(path: str, backend: str, frames: int) -> float:
    """mIoU of one engine on ``frames`` synthetic frames (seed 123, full 800x600, the
    model's own input spec), against the generator's labels."""
    from semseg_ros.metrics import ConfusionMatrix
    from semseg_ros.segmenter import Segmenter
    from semseg_ros.training_half import training_module

    render_frame = training_module('data.synthetic').render_frame
    segmenter = Segmenter.from_model(path, device='cpu', **_backend_options(backend))
    cm = ConfusionMatrix(segmenter.class_set.num_classes)
    for i in range(frames):
        rgb, label = render_frame(123, 100 + i)
        cm.update(segmenter.segment(rgb).ids, label)
    return float(cm.miou())


def bench_inference(*, quick: bool = False) -> list[Row]:
    """Every CPU engine and precision side by side: latency p50/p90/p99, FPS, CPU time per
    frame, peak memory, mIoU on a fixed synthetic set, and the CPU targets (issue 15).

    The model is the shipped one (models/semseg_demo.onnx, the node's default) unless
    ``--model`` or ``--random-weights`` says otherwise. Resolutions: the full 800x600 frame
    fed as is, and the model's own input spec (the realtime preset). Every case runs in its
    own process (its own peak memory, no other backend's threads), and the cases are
    interleaved in rounds so that load from other work on the machine falls on all of them
    alike. Each engine runs with 1 and with all threads; ratios use each one's faster
    setting (with other work on the cores, 1 thread can beat N).
    """
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from semseg_ros.engines import create_engine
    from semseg_ros.engines.openvino_engine import openvino_available
    from semseg_ros.engines.tensorrt_engine import tensorrt_available
    from semseg_ros.model_file import read_model_info

    threads = os.cpu_count() or 1
    models = _bench_model_set(quick)
    load = os.getloadavg()[0]
    rows = [
        Row('inference', 'load average (1 min) at start', load, '', None,
            f'{threads} CPU threads; model: {models["what"]}'),
    ]  # fmt: skip
    realtime = read_model_info(models['fp32']).input_spec
    rw, rh = realtime.input_size
    real = f'realtime {rw}x{rh} crop {realtime.crop_top}/{realtime.crop_bottom}'
    full_spec = {'input_size': [800, 600], 'normalization': realtime.normalization.to_dict()}
    resolutions = {'800x600': full_spec, real: None}
    kinds = [('onnxruntime fp32', models['fp32'], 'onnxruntime')]
    if models.get('int8'):
        kinds.append(('onnxruntime int8', models['int8'], 'onnxruntime'))
    ov_ok, ov_why = openvino_available()
    if ov_ok:
        kinds.append(('openvino fp32', models['fp32'], 'openvino:fp32'))
        if models.get('openvino_int8', True):
            kinds.append(('openvino int8', models['fp32'], 'openvino:int8'))
    if models.get('checkpoint'):
        kinds.insert(0, ('torch eager fp32', models['checkpoint'], 'torch'))
    default = create_engine(models['fp32'], device='cpu')
    default_kind = f'{default.backend} {default.precision}'
    counts = sorted({1, threads})
    backends = {
        f'{kind} {n}T': (path, backend, n) for kind, path, backend in kinds for n in counts
    }
    results: dict[tuple[str, str], dict[str, float]] = {}
    spawn = get_context('spawn')
    rounds = 1 if quick else 4
    for res_name, spec in resolutions.items():
        pools = {name: ProcessPoolExecutor(1, mp_context=spawn) for name in backends}
        parts: dict[str, list[dict[str, object]]] = {name: [] for name in backends}
        try:
            for round_index in range(rounds):
                order = list(backends)
                order = order[round_index % len(order) :] + order[: round_index % len(order)]
                for name in order:
                    path, backend, n_threads = backends[name]
                    slow = backend == 'torch' and res_name == '800x600'
                    repeats = (3 if slow else 5) if quick else (3 if slow else 8)
                    job = (path, backend, n_threads, spec, repeats)
                    parts[name].append(pools[name].submit(_inference_case, *job).result())
        finally:
            for pool in pools.values():
                pool.shutdown()
        for name in backends:
            stats = results[(res_name, name)] = _summarize(parts[name])
            note = (
                f'p99 {stats["p99"]:.1f} ms, {1e3 / stats["p50"]:.1f} FPS; pre '
                f'{stats["pre"]:.1f} / infer {stats["infer"]:.1f} / post {stats["post"]:.1f} '
                f'ms; CPU {stats["cpu"]:.0f} ms/frame; peak RSS {stats["peak_mb"]:.0f} MB '
                f'(model +{stats["model_mb"]:.0f})'
            )
            rows.append(
                Row('inference', f'{name} {res_name}', stats['p50'], 'ms', stats['p90'], note)
            )
    if not ov_ok:
        rows.append(Row('inference', 'openvino', float('nan'), 'ms', None, f'skipped: {ov_why}'))
    trt_ok, trt_why = tensorrt_available()
    gpu_reason = trt_why if not trt_ok else 'run `semseg bench` on the GPU machine'
    rows.append(
        Row('inference', 'tensorrt / onnxruntime-cuda / torch-cuda', float('nan'), 'ms', None,
            f'skipped: no GPU in this session ({gpu_reason})')
    )  # fmt: skip

    # mIoU per engine and precision on a fixed synthetic set, and the drop vs FP32.
    eval_frames = 4 if quick else 12
    miou = {kind: _synthetic_miou(path, backend, eval_frames) for kind, path, backend in kinds}
    reference = miou['onnxruntime fp32']
    for kind, value in miou.items():
        drop = 100.0 * (reference - value)
        note = f'drop vs onnxruntime fp32 {drop:+.2f} points; {eval_frames} synthetic frames'
        if 'int8' in kind:
            note += f'; {_target(drop, drop <= 1.0, "<= 1 point")}'
        rows.append(Row('inference', f'mIoU {kind}', 100.0 * value, '%', None, note))

    # The targets, as ratios within this one run: each engine at its faster thread count.
    def best(res: str, kind: str, key: str = 'p50') -> float:
        return min(results[(res, name)][key] for name in backends if name.startswith(kind))

    rows.append(
        Row('inference', f'default CPU engine (backend=auto): {default_kind}', float('nan'), '',
            None, default.selection)
    )  # fmt: skip
    ov_kinds = [kind for kind, *_ in kinds if kind.startswith('openvino')]
    for res in resolutions:
        ratio = best(res, 'onnxruntime fp32') / best(res, default_kind)
        rows.append(
            Row('inference', f'speedup default ({default_kind}) vs onnxruntime fp32, {res}',
                ratio, 'x', None, _target(ratio, ratio >= 1.5, '>= 1.5x') + ' (p50 end to end)')
        )  # fmt: skip
        if ov_kinds:
            fastest = min(ov_kinds, key=lambda k: best(res, k))
            ratio = best(res, fastest) / best(res, default_kind)
            rows.append(
                Row('inference', f'default vs fastest openvino ({fastest}), {res}', ratio, 'x',
                    None, _target(ratio, ratio >= 0.95, '>= 1x (5 % noise)'))
            )  # fmt: skip
        # CPU time of the 1-thread runs: the work itself, whatever else the machine runs.
        cpu = {k: results[(res, f'{k} 1T')]['cpu'] for k, *_ in kinds}
        rows.append(
            Row('inference', f'1-thread CPU ms/frame, {res}', cpu[default_kind], 'ms', None,
                '; '.join(f'{k} {v:.0f}' for k, v in cpu.items()))
        )  # fmt: skip
    fps = 1e3 / best(real, default_kind)
    rows.append(
        Row('inference', f'realtime end-to-end FPS ({default_kind}, {real})', fps, 'FPS', None,
            _target(fps, fps >= 30.0, '>= 30 FPS') + '; bgra8 frame in, full-frame ids out')
    )  # fmt: skip
    return rows


def bench_gpu(*, quick: bool = False) -> list[Row]:
    """The torch engine on a CUDA GPU: engine-only and whole-Segmenter p50 / p99 and FPS at
    800x600, batch 1 and 8, eager / CUDA graphs / torch.compile, next to the memory-traffic
    floor. The measurement is :func:`semseg_ros.gpu_check.benchmark` (``semseg gpu-check``
    runs the same); the model is :data:`BENCH_CHECKPOINT` when trained, else the same
    architecture with random weights (the time does not depend on them)."""
    import tempfile

    from semseg_ros import gpu_check

    cuda = gpu_check.cuda_facts()
    if not cuda['available']:
        note = f'skipped: no CUDA ({cuda["why"]}); run `semseg bench --only gpu` on a GPU'
        return [Row('gpu', 'torch cuda', float('nan'), 'ms', None, note)]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = BENCH_CHECKPOINT
        if not checkpoint.is_file():
            checkpoint = _random_bench_checkpoint(Path(tmp) / 'random.pt')
        result = gpu_check.benchmark(checkpoint, 'cuda', seconds=1.0 if quick else 5.0)
    device = cuda['devices'][0]['name']
    rows = []
    for case, row in result['rows'].items():
        if 'error' in row:
            rows.append(Row('gpu', case, float('nan'), 'ms', None, f'failed: {row["error"]}'))
            continue
        for part in ('engine', 'segmenter'):
            stats = row[part]
            note = (
                f'p99 {stats["p99_ms"]:.3f} ms, {stats["fps"]:.0f} FPS, first call '
                f'{row["first_call_s"]:.1f} s; 800x600; {device}'
            )
            rows.append(Row('gpu', f'{case} {part}', stats['p50_ms'], 'ms', None, note))
    floor = result.get('memory_floor')
    if floor:
        note = (
            f'{floor["frame_traffic_mb"]:.0f} MB per frame (FP16 weights + activations written '
            f'and read) at {floor["bandwidth_gb_s"]:.0f} GB/s measured'
        )
        rows.append(Row('gpu', 'memory-traffic floor', floor['floor_fps'], 'FPS',
                        None, note))  # fmt: skip
    for batch, ratio in result.get('compile_speedup_vs_cuda_graphs_engine_p50', {}).items():
        rows.append(Row('gpu', f'torch.compile vs CUDA graphs, engine p50, {batch}', ratio, 'x',
                        None, '> 1: torch.compile is faster'))  # fmt: skip
    return rows


def bench_cameras(*, quick: bool = False) -> list[Row]:
    """One semseg_node per camera, 1 vs 2 cameras at 20 Hz 800x600 (semseg_ros.bench_cameras)."""
    from semseg_ros.bench_cameras import bench_cameras as run

    return run(quick=quick)


def bench_threads(*, quick: bool = False) -> list[Row]:
    """The node's threads on this CPU: the real node (backend auto, the shipped model and
    params file) under 800x600 bgra8 at 30 Hz from a bridge-like publisher (the soak
    harness), for engine threads x OpenCV threads at 1 and all cores; the settings are
    interleaved in rounds so load from other work falls on all alike. numpy needs no
    setting: the per-frame path makes no BLAS call, and its element-wise ops run on the
    calling thread. The node's defaults (``threads``, ``opencv_threads``) should be the
    fastest row, within noise.
    """
    import os

    from semseg_ros.node.params import DEFAULT_ENGINE_THREADS, DEFAULT_OPENCV_THREADS
    from semseg_ros.soak import run_soak

    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    settings = [(engine, opencv) for engine in counts for opencv in counts]
    default = (DEFAULT_ENGINE_THREADS or cores, DEFAULT_OPENCV_THREADS or cores)
    if quick:
        settings = [default, (cores, cores) if default != (cores, cores) else (1, 1)]
    rounds, seconds = (1, 5.0) if quick else (2, 15.0)
    reports: dict[tuple[int, int], list[Any]] = {s: [] for s in settings}
    load = os.getloadavg()[0]
    for round_index in range(rounds):
        order = settings[round_index % len(settings) :] + settings[: round_index % len(settings)]
        for engine, opencv in order:
            params = {'backend': 'auto', 'device': 'cpu', 'threads': engine,
                      'opencv_threads': opencv}  # fmt: skip
            reports[(engine, opencv)].append(
                run_soak(seconds, warmup_s=seconds, node_params=params)
            )
    rows = [Row('threads', 'load average (1 min) at start', load, '', None,
                f'{cores} CPU threads; {rounds} x {seconds:.0f} s per setting')]  # fmt: skip
    processing = {}
    for setting, runs in reports.items():
        p50 = float(np.median([r.latency_ms['processing_p50'] for r in runs]))
        processing[setting] = p50
        hz = float(np.median([r.output_rate_hz for r in runs]))
        published = sum(r.counts.get('published', 0) for r in runs)
        cpu_ms = 1e3 * sum(r.node_cpu_s for r in runs) / max(1, published)
        e2e = float(np.median([r.latency_ms['stamp_to_publish_p50'] for r in runs]))
        note = (
            f'output {hz:.1f} Hz of 30; stamp-to-publish p50 {e2e:.1f} ms; node CPU '
            f'{cpu_ms:.0f} ms per published frame (all its threads)'
            + ('; the node default' if setting == default else '')
        )
        rows.append(
            Row('threads', f'engine {setting[0]} / OpenCV {setting[1]}: processing p50', p50,
                'ms', None, note)
        )  # fmt: skip
    best = min(processing, key=processing.get)
    ratio = processing[best] / processing[default] if default in processing else float('nan')
    rows.append(
        Row('threads', f'default (engine {default[0]} / OpenCV {default[1]}) vs the best '
            f'(engine {best[0]} / OpenCV {best[1]})', ratio, 'x', None,
            _target(ratio, ratio >= 0.95, '>= 1x (5 % noise)'))
    )  # fmt: skip
    return rows


SECTIONS: dict[str, Callable[..., list[Row]]] = {
    'labels': bench_labels,
    'synth': bench_synth,
    'transport': bench_transport,
    'inference': bench_inference,
    'gpu': bench_gpu,
    'cameras': bench_cameras,
    'threads': bench_threads,
}


def format_table(rows: list[Row]) -> str:
    header = ('section', 'case', 'median', 'p90', 'unit', 'note')
    cells = [
        (r.section, r.case, f'{r.median:.2f}', '' if r.p90 is None else f'{r.p90:.2f}', r.unit,
         r.note)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    line = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [line.format(*header), line.format(*('-' * w for w in widths))]
    out += [line.format(*c) for c in cells]
    return '\n'.join(out)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--only', help=f'comma-separated sections of: {", ".join(SECTIONS)}')
    parser.add_argument('--out', type=Path, default=Path('runs/bench'), help='JSON output folder')
    parser.add_argument('--quick', action='store_true', help='few repeats (a smoke run)')
    parser.add_argument(
        '--model', type=Path, help='inference: this FP32 ONNX (default: the shipped model)'
    )
    parser.add_argument(
        '--random-weights',
        action='store_true',
        help='inference: the default CPU architecture with random weights (or the checkpoint '
        f'{BENCH_CHECKPOINT} when trained), exported here',
    )
    args = parser.parse_args(argv)
    names = args.only.split(',') if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f'unknown section(s) {unknown}; choose from {list(SECTIONS)}')

    INFERENCE_MODEL.update(model=args.model, random_weights=args.random_weights)
    rows: list[Row] = []
    for name in names:
        print(f'[bench] {name} ...', file=sys.stderr, flush=True)
        rows += SECTIONS[name](quick=args.quick)
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / 'bench.json'
    machine = {'python': platform.python_version(), 'machine': platform.machine()}
    path.write_text(json.dumps({'machine': machine, 'rows': [asdict(r) for r in rows]}, indent=2))
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
