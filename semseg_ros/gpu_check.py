"""``semseg gpu-check``: the one prepared run that proves the GPU path on a CUDA machine.

Run from a working tree with any Python that has a CUDA build of torch (the project's own
install is not needed; what is missing is reported, never a crash)::

    python -m semseg_ros.cli gpu-check --out runs/gpu_check      # or: make gpu-check

It writes ``OUT/gpu_check.json`` (every step: status ok / failed / skipped, seconds, what
it measured or why it did not run) and ``OUT/gpu_check.log``, in about 8 to 10 minutes on
one GPU (torch.compile's compilations are the part not yet timed on one). Steps, in order:

1. inventory: Python, platform, package versions (or why each one is missing),
   ``nvidia-smi``, torch's CUDA devices;
2. ``pytest -m gpu`` (the GPU tests of the suite);
3. a 2-minute ``gpu.yaml`` training run on synthetic data with AMP (40 steps, then resumed
   from last.pt to 60), exported to ONNX (its checkpoint and ONNX feed the next steps);
4. ids agreement on rendered frames: torch CUDA FP32 / FP16 / channels_last / CUDA graphs /
   ``torch.compile(mode='reduce-overhead')``, with the frame path on the device, against
   CPU onnxruntime (>= 99.9 % of pixels);
5. a threaded call: the Segmenter driven from a worker thread (as the node does);
6. the benchmark rows: engine-only and whole-Segmenter p50 / p99 latency and FPS at 800x600,
   batch 1 and 8, FP16 channels_last eager, with the manual CUDA graphs and with
   ``torch.compile(mode='reduce-overhead')``, next to the memory-traffic floor (weights +
   activations / bandwidth); ``semseg bench --only gpu`` prints the same rows;
7. where tensorrt imports: TensorRT's ONNX parser on the exported model and on the shipped
   ``models/semseg_demo.onnx`` (torch's dynamic ``Pad`` form), no build: the parser's errors
   per node, the network's outputs and the layers of the ``Pad`` and of the ``ArgMax ->
   Cast<uint8>`` tail (issue 17, finding 7);
8. where tensorrt and pycuda import: the TensorRT tests (build, ids agreement, the refusal of
   an engine built for another GPU).

Without a CUDA GPU it writes the inventory, says so and exits at once (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('torch', 'numpy', 'cv2', 'yaml', 'onnx', 'onnxruntime', 'pytest', 'tensorrt', 'pycuda')
ID_AGREEMENT = 0.999
NO_GPU_EXIT = 2


class Report:
    """The JSON report and the log, written after every step (a killed run keeps them)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.json_path = out / 'gpu_check.json'
        self.log_path = out / 'gpu_check.log'
        self.data: dict[str, Any] = {'started': time.strftime('%Y-%m-%dT%H:%M:%S'), 'steps': {}}
        self._log = self.log_path.open('w')

    def log(self, line: str) -> None:
        print(line, flush=True)
        self._log.write(line + '\n')
        self._log.flush()

    def save(self) -> None:
        tmp = self.json_path.with_suffix('.json.tmp')
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + '\n')
        tmp.replace(self.json_path)

    def step(self, name: str, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one step; its result (or the traceback) goes in the report either way."""
        self.log(f'--- {name}')
        start = time.perf_counter()
        try:
            result = func()
            result.setdefault('status', 'ok')
        except Skip as why:
            result = {'status': 'skipped', 'why': str(why)}
        except Exception as err:
            result = {'status': 'failed', 'error': repr(err), 'traceback': traceback.format_exc()}
        result['seconds'] = round(time.perf_counter() - start, 2)
        self.data['steps'][name] = result
        self.log(json.dumps({k: v for k, v in result.items() if k != 'traceback'}, default=str))
        if 'traceback' in result:
            self.log(result['traceback'])
        self.save()
        return result


class Skip(Exception):  # noqa: N818 - reads as `raise Skip('why')`
    """A step that cannot run here; the message says why."""


def inventory() -> dict[str, Any]:
    """Python, platform, package versions (or the import error), nvidia-smi, torch's GPUs."""
    packages: dict[str, str] = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            packages[name] = str(getattr(module, '__version__', 'present'))
        except Exception as err:
            packages[name] = f'missing: {err!r}'
    result: dict[str, Any] = {
        'python': sys.version.split()[0],
        'executable': sys.executable,
        'platform': platform.platform(),
        'cpus': os.cpu_count(),
        'packages': packages,
        'root': str(ROOT),
    }
    smi = shutil.which('nvidia-smi')
    if smi:
        query = '--query-gpu=name,driver_version,memory.total,compute_cap'
        done = subprocess.run(
            [smi, query, '--format=csv,noheader'], capture_output=True, text=True, timeout=30
        )
        result['nvidia_smi'] = (done.stdout or done.stderr).strip()
    result['cuda'] = cuda_facts()
    return result


def cuda_facts() -> dict[str, Any]:
    """What torch sees: ``{'available': False, 'why': ...}`` or the devices."""
    try:
        import torch
    except Exception as err:
        return {'available': False, 'why': f'torch does not import: {err!r}'}
    if not torch.cuda.is_available():
        why = 'this torch has no CUDA' if torch.version.cuda is None else 'torch sees no GPU'
        return {'available': False, 'why': why, 'torch': torch.__version__}
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                'name': props.name,
                'capability': f'{props.major}.{props.minor}',
                'memory_gib': round(props.total_memory / 2**30, 1),
            }
        )
    return {
        'available': True,
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'cudnn': torch.backends.cudnn.version(),
        'devices': devices,
    }


