"""OpenVINO backend: the CPU runtime that runs this UNet fastest on x86 (see ``make bench``).

The user points at the FP32 ``.onnx``; the engine runs it as is (OpenVINO's own default
inference precision: bf16 on CPUs with AMX / AVX512-BF16, else fp32) or, for
``precision='int8'``, the OpenVINO IR next to it (``model.openvino-int8.xml`` / ``.bin``,
post-training quantized with NNCF on training frames by ``semseg export --openvino-int8``).
The IR carries the ONNX file's semseg_ros metadata and the sha256 of the ONNX it was made
from in its ``rt_info``; an IR made from another ONNX is refused (re-export it).

Two graph edits at load, both exact (the same ids as the graph's ``ids`` output):

* the class ids are computed before the trailing pixel-gathering ops (nearest upsampling,
  the crop of the padding): argmax commutes with them, so it runs on 1/4 of the pixels;
* the argmax is ReduceMax + Equal + a first-maximum pick instead of OpenVINO's TopK, which
  costs more than the whole network at 800x600.

``infer_ids`` runs a compiled model with the ids output alone (no logits written out);
``infer_ids_and_confidence`` one with ids and confidence, the same edit (compiled on first use).

Compiled models are cached (OpenVINO's ``CACHE_DIR``) in a folder keyed by the OpenVINO
version and the CPU (:func:`cache_dir_for`), with a ``cache.json`` stamp; a folder whose
stamp names another version or CPU, or whose blobs fail to load, is emptied and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from semseg_ros.engines.base import BackendUnavailableError, Engine, EngineError
from semseg_ros.model_file import CONFIDENCE_OUTPUT_NAME, IDS_OUTPUT_NAME, ModelInfo

#: rt_info key of the IR's semseg_ros metadata (the ONNX metadata_props, as a JSON object).
RT_INFO_KEY = 'semseg_ros'
IR_SUFFIX = '.xml'
#: Ops that move or drop pixels without computing on them: argmax commutes with them.
_PIXEL_GATHER = ('Slice', 'StridedSlice', 'Interpolate')


def openvino_available() -> tuple[bool, str]:
    """(True, '') when ``openvino`` imports, else (False, why and how to install it)."""
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        return False, f'openvino is not installed ({err}): pip install semseg_ros[openvino]'
    return True, ''


def openvino_int8_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.openvino-int8.xml`` (its weights in ``.bin`` beside it)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f'{onnx_path.stem}.openvino-int8{IR_SUFFIX}')


def read_ir_metadata(xml_path: str | Path) -> dict[str, Any]:
    """The semseg_ros block of an IR's rt_info: ``{'metadata': {...}, 'onnx_sha256': ...}``."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    if not model.has_rt_info(RT_INFO_KEY):
        return {}
    return json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))