def _run(cmd: list[str], log: Callable[[str], None], timeout: float) -> dict[str, Any]:
    log('$ ' + ' '.join(cmd))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])
    )
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b'')[-4000:]
        return {'status': 'failed', 'error': f'timed out after {timeout} s', 'tail': str(tail)}
    output = done.stdout + done.stderr
    for line in output.splitlines()[-40:]:
        log('  ' + line)
    return {
        'status': 'ok' if done.returncode == 0 else 'failed',
        'returncode': done.returncode,
        'tail': output[-4000:],
    }


def gpu_tests(log: Callable[[str], None]) -> dict[str, Any]:
    """``pytest -m gpu`` on the suite (needs pytest and the test dependencies)."""
    if importlib.util.find_spec('pytest') is None:
        raise Skip('pytest is not installed here')
    cmd = [sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider', 'test']
    return _run(cmd, log, timeout=240)


def train_resume_export(out: Path, log: Callable[[str], None], seconds: float) -> dict[str, Any]:
    """~``seconds`` of ``gpu.yaml`` (AMP, channels_last) on synthetic data, resumed, exported."""
    run = out / 'train'
    data = out / 'data'
    from semseg_ros.training_half import module_name

    common = [
        sys.executable, '-m', module_name('train'), '--config', 'gpu', '--out', str(run),
        '--no-progress', '--set', f'data.data_dir={data}', 'data.synthetic.frames=120',
        'data.split=random', 'data.split_sizes=[0.8,0.1,0.1]', 'data.num_workers=4',
        'data.input_size=[800,600]', 'train.batch_size=8', 'train.checkpoint_every_steps=20',
        'train.image_every=0', 'train.val_every=0',
    ]  # fmt: skip
    first = _run([*common, 'train.max_steps=40'], log, timeout=seconds * 0.6)
    if first['status'] != 'ok':
        return {'status': 'failed', 'stage': 'train', **first}
    second = _run([*common, 'train.max_steps=60', '--resume'], log, timeout=seconds * 0.4)
    if second['status'] != 'ok':
        return {'status': 'failed', 'stage': 'resume', **second}
    checkpoint = run / 'best.pt' if (run / 'best.pt').is_file() else run / 'last.pt'
    onnx = out / 'model.onnx'
    cmd = [sys.executable, '-m', module_name('export'), '--checkpoint', str(checkpoint)]
    third = _run([*cmd, '--out', str(onnx)], log, timeout=120)
    if third['status'] != 'ok':
        return {'status': 'failed', 'stage': 'export', **third}
    return {'checkpoint': str(checkpoint), 'onnx': str(onnx)}


def rendered_frames(count: int, size: tuple[int, int] = (800, 600)) -> list[Any]:
    """``count`` synthetic CARLA-like bgra8 frames (the training half's renderer)."""
    import cv2

    from semseg_ros.training_half import training_module

    render_frame = training_module('data.synthetic').render_frame
    frames = []
    for index in range(count):
        rgb = render_frame(0, index)[0]  # (600, 800, 3) uint8 RGB
        if rgb.shape[1::-1] != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        frames.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    return frames


def torch_segmenter(checkpoint: str | Path, device: str, **options: Any) -> Any:
    """A :class:`~semseg_ros.segmenter.Segmenter` on the torch engine of ``checkpoint``,
    built directly so that every :class:`TorchEngine` option (``torch_compile`` too) applies.
    """
    from semseg_ros.engines.torch_engine import TorchEngine, load_checkpoint_model
    from semseg_ros.segmenter import Segmenter

    model, info = load_checkpoint_model(checkpoint)
    return Segmenter(TorchEngine(model, info, device=device, **options))


def agreement(checkpoint: str | Path, onnx: str | Path | None, device: str) -> dict[str, Any]:
    """Ids of the torch device path (FP32, FP16, channels_last, CUDA graphs) vs CPU ids.

    The reference is onnxruntime on the CPU with the exported ONNX (the CPU frame path);
    without onnxruntime or an ONNX, torch FP32 on the CPU.
    """
    import numpy as np

    from semseg_ros.segmenter import Segmenter

    frames = rendered_frames(4)
    try:
        ref = Segmenter.from_model(onnx, backend='onnxruntime', device='cpu') if onnx else None
    except Exception:
        ref = None
    reference = 'onnxruntime cpu'
    if ref is None:
        ref, reference = (
            Segmenter.from_model(checkpoint, backend='torch', device='cpu'),
            'torch cpu',
        )
    expected = [ref.segment(f, encoding='bgra8').ids for f in frames]
    on_gpu = device != 'cpu'
    variants = {'fp32': {}, 'channels_last': {'channels_last': True}}
    if on_gpu:
        variants |= {
            'fp16': {'fp16': True},
            'fp16_channels_last_graphs': {
                'fp16': True,
                'channels_last': True,
                'cuda_graphs': True,
            },
            'fp16_channels_last_compile': {
                'fp16': True,
                'channels_last': True,
                'torch_compile': True,
            },
        }
    result: dict[str, Any] = {'reference': reference, 'frames': len(frames), 'variants': {}}
    for name, options in variants.items():
        seg = torch_segmenter(checkpoint, device, frames_on_device=True, **options)
        got = [seg.segment(f, encoding='bgra8').ids for f in frames]
        same = np.mean([np.mean(a == b) for a, b in zip(got, expected, strict=True)])
        result['variants'][name] = round(float(same), 6)
    worst = min(result['variants'].values())
    result['status'] = 'ok' if worst >= ID_AGREEMENT else 'failed'
    return result


def threaded_call(checkpoint: str | Path, device: str) -> dict[str, Any]:
    """The Segmenter built on this thread and called from a worker thread (as the node does)."""
    import numpy as np

    from semseg_ros.segmenter import Segmenter

    seg = Segmenter.from_model(checkpoint, backend='torch', device=device)
    frame = rendered_frames(1)[0]
    here = seg.segment(frame, encoding='bgra8').ids
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box['ids'] = seg.segment(frame, encoding='bgra8').ids
        except Exception as err:
            box['error'] = repr(err)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(120)
    if 'error' in box:
        return {'status': 'failed', 'error': box['error']}
    return {'same_ids': bool(np.array_equal(box.get('ids'), here))}


def _timed(call: Callable[[], Any], sync: Callable[[], None], seconds: float) -> dict[str, float]:
    import numpy as np

    for _ in range(5):
        call()
    sync()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 10:
        start = time.perf_counter()
        call()
        sync()
        samples.append(time.perf_counter() - start)
    p50, p99 = np.percentile(samples, [50, 99])
    return {'p50_ms': round(p50 * 1e3, 3), 'p99_ms': round(p99 * 1e3, 3), 'runs': len(samples)}


def memory_floor(model: Any, size: tuple[int, int], bytes_per_value: int) -> dict[str, float]:
    """Bytes a frame must move at least: weights once + every activation written and read."""
    import torch

    activations = 0

    def hook(module: Any, inputs: Any, output: Any) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor) and not list(module.children()):
            activations += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        weight = next(model.parameters())
        with torch.inference_mode():
            model(torch.zeros(1, 3, size[1], size[0], device=weight.device, dtype=weight.dtype))
    finally:
        for handle in handles:
            handle.remove()
    weights = sum(p.numel() for p in model.parameters())
    total = (2 * activations + weights) * bytes_per_value
    return {'weights_mb': weights * bytes_per_value / 1e6, 'frame_traffic_mb': total / 1e6}


def _sync(device: str) -> Callable[[], None]:
    """Waits for the device's queued work: ``torch.cuda.synchronize`` on CUDA, else nothing."""
    import torch

    return torch.cuda.synchronize if device.startswith('cuda') else lambda: None


def device_bandwidth(device: str, megabytes: int = 256) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    import torch

    sync = _sync(device)
    a = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync()
    start = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    sync()
    return 2 * a.numel() * 20 / (time.perf_counter() - start)


#: The benchmark's torch engine variants: FP16 channels_last eager, then the two ways of
#: replaying it from CUDA graphs (the manual capture and torch.compile's reduce-overhead).
BENCH_VARIANTS: dict[str, dict[str, bool]] = {
    'fp16_channels_last': {'fp16': True, 'channels_last': True},
    'fp16_channels_last_graphs': {'fp16': True, 'channels_last': True, 'cuda_graphs': True},
    'fp16_channels_last_compile': {'fp16': True, 'channels_last': True, 'torch_compile': True},
}
BENCH_BATCHES = (1, 8)


def benchmark(
    checkpoint: str | Path,
    device: str,
    seconds: float = 5.0,
    variants: dict[str, dict[str, bool]] | None = None,
    size: tuple[int, int] = (800, 600),
) -> dict[str, Any]:
    """Engine-only and whole-Segmenter latency / FPS at 800x600, batch 1 and 8, for each of
    :data:`BENCH_VARIANTS`, and the memory-traffic floor of the model.

    Engine-only: a (N, 3, 600, 800) tensor already on the device to (N, 600, 800) uint8 ids
    on the device. Whole Segmenter: N bgra8 frames in host memory to ids in host memory (the
    device frame path: upload, preprocessing, model, argmax, restore, download).
    ``first_call_s`` is the first call's time at each batch size (a CUDA graph capture or a
    torch.compile compilation). A variant that fails is reported with its error; the others
    still run. The same code runs on the CPU (the suite checks it there at a small ``size``,
    (width, height)).
    """
    import torch

    from semseg_ros.pipeline import InputSpec
    from semseg_ros.segmenter import Segmenter

    rows: dict[str, Any] = {}
    width, height = size
    frames = rendered_frames(max(BENCH_BATCHES), size)
    sync = _sync(device)
    floor_model = None
    for variant, options in (variants or BENCH_VARIANTS).items():
        try:
            seg = torch_segmenter(checkpoint, device, **options)
            spec = InputSpec(size, normalization=seg.input_spec.normalization)
            seg = Segmenter(seg.engine, input_spec=spec)  # frame size in, no crop or resize
            if floor_model is None:
                floor_model = seg.engine.model
            for batch in BENCH_BATCHES:
                x = torch.zeros(batch, 3, height, width, device=device)
                with torch.inference_mode():
                    start = time.perf_counter()
                    seg.engine._ids(x)
                    sync()
                    first = time.perf_counter() - start
                    engine = _timed(lambda x=x, s=seg: s.engine._ids(x), sync, seconds)
                engine['fps'] = round(batch * 1e3 / engine['p50_ms'], 1)
                chunk = frames[:batch]
                whole = _timed(
                    lambda c=chunk, s=seg: s.segment_batch(c, encoding='bgra8'),
                    lambda: None,
                    seconds,
                )
                whole['fps'] = round(batch * 1e3 / whole['p50_ms'], 1)
                rows[f'{variant} batch {batch}'] = {
                    'engine': engine, 'segmenter': whole, 'first_call_s': round(first, 2)
                }  # fmt: skip
            seg.engine.close()
        except Exception as err:
            rows[variant] = {'error': repr(err), 'traceback': traceback.format_exc()[-2000:]}
    result: dict[str, Any] = {'rows': rows}
    if floor_model is not None:
        floor = memory_floor(floor_model, size, 2)
        bandwidth = device_bandwidth(device, 256 if device.startswith('cuda') else 16)
        floor['bandwidth_gb_s'] = round(bandwidth / 1e9, 1)
        floor['floor_fps'] = round(bandwidth / (floor['frame_traffic_mb'] * 1e6), 1)
        result['memory_floor'] = floor
    best = rows.get('fp16_channels_last_graphs batch 1')
    if best is not None:
        result['targets_met'] = {
            'engine_fps >= 3000': best['engine']['fps'] >= 3000,
            'segmenter_fps >= 1000': best['segmenter']['fps'] >= 1000,
        }
    comparison = {}
    for batch in BENCH_BATCHES:
        graphs = rows.get(f'fp16_channels_last_graphs batch {batch}')
        compiled = rows.get(f'fp16_channels_last_compile batch {batch}')
        if graphs and compiled:
            ratio = graphs['engine']['p50_ms'] / compiled['engine']['p50_ms']
            comparison[f'batch {batch}'] = round(ratio, 3)
    if comparison:  # > 1: torch.compile is faster than the manual CUDA graph
        result['compile_speedup_vs_cuda_graphs_engine_p50'] = comparison
    if not any('engine' in row for row in rows.values()):
        result['status'] = 'failed'
    return result