def int8_ir_for(info: ModelInfo) -> tuple[Path | None, str]:
    """The INT8 IR made from ``info``'s ONNX, if present and current: (path, '') or
    (None, why not)."""
    xml = openvino_int8_path(info.path)
    if not xml.is_file():
        return None, f'no {xml.name} (make it: semseg export --onnx {info.path} --openvino-int8)'
    try:
        made_from = read_ir_metadata(xml).get('onnx_sha256')
    except (RuntimeError, ValueError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        return None, f'{xml} is unreadable ({lines[-1] if lines else err}); re-export it'
    if made_from != info.sha256:
        return None, f'{xml.name} was made from another {info.path.name}; re-export it'
    return xml, ''


def _cpu_tag(core: Any) -> str:
    """The CPU's name and a hash of its feature flags: a compiled blob is only valid on it."""
    name = str(core.get_property('CPU', 'FULL_DEVICE_NAME'))
    flags = ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                flags = line
                break
    except OSError:
        pass
    slug = re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')[:40] or 'cpu'
    return f'{slug}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}'


def cache_dir_for(core: Any, root: str | Path | None = None) -> Path:
    """``ROOT/ov<version>-<cpu tag>`` (ROOT: ``$SEMSEG_OPENVINO_CACHE`` or
    ``~/.cache/semseg_ros/openvino``)."""
    import openvino as ov

    if root is None:
        root = os.environ.get('SEMSEG_OPENVINO_CACHE') or (
            Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache')
            / 'semseg_ros'
            / 'openvino'
        )
    version = re.sub(r'[^A-Za-z0-9.]+', '_', ov.get_version().split('-')[0])
    return Path(root) / f'ov{version}-{_cpu_tag(core)}'


def _cache_stamp(core: Any) -> dict[str, str]:
    import openvino as ov

    return {'openvino': ov.get_version(), 'cpu': _cpu_tag(core)}


def prepare_cache(core: Any, folder: Path) -> Path:
    """Make ``folder`` a cache this OpenVINO on this CPU may trust: a missing or foreign
    ``cache.json`` stamp empties it first."""
    stamp = _cache_stamp(core)
    stamp_path = folder / 'cache.json'
    try:
        trusted = json.loads(stamp_path.read_text()) == stamp
    except (OSError, ValueError):
        trusted = False
    if not trusted:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        stamp_path.write_text(json.dumps(stamp) + '\n')
    return folder


def _fast_heads(model: Any, logits_name: str, *, confidence: bool = False) -> Any:
    """A model with the per-pixel heads of ``logits`` as its outputs: ``ids`` (N, H, W) uint8,
    the first maximum over channels, and with ``confidence`` also ``confidence`` (N, H, W)
    uint8, floor(255 x the largest softmax probability): the graph's own outputs, computed
    before the trailing pixel-gathering ops of ``logits`` and sent through them.

    Edits ``model`` in place (pass a copy of its own)."""
    import openvino as ov
    import openvino.opset13 as ops

    result = next(r for r in model.get_results() if logits_name in r.output(0).get_names())
    source = result.input_value(0)
    chain = []  # pixel-gathering nodes from the logits back up (data input 0)
    while source.get_node().get_type_name() in _PIXEL_GATHER:
        node = source.get_node()
        if node.get_type_name() == 'Interpolate' and node.get_attributes()['mode'] != 'nearest':
            break
        chain.append(node)
        source = node.input_value(0)
    classes = source.get_partial_shape()[1].get_length()
    axis = np.array([1], np.int64)
    best = ops.reduce_max(source, axis, keep_dims=True)
    # First maximum (the ArgMax contract): weight C..1 on the maxima, keep the largest.
    weight = ops.constant(np.arange(classes, 0, -1, dtype=np.float32).reshape(1, -1, 1, 1))
    picked = ops.select(ops.equal(source, best), weight, ops.constant(np.float32(0)))
    first = ops.reduce_max(picked, axis, keep_dims=True)  # (N, 1, h, w)
    heads = ops.subtract(ops.constant(np.float32(classes)), first).output(0)
    if confidence:  # the graph's Cast truncates: floor, then an exact conversion
        top = ops.reduce_max(ops.softmax(source, 1), axis, keep_dims=True)
        scaled = ops.floor(ops.multiply(top, ops.constant(np.float32(255))))
        heads = ops.concat([heads, scaled], 1).output(0)  # (N, 2, h, w): one gather for both
    if chain:  # feed the heads (N, 1 or 2, h, w) through the same gathering ops
        chain[-1].input(0).replace_source_output(heads)
        heads = result.input_value(0)
    names = [IDS_OUTPUT_NAME, CONFIDENCE_OUTPUT_NAME] if confidence else [IDS_OUTPUT_NAME]
    results = []
    for channel, name in enumerate(names):  # channel k of (N, k, H, W) -> (N, H, W) uint8
        head = ops.gather(heads, np.int64(channel), np.int64(1))
        out = ops.convert(head, 'u8')
        out.output(0).set_names({name})
        results.append(ops.result(out))
    return ov.Model(results, model.get_parameters(), 'semseg_heads')


def _logits_only(model: Any, logits_name: str) -> Any:
    import openvino as ov

    results = [r for r in model.get_results() if logits_name in r.output(0).get_names()]
    return ov.Model(results, model.get_parameters(), 'semseg_logits')


class OpenVINOEngine(Engine):
    """An OpenVINO ``CompiledModel`` on the CPU over the ONNX (FP32) or its INT8 IR.

    ``threads``: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, the physical cores).
    ``cache_dir``: the compiled-model cache root (None: see :func:`cache_dir_for`; False:
    no cache).
    """

    backend = 'openvino'

    def __init__(
        self,
        info: ModelInfo,
        *,
        precision: str = 'fp32',
        threads: int | None = None,
        cache_dir: str | Path | bool | None = None,
    ) -> None:
        super().__init__(info)
        ok, why = openvino_available()
        if not ok:
            raise BackendUnavailableError(why)
        import openvino as ov

        if precision not in ('fp32', 'int8'):
            raise ValueError(f"openvino precision must be 'fp32' or 'int8', got {precision!r}")
        if info.precision != 'fp32':
            msg = (
                f'backend openvino runs FP32 ONNX files (and their OpenVINO INT8 IR), not the '
                f'{info.precision} file {info.path}; pass the FP32 .onnx or use onnxruntime'
            )
            raise BackendUnavailableError(msg)
        source: Path = info.path
        if precision == 'int8':
            xml, why = int8_ir_for(info)
            if xml is None:
                raise BackendUnavailableError(f'openvino int8: {why}')
            source = xml
        self._precision = precision
        self.source = source
        self._core = core = ov.Core()
        config: dict[str, Any] = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1}
        if threads is not None:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        self.cache: Path | None = None
        if cache_dir is not False:
            root = None if cache_dir in (None, True) else cache_dir
            self.cache = prepare_cache(core, cache_dir_for(core, root))
        try:
            model = core.read_model(str(source))
            ids_model = _fast_heads(model, info.output_name)
            logits_model = _logits_only(core.read_model(str(source)), info.output_name)
            self._ids = self._compile(ids_model, config)
            self._logits = self._compile(logits_model, config)
        except (RuntimeError, StopIteration) as err:
            msg = f'OpenVINO cannot compile {source}: {str(err).strip().splitlines()[-1]}'
            raise EngineError(msg) from err
        self._ids_request = self._ids.create_infer_request()
        self._logits_request = self._logits.create_infer_request()
        self._config = config
        self._heads_request: Any = None  # ids + confidence, compiled on first use

    def _compile(self, model: Any, config: dict[str, Any]) -> Any:
        if self.cache is None:
            return self._core.compile_model(model, 'CPU', config)
        try:
            return self._core.compile_model(model, 'CPU', {**config, 'CACHE_DIR': str(self.cache)})
        except RuntimeError:
            # A blob this build cannot import (truncated, foreign): rebuild from scratch.
            shutil.rmtree(self.cache, ignore_errors=True)
            self.cache = prepare_cache(self._core, self.cache)
            return self._core.compile_model(model, 'CPU', {**config, 'CACHE_DIR': str(self.cache)})

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def device(self) -> str:
        hint = self._ids.get_property('INFERENCE_PRECISION_HINT')
        return f'CPU, {hint.to_string()} math'

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        with self._lock:
            return self._logits_request.infer({0: batch}, share_inputs=True)[0]

    def infer_ids(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        with self._lock:
            # A fresh array per call, as the interface promises for ids (callers keep them).
            return self._ids_request.infer({0: batch}, share_inputs=True)[0].copy()

    def infer_ids_and_confidence(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.info.confidence_output is None:  # the file has none: as the other engines
            return self.infer_ids(batch), None
        batch = self.check_batch(batch)
        with self._lock:
            if self._heads_request is None:
                heads = _fast_heads(
                    self._core.read_model(str(self.source)), self.info.output_name,
                    confidence=True,
                )  # fmt: skip
                self._heads_request = self._compile(heads, self._config).create_infer_request()
            outputs = self._heads_request.infer({0: batch}, share_inputs=True)
            return outputs[0].copy(), outputs[1].copy()

    def close(self) -> None:
        self._ids_request = self._logits_request = self._heads_request = None