SHIPPED_ONNX = ROOT / 'models' / 'semseg_demo.onnx'
#: Layers worth seeing in a parsed network: the padding and the ids tail (ArgMax -> Cast).
PARSE_LAYERS = ('pad', 'ids_argmax', 'ids_cast')


def _parser_error(error: Any) -> dict[str, Any]:
    """One ``trt.ParserError`` as plain data (the per-node fields where this TensorRT has them)."""
    out: dict[str, Any] = {'desc': str(error.desc()), 'code': str(error.code())}
    for key, attr in (('node', 'node'), ('node_name', 'node_name'), ('operator', 'node_operator'),
                      ('file', 'file'), ('line', 'line'), ('function', 'func')):  # fmt: skip
        getter = getattr(error, attr, None)
        if callable(getter):
            try:
                out[key] = getter()
            except Exception as err:  # a field this version cannot give
                out[key] = f'unavailable: {err!r}'
    return out


def parse_onnx(trt: Any, path: Path) -> dict[str, Any]:
    """TensorRT's ONNX parser on ``path`` (no engine build), once per network mode (weakly
    typed, and strongly typed where this TensorRT has it): parsed or not, the parser's errors
    with the node each one is about, the network's outputs, and the Pad / ArgMax / Cast
    layers; plus the ONNX's own Pad facts (``pad_inputs`` of the training half's ``export``)."""
    result: dict[str, Any] = {'path': str(path)}
    try:
        from semseg_ros.training_half import training_module

        result['onnx_pads'] = training_module('export').pad_inputs(path)
    except Exception as err:
        result['onnx_pads'] = f'not inspected: {err!r}'
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = trt.NetworkDefinitionCreationFlag
    base = 0  # explicit batch is the only mode since TensorRT 10
    if int(trt.__version__.split('.')[0]) < 10 and hasattr(flag, 'EXPLICIT_BATCH'):
        base = 1 << int(flag.EXPLICIT_BATCH)
    modes = {'weakly_typed': base}
    if hasattr(flag, 'STRONGLY_TYPED'):
        modes['strongly_typed'] = base | 1 << int(flag.STRONGLY_TYPED)
    data = path.read_bytes()
    for mode, flags in modes.items():
        try:
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            parsed = bool(parser.parse(data))
        except Exception as err:
            result[mode] = {'parsed': False, 'error': repr(err)}
            continue
        entry: dict[str, Any] = {
            'parsed': parsed,
            'errors': [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)],
        }
        if parsed:
            outputs = (network.get_output(i) for i in range(network.num_outputs))
            entry['outputs'] = [
                {'name': t.name, 'dtype': str(t.dtype), 'shape': str(t.shape)} for t in outputs
            ]
            layers = (network.get_layer(i) for i in range(network.num_layers))
            entry['layers'] = [
                {'name': layer.name, 'type': str(layer.type),
                 'output_dtype': str(layer.get_output(0).dtype)}
                for layer in layers
                if any(key in layer.name.lower() for key in PARSE_LAYERS)
            ]  # fmt: skip
        result[mode] = entry
    return result


def tensorrt_parse(models: dict[str, str | Path]) -> dict[str, Any]:
    """:func:`parse_onnx` on each of ``models`` (label -> ONNX path) where tensorrt imports
    (pycuda is not needed to parse). Fails when the exported model does not parse; the shipped
    model's result (torch's dynamic Pad form) is information."""
    try:
        import tensorrt as trt
    except Exception as err:
        raise Skip(f'tensorrt does not import: {err!r}') from err
    result: dict[str, Any] = {'tensorrt': trt.__version__, 'models': {}}
    for label, path in models.items():
        if not Path(path).is_file():
            result['models'][label] = {'path': str(path), 'missing': True}
            continue
        result['models'][label] = parse_onnx(trt, Path(path))
    exported = result['models'].get('exported')
    if exported is None:
        result['note'] = 'no exported model (see the training step): only the shipped one parsed'
    elif not all(
        exported[mode]['parsed'] for mode in ('weakly_typed', 'strongly_typed') if mode in exported
    ):
        result['status'] = 'failed'
    return result


def tensorrt_tests(log: Callable[[str], None]) -> dict[str, Any]:
    """The TensorRT tests of the suite (build, ids agreement, another GPU refused)."""
    for name in ('tensorrt', 'pycuda.driver'):
        try:
            importlib.import_module(name)
        except Exception as err:
            raise Skip(f'{name} does not import: {err!r}') from err
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-k', 'tensorrt']
    return _run([*cmd, 'test/test_engines.py'], log, timeout=240)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('runs/gpu_check'), help='report folder')
    parser.add_argument(
        '--train-seconds', type=float, default=150, help='budget of the training step'
    )
    parser.add_argument('--skip-train', action='store_true', help='no training run')
    parser.add_argument('--skip-tests', action='store_true', help='no pytest -m gpu')
    args = parser.parse_args(argv)
    report = Report(args.out)
    started = time.perf_counter()
    facts = report.step('inventory', inventory)
    cuda = facts.get('cuda', {})
    if not cuda.get('available'):
        report.data['result'] = 'no-gpu'
        report.save()
        report.log(
            f'no CUDA GPU here ({cuda.get("why")}): nothing to check; see {report.json_path}'
        )
        return NO_GPU_EXIT
    if not args.skip_tests:
        report.step('pytest -m gpu', lambda: gpu_tests(report.log))
    model: dict[str, Any] = {}
    if not args.skip_train:
        model = report.step(
            'train gpu.yaml (AMP, resume, export)',
            lambda: train_resume_export(args.out, report.log, args.train_seconds),
        )
    checkpoint, onnx = model.get('checkpoint'), model.get('onnx')
    if checkpoint is None:
        report.log('no trained checkpoint: the next steps are skipped (see the training step)')
    else:
        report.step('ids agreement vs CPU', lambda: agreement(checkpoint, onnx, 'cuda'))
        report.step('threaded call', lambda: threaded_call(checkpoint, 'cuda'))
        report.step('benchmark', lambda: benchmark(checkpoint, 'cuda'))
    parse: dict[str, str | Path] = {'shipped models/semseg_demo.onnx': SHIPPED_ONNX}
    if onnx is not None:
        parse = {'exported': onnx, **parse}
    report.step('tensorrt parse', lambda: tensorrt_parse(parse))
    report.step('tensorrt', lambda: tensorrt_tests(report.log))
    failed = [n for n, s in report.data['steps'].items() if s['status'] == 'failed']
    report.data['result'] = 'failed' if failed else 'ok'
    report.data['failed'] = failed
    report.data['seconds'] = round(time.perf_counter() - started, 1)
    report.save()
    report.log(
        f'gpu-check {report.data["result"]} in {report.data["seconds"]} s: {report.json_path}'
    )
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
