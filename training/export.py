"""``semseg export``: checkpoint -> self-describing ONNX (+ FP16, INT8 and TensorRT variants).

Exporter: the **TorchScript-based exporter** (``torch.onnx.export(..., dynamo=False)``),
chosen deliberately. The UNet pads its input to a multiple of ``2 ** depth`` with size
arithmetic on ``x.shape``; the tracer records that arithmetic as graph ops, so one graph
serves every height, width and batch size (checked below at a size other than the exported
one). The dynamo exporter (``torch.export``) cannot yet prove the padded sizes divisible
with dynamic H, W and would need a fixed-size graph per resolution. Opset 17 (the first
with ``LayerNormalization``, supported by onnxruntime >= 1.12 and TensorRT >= 8.6). The
padding exports as one ``Pad`` whose ``pads`` input is a Concat of 8 scalars computed from
the input's shape (:func:`_static_pads_symbolic`): a length known at parse time, which
onnx-tensorrt's importer wants, with every input size still served.

Outputs, all with float32 ``image`` (N, 3, H, W) in and float32 ``logits`` (N, C, H, W) out,
plus ``ids`` (N, H, W) uint8, the per-pixel argmax inside the graph (onnxruntime's ArgMax takes
a quarter of numpy's time on 800x600 logits, and a runtime reads back ids, not C float maps);
dynamic N, H, W, and the metadata of :mod:`semseg_ros.model_file`:

* ``MODEL.onnx``       FP32; verified with ``onnx.checker`` and onnxruntime vs torch
                       (max abs diff, argmax agreement) at another input size;
* ``MODEL.fp16.onnx``  (``--fp16``) FP16 weights and arithmetic, FP32 I/O, for GPUs
                       (TensorRT 11 takes its precision from it); argmax agreement vs FP32;
* ``MODEL.int8.onnx``  (``--int8``) static INT8 (QDQ, per-channel weights, uint8
                       activations) for CPUs, calibrated on training images, with the mIoU
                       of FP32 and INT8 on held-out frames;
* ``MODEL.<gpu>-...engine`` (``--tensorrt``) a TensorRT engine built and cached next to it.

CLI: ``semseg export --checkpoint runs/train/x/best.pt --out models/x.onnx --fp16 --int8``
or ``python -m training.export ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semseg_ros import __version__
from semseg_ros.cli import parse_args
from semseg_ros.labels import ClassSet
from semseg_ros.model_file import (
    CONFIDENCE_OUTPUT_NAME,
    IDS_OUTPUT_NAME,
    WEIGHTS_DIGEST_KEY,
    ModelFileError,
    ModelInfo,
    file_sha256,
    graph_digest,
    metadata_dict,
    read_model_info,
    sort_nodes_topologically,
)
from semseg_ros.pipeline import InputSpec, prepare
from semseg_ros.staged_output import (
    atomic_write_bytes,
    remove_stale_temporaries,
    temporary_for,
)

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint

DEFAULT_OPSET = 17
INPUT_NAME = 'image'
OUTPUT_NAME = 'logits'
#: An FP16 / INT8 model must pick the FP32 model's class on at least this share of pixels.
MIN_FP16_AGREEMENT = 0.99


class ExportError(RuntimeError):
    """Export or its verification failed; the message says what and how to fix it."""


# --- Checkpoint -> metadata ------------------------------------------------------------------


def provenance_of(checkpoint: Checkpoint, path: str | Path) -> dict[str, Any]:
    """Where a model came from: checkpoint, training config and data, metrics, tools."""
    config = checkpoint.train_config or {}
    data = config.get('data') if isinstance(config.get('data'), dict) else {}
    best = checkpoint.best_miou
    return {
        'checkpoint': str(path),
        'checkpoint_sha256': file_sha256(path),
        'epoch': checkpoint.epoch,
        'step': checkpoint.step,
        'best_miou': float(best) if np.isfinite(best) else None,
        'metrics': checkpoint.metrics,
        'train_config': config.get('name'),
        'dataset': {k: data.get(k) for k in ('data_dir', 'manifest', 'synthetic') if k in data},
        'model_config': checkpoint.model_config,
        'exporter': f'torch.onnx TorchScript exporter (dynamo=False), torch {torch.__version__}',
        'semseg_ros': __version__,
        'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
    }


# --- FP32 export + verification -------------------------------------------------------------


@dataclass
class Verification:
    """onnxruntime vs torch on one random input of ``shape``."""

    shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float
    tolerance: float
    #: The graph's ``ids`` output equals numpy's argmax of its ``logits`` on every pixel.
    ids_match: bool = True

    @property
    def ok(self) -> bool:
        close = self.max_abs_diff <= self.tolerance and self.argmax_agreement >= 0.9999
        return close and self.ids_match


def _verify_shape(spec: InputSpec, multiple: int) -> tuple[int, int, int, int]:
    """A batch-2 input whose size differs from the exported one and is not a padding multiple."""
    width, height = spec.input_size
    return 2, 3, height + multiple // 2 + 3, width - multiple // 2 + 5


def verify_onnx(
    model: torch.nn.Module, onnx_path: Path, shape: Sequence[int], *, tolerance: float = 1e-3
) -> Verification:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()  # (N, C, H, W)
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got, ids = session.run([OUTPUT_NAME, IDS_OUTPUT_NAME], {INPUT_NAME: x})
    if got.shape != expected.shape:
        msg = f'{onnx_path}: onnxruntime gives {got.shape}, torch {expected.shape} for {shape}'
        raise ExportError(msg)
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
    max_diff = float(np.abs(got - expected).max())
    ids_match = bool(np.array_equal(ids, got.argmax(1)))
    return Verification(tuple(shape), max_diff, agreement, tolerance, ids_match)


def add_ids_output(proto: Any) -> None:
    """Append ``ids = Cast<uint8>(ArgMax(logits, axis=1))`` as a second graph output (in place).

    ArgMax keeps the first maximum on ties, as numpy does. The INT8 quantizer leaves both ops
    in float (they follow the logits' dequantization), so every variant keeps this output.
    """
    from onnx import TensorProto, helper

    argmax = f'{IDS_OUTPUT_NAME}_int64'
    proto.graph.node.extend(
        [
            helper.make_node(
                'ArgMax', [OUTPUT_NAME], [argmax], name='ids_argmax', axis=1, keepdims=0
            ),
            helper.make_node(
                'Cast', [argmax], [IDS_OUTPUT_NAME], name='ids_cast', to=TensorProto.UINT8
            ),
        ]
    )
    proto.graph.output.append(
        helper.make_tensor_value_info(
            IDS_OUTPUT_NAME, TensorProto.UINT8, ['batch', 'height', 'width']
        )
    )


def add_confidence_output(proto: Any) -> None:
    """Append ``confidence`` as a graph output (in place): the largest class probability per
    pixel, (N, H, W) uint8, 255 = certain, truncated as numpy's ``astype`` does.

    The largest softmax probability is ``1 / sum(exp(logits - max(logits)))``: computed that
    way (no Softmax node) it costs onnxruntime ~2 ms at 384x288 instead of ~40 ms (a Softmax
    over the channel axis of NCHW is transposed there and back), with identical values. The
    engines run it only when asked (onnxruntime's engine drops it from the graph otherwise).
    """
    from onnx import TensorProto, helper

    opset = next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))
    axes = helper.make_tensor('confidence_axes', TensorProto.INT64, [1], [1])
    scale = helper.make_tensor('confidence_255', TensorProto.FLOAT, [], [255.0])
    proto.graph.initializer.extend([axes, scale])
    top, shifted, exp, total, scaled = (f'confidence_{n}' for n in ('max', 'shifted', 'exp',
                                                                     'sum', 'scaled'))  # fmt: skip
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        reduce_max = helper.make_node(
            'ReduceMax', [OUTPUT_NAME, axes.name], [top], name='confidence_reducemax', keepdims=1
        )
    else:
        reduce_max = helper.make_node(
            'ReduceMax', [OUTPUT_NAME], [top], name='confidence_reducemax', axes=[1], keepdims=1
        )
    proto.graph.node.extend(
        [
            reduce_max,
            helper.make_node('Sub', [OUTPUT_NAME, top], [shifted], name='confidence_sub'),
            helper.make_node('Exp', [shifted], [exp], name='confidence_exp'),
            helper.make_node(  # axes as an input from opset 13 on (exports are >= 17)
                'ReduceSum', [exp, axes.name], [total], name='confidence_reducesum', keepdims=0
            ),
            helper.make_node('Div', [scale.name, total], [scaled], name='confidence_div'),
            helper.make_node(
                'Cast', [scaled], [CONFIDENCE_OUTPUT_NAME], name='confidence_cast',
                to=TensorProto.UINT8,
            ),
        ]
    )  # fmt: skip
    proto.graph.output.append(
        helper.make_tensor_value_info(
            CONFIDENCE_OUTPUT_NAME, TensorProto.UINT8, ['batch', 'height', 'width']
        )
    )


def _static_pads_symbolic(g: Any, input: Any, pad: Any, mode: Any, value: Any) -> Any:
    """ONNX for ``aten::pad`` whose ``pads`` input has a static length (2 x rank).

    torch's own symbolic (``symbolic_opset11.pad``) builds ``pads`` as ``Concat(pad,
    ConstantOfShape(2 * rank - len(pad)))`` then reverses and transposes it: its length is
    only known when the graph runs, and onnx-tensorrt's Pad importer wants a pads tensor of
    known length. Here each of the traced pad amounts (computed from the input's shape, so
    every input size still works) is reshaped to (1,) and the 2 x rank of them concatenated
    in ONNX order (all begins, then all ends): a Concat of 8 scalars for NCHW. Anything
    else (an unknown rank, a pad list that is not a list of scalars, circular mode) takes
    torch's symbolic.
    """
    from torch.onnx import symbolic_helper, symbolic_opset11

    mode_name = symbolic_helper._parse_arg(mode, 's')
    rank = symbolic_helper._get_tensor_rank(input)
    onnx_mode = {'replicate': 'edge', 'reflect': 'reflect', 'constant': 'constant'}.get(mode_name)
    if onnx_mode is None or rank is None or not symbolic_helper._is_packed_list(pad):
        return symbolic_opset11.pad(g, input, pad, mode, value)
    amounts = symbolic_helper._unpack_list(pad)  # torch order: last dim (begin, end), ...
    if len(amounts) % 2 or len(amounts) > 2 * rank:
        return symbolic_opset11.pad(g, input, pad, mode, value)
    one = g.op('Constant', value_t=torch.tensor([1], dtype=torch.int64))
    zero = g.op('Constant', value_t=torch.tensor([0], dtype=torch.int64))
    begins, ends = [zero] * rank, [zero] * rank
    for k in range(len(amounts) // 2):
        dim = rank - 1 - k
        for side, amount in ((begins, amounts[2 * k]), (ends, amounts[2 * k + 1])):
            amount = g.op('Reshape', amount, one)  # () -> (1,)
            side[dim] = g.op('Cast', amount, to_i=torch.onnx.TensorProtoDataType.INT64)
    pads = g.op('Concat', *begins, *ends, axis_i=0)  # (2 * rank,) int64
    if onnx_mode != 'constant' or symbolic_helper._is_none(value):
        return g.op('Pad', input, pads, mode_s=onnx_mode)
    fill = symbolic_helper._if_scalar_type_as(symbolic_helper._maybe_get_scalar(value), input)
    return g.op('Pad', input, pads, fill, mode_s='constant')


def pad_inputs(onnx_path: str | Path) -> list[dict[str, Any]]:
    """Each ``Pad`` of a model and its ``pads`` input: the shape ONNX shape inference gives it
    (``[8]`` for NCHW when its length is static; a ``dim_param`` name when it is not) and the
    op types it is computed from (``ConstantOfShape`` in torch's dynamic form)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path))).graph
    producers = {out: node for node in graph.node for out in node.output}
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in graph.value_info}  # fmt: skip
    shapes |= {t.name: list(t.dims) for t in graph.initializer}
    found = []
    for pad in (node for node in graph.node if node.op_type == 'Pad'):
        ops, seen, todo = set(), set(), [pad.input[1]]
        while todo:  # every node upstream of the pads input
            name = todo.pop()
            if name in producers and name not in seen:
                seen.add(name)
                ops.add(producers[name].op_type)
                todo.extend(producers[name].input)
        found.append(
            {'node': pad.name, 'pads': pad.input[1],
             'pads_shape': shapes.get(pad.input[1], ['unknown']), 'computed_from': sorted(ops)}
        )  # fmt: skip
    return found


def _save_with_metadata(model_proto: Any, out: Path, meta: dict[str, str], doc: str) -> None:
    import onnx

    del model_proto.metadata_props[:]
    meta = {**meta, WEIGHTS_DIGEST_KEY: graph_digest(model_proto)}  # checked at every load
    for key, value in meta.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = 'semseg_ros'
    model_proto.producer_version = __version__
    model_proto.doc_string = doc
    onnx.checker.check_model(model_proto, full_check=True)
    write_model_file(model_proto, out)


def write_model_file(model_proto: Any, out: Path) -> None:
    """The one way an ONNX file is written here: whole or not at all (a node never loads
    half a model), after removing what killed writers of ``out`` left."""
    remove_stale_temporaries(out)
    atomic_write_bytes(out, model_proto.SerializeToString())


def export_onnx(
    checkpoint_path: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> tuple[ModelInfo, Verification | None]:
    """Export a checkpoint to ONNX with metadata; verify it at another input size.

    Returns the written model's :class:`ModelInfo` (read back from the file) and the
    verification. Raises :class:`ExportError` when the check fails.
    """
    import onnx

    if opset < 17:
        raise ExportError(f'opset {opset} is too old; use --opset 17 or newer')
    checkpoint_path, out = Path(checkpoint_path), Path(out)
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model('cpu')
    spec = checkpoint.get_input_spec()
    width, height = spec.input_size
    example = torch.zeros(1, 3, height, width)
    dynamic = {0: 'batch', 2: 'height', 3: 'width'}
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.with_name(out.name + '.export'))
    tmp = temporary_for(out.with_name(out.name + '.export'))
    with warnings.catch_warnings():
        # The legacy exporter is deliberate (see the module docstring); its notice is noise.
        warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export.*')
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*will be removed.*')
        # The static-length pads for onnx-tensorrt (see _static_pads_symbolic), for this
        # export only: the registration is global to the process.
        torch.onnx.register_custom_op_symbolic('aten::pad', _static_pads_symbolic, opset)
        try:
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
                do_constant_folding=True,
            )
        finally:
            torch.onnx.unregister_custom_op_symbolic('aten::pad', opset)
    try:
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    add_ids_output(proto)
    add_confidence_output(proto)
    class_set = checkpoint.get_class_set()
    meta = metadata_dict(
        class_set,
        spec,
        precision='fp32',
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        provenance=provenance_of(checkpoint, checkpoint_path),
    )
    doc = (
        f'semseg_ros UNet, {class_set.name} ({class_set.num_classes} classes), input '
        f'{width}x{height} after cropping rows {spec.crop_top}/{spec.crop_bottom}; '
        'image (N, 3, H, W) float32 normalized -> logits (N, C, H, W) float32'
    )
    _save_with_metadata(proto, out, meta, doc)
    verification = None
    if verify:
        verification = verify_onnx(model, out, _verify_shape(spec, model.config.size_multiple))
        if not verification.ok:
            msg = (
                f'{out}: onnxruntime and torch disagree at input {verification.shape}: max abs '
                f'diff {verification.max_abs_diff:.2e} (tolerance {verification.tolerance}), '
                f'argmax agreement {verification.argmax_agreement:.5f}, ids output equals '
                f'argmax: {verification.ids_match}'
            )
            raise ExportError(msg)
    return read_model_info(out), verification


def variant_path(onnx_path: str | Path, precision: str) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f'{onnx_path.stem}.{precision}{onnx_path.suffix}')


def _set_precision(proto: Any, precision: str, extra: dict[str, Any]) -> dict[str, str]:
    meta = {p.key: p.value for p in proto.metadata_props}
    meta['precision'] = precision
    provenance = json.loads(meta.get('provenance', '{}'))
    provenance.update(extra)
    meta['provenance'] = json.dumps(provenance, default=str)
    return meta


def _argmax_agreement(a: Path, b: Path, inputs: Iterable[np.ndarray]) -> float:
    import onnxruntime as ort

    sa = ort.InferenceSession(str(a), providers=['CPUExecutionProvider'])
    sb = ort.InferenceSession(str(b), providers=['CPUExecutionProvider'])
    same = total = 0
    for x in inputs:
        ia = sa.run(None, {INPUT_NAME: x})[0].argmax(1)
        ib = sb.run(None, {INPUT_NAME: x})[0].argmax(1)
        same += int(np.count_nonzero(ia == ib))
        total += ia.size
    return same / max(total, 1)


# --- FP16 -----------------------------------------------------------------------------------


def convert_fp16(onnx_path: str | Path, out: str | Path | None = None) -> tuple[Path, float]:
    """FP16 weights and arithmetic with FP32 I/O; returns (path, argmax agreement vs FP32).

    Uses onnxruntime's own converter (``onnxruntime.transformers.float16``), so no extra
    package. ``keep_io_types``: the runtime feeds and reads float32 either way.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else variant_path(onnx_path, 'fp16')
    info = read_model_info(onnx_path)
    proto = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    try:
        sort_nodes_topologically(proto.graph)
    except ValueError as err:
        raise ExportError(str(err)) from err
    meta = _set_precision(proto, 'fp16', {'fp16_from': onnx_path.name})
    _save_with_metadata(proto, out, meta, proto.doc_string + ' [FP16 weights, FP32 I/O]')
    width, height = info.input_spec.input_size
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, 3, height, width)).astype(np.float32) for _ in range(2)]
    return out, _argmax_agreement(onnx_path, out, inputs)


# --- INT8 -----------------------------------------------------------------------------------


def calibration_frames(
    checkpoint: Checkpoint, checkpoint_path: Path, count: int, split: str = 'train'
) -> tuple[list[np.ndarray], ClassSet]:
    """Up to ``count`` RGB frames of the checkpoint's training split, evenly spaced."""
    from .data.lyft import read_rgb
    from .evaluate import data_source_from_checkpoint, load_split

    source = data_source_from_checkpoint(checkpoint, checkpoint_path)
    if source is None:
        msg = (
            f'{checkpoint_path} records no training data location; INT8 calibration needs '
            'training images: pass --calibration-data DIR (a dataset folder or manifest)'
        )
        raise ExportError(msg)
    data = load_split(source, split)
    picks = np.linspace(0, len(data.samples) - 1, min(count, len(data.samples))).round()
    return [read_rgb(data.samples[int(i)].rgb) for i in picks], data.class_set


class _FrameReader:
    """onnxruntime's CalibrationDataReader protocol over prepared frames."""

    def __init__(self, frames: Sequence[np.ndarray], spec: InputSpec) -> None:
        self._iter = iter([{INPUT_NAME: prepare(f, spec)[None]} for f in frames])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - part of the protocol, unused by MinMax
        pass


def quantize_int8(
    onnx_path: str | Path, frames: Sequence[np.ndarray], out: str | Path | None = None
) -> Path:
    """Static INT8 (QDQ) quantization calibrated on ``frames`` (full RGB camera frames).

    Per-channel int8 weights, uint8 activations (the fast u8s8 kernels on x86), MinMax
    calibration on the same prepared input the runtime feeds.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else variant_path(onnx_path, 'int8')
    if not frames:
        raise ExportError('INT8 calibration needs at least one frame')
    info = read_model_info(onnx_path)
    pre = out.with_name(out.name + '.pre.tmp')
    raw = out.with_name(out.name + '.q.tmp')
    try:
        # Symbolic shape inference cannot resolve the padding arithmetic; ONNX's is enough.
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(raw),
            _FrameReader(frames, info.input_spec),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(raw))
    finally:
        pre.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
    extra = {'int8_from': onnx_path.name, 'int8_calibration_frames': len(frames)}
    meta = _set_precision(proto, 'int8', extra)
    _save_with_metadata(proto, out, meta, f'{proto.doc_string} [INT8 QDQ]'.strip())
    return out


def quantize_openvino_int8(
    onnx_path: str | Path, frames: Sequence[np.ndarray], out: str | Path | None = None
) -> Path:
    """OpenVINO INT8 IR of an FP32 ONNX, post-training quantized by NNCF on ``frames``
    (full RGB camera frames, prepared as the runtime prepares them).

    Written as ``MODEL.openvino-int8.xml`` / ``.bin`` next to the ONNX (the file the
    ``openvino`` engine looks for); its rt_info carries the ONNX metadata with precision
    ``int8`` and the ONNX's sha256, so a stale IR is recognised. NNCF's default (performance)
    preset: symmetric int8 weights and activations, the layout OpenVINO's int8 kernels want
    (onnxruntime's QDQ file runs slower in OpenVINO than the FP32 one).
    """
    import nncf
    import openvino as ov

    from semseg_ros.engines.openvino_engine import RT_INFO_KEY, openvino_int8_path
    from semseg_ros.model_file import read_onnx_metadata

    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else openvino_int8_path(onnx_path)
    if not frames:
        raise ExportError('INT8 calibration needs at least one frame')
    info = read_model_info(onnx_path)
    if info.precision != 'fp32':
        raise ExportError(f'{onnx_path} is {info.precision}: quantize the FP32 ONNX')
    inputs = [prepare(f, info.input_spec)[None] for f in frames]
    model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs))
    meta = read_onnx_metadata(onnx_path)
    meta['precision'] = 'int8'
    provenance = json.loads(meta.get('provenance', '{}'))
    provenance.update(
        {'int8_from': onnx_path.name, 'int8_calibration_frames': len(inputs),
         'int8_tool': f'nncf {nncf.__version__}, openvino {ov.get_version()}'}
    )  # fmt: skip
    meta['provenance'] = json.dumps(provenance, default=str)
    block = {'metadata': meta, 'onnx': onnx_path.name, 'onnx_sha256': info.sha256}
    quantized.set_rt_info(json.dumps(block), RT_INFO_KEY)
    # Saved in a temporary folder, then moved in: the .bin, then the .xml that names the ONNX
    # it was made from, so a kill never leaves half a file under a final name (nor a new
    # .xml with the old .bin).
    remove_stale_temporaries(out)  # what killed exports left
    tmp = temporary_for(out)  # .NAME.tmp-<pid>-<thread>/
    try:
        tmp.mkdir()
        ov.save_model(quantized, str(tmp / out.name), compress_to_fp16=False)
        os.replace(tmp / out.with_suffix('.bin').name, out.with_suffix('.bin'))
        os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class ExportReport:
    onnx: str
    verification: dict[str, Any] | None = None
    fp16: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def export_all(
    checkpoint_path: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    int8: bool = False,
    calibration: int = 32,
    eval_frames: int = 16,
    verify: bool = True,
) -> ExportReport:
    """The whole export: FP32 ONNX, then the requested FP16 / INT8 variants."""
    start = time.perf_counter()
    info, verification = export_onnx(checkpoint_path, out, opset=opset, verify=verify)
    report = ExportReport(str(info.path), None if verification is None else asdict(verification))
    report.seconds['onnx'] = time.perf_counter() - start
    if fp16:
        start = time.perf_counter()
        path, agreement = convert_fp16(info.path)
        report.fp16 = {'path': str(path), 'argmax_agreement_vs_fp32': agreement}
        report.seconds['fp16'] = time.perf_counter() - start
        if agreement < MIN_FP16_AGREEMENT:
            msg = f'{path}: FP16 argmax agrees with FP32 on only {agreement:.4f} of pixels'
            raise ExportError(msg)
    if int8:
        start = time.perf_counter()
        checkpoint = load_checkpoint(checkpoint_path)
        frames, _ = calibration_frames(checkpoint, Path(checkpoint_path), calibration)
        path = quantize_int8(info.path, frames)
        report.int8 = {'path': str(path), 'calibration_frames': len(frames)}
        if eval_frames > 0:
            report.int8.update(
                int8_miou_drop(checkpoint, Path(checkpoint_path), info.path, path, eval_frames)
            )
        report.seconds['int8'] = time.perf_counter() - start
    return report


def int8_miou_drop(
    checkpoint: Checkpoint, checkpoint_path: Path, fp32: Path, int8: Path, frames: int
) -> dict[str, Any]:
    """FP32 and INT8 mIoU on ``frames`` held-out frames (val split, else test), each scored
    through the :class:`~semseg_ros.segmenter.Segmenter` on onnxruntime (CPU), labels as
    stored."""
    from semseg_ros.segmenter import Segmenter

    from .evaluate import EvaluationError, data_source_from_checkpoint, load_split, score

    source = data_source_from_checkpoint(checkpoint, checkpoint_path)
    if source is None:
        return {'miou_note': 'no data location in the checkpoint: mIoU not measured'}
    for split in ('val', 'test'):
        try:
            data = load_split(source, split)
            break
        except EvaluationError:
            continue
    else:
        return {'miou_note': 'no val/test split: mIoU not measured'}
    picks = np.linspace(0, len(data.samples) - 1, min(frames, len(data.samples))).round()
    samples = [data.samples[int(i)] for i in picks]
    miou_fp32, miou_int8 = (
        score(Segmenter.from_model(path, backend='onnxruntime', device='cpu'), samples,
              data.class_set).cm.miou()
        for path in (fp32, int8)
    )  # fmt: skip
    return {
        'eval_split': split,
        'eval_frames': len(samples),
        'miou_fp32': miou_fp32,
        'miou_int8': miou_int8,
        'miou_drop_points': 100.0 * (miou_fp32 - miou_int8),
    }


# --- CLI ------------------------------------------------------------------------------------


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            'Export a checkpoint to a self-describing ONNX model (opset >= 17, dynamic batch '
            'and size, verified against torch), with optional FP16 / INT8 variants and a '
            'cached TensorRT engine.'
        ),
    )
    parser.add_argument('--checkpoint', type=Path, help='training checkpoint (best.pt)')
    parser.add_argument('--out', type=Path, help='ONNX path to write (default: CHECKPOINT.onnx)')
    parser.add_argument('--onnx', type=Path, help='use an existing ONNX (with --tensorrt)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (>= 17)')
    parser.add_argument('--fp16', action='store_true', help='also write MODEL.fp16.onnx (GPU)')
    parser.add_argument('--int8', action='store_true', help='also write MODEL.int8.onnx (CPU)')
    parser.add_argument(
        '--openvino-int8',
        action='store_true',
        help='also write MODEL.openvino-int8.xml/.bin (NNCF INT8 for the openvino engine)',
    )
    parser.add_argument(
        '--calibration-frames', type=int, default=32, help='INT8 calibration frames (train)'
    )
    parser.add_argument(
        '--calibration-synth-seed',
        type=int,
        help='calibrate on frames of `semseg data synth` with this seed instead of the '
        "checkpoint's training split (the shipped model: 0)",
    )
    parser.add_argument(
        '--eval-frames', type=int, default=16, help='held-out frames for the INT8 mIoU drop'
    )
    parser.add_argument('--no-verify', action='store_true', help='skip the onnxruntime check')
    parser.add_argument(
        '--tensorrt', action='store_true', help='build (or reuse) the TensorRT engine here'
    )
    parser.add_argument('--workspace-gb', type=float, default=2.0, help='TensorRT workspace')
    parser.add_argument('--fp32-engine', action='store_true', help='TensorRT engine in FP32')
    parser.add_argument('--rebuild', action='store_true', help='rebuild a cached engine')
    parser.add_argument('--json', type=Path, help='write the export report as JSON here')
    parser.add_argument(
        '--add-digest',
        type=Path,
        metavar='MODEL.onnx',
        help='record the weights digest in an older export that lacks it (only a file you '
        'trust: the digest certifies the weights as they are now), then exit',
    )
    parser.add_argument(
        '--upgrade',
        type=Path,
        metavar='MODEL.onnx',
        help="give an older export what exports have now (the 'ids' and 'confidence' "
        'outputs, the weights digest), weights unchanged, then exit',
    )
    return parser


def add_digest(path: Path) -> bool:
    """Add ``weights_sha256`` to an export without it (atomically); False if it had one.

    Only the metadata changes: the graph bytes, and so the weights, stay as they are.
    """
    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if WEIGHTS_DIGEST_KEY in meta:
        read_model_info(path)  # checks it
        return False
    entry = proto.metadata_props.add()
    entry.key, entry.value = WEIGHTS_DIGEST_KEY, graph_digest(proto)
    write_model_file(proto, path)
    read_model_info(path)  # the digest reads back and matches
    return True


def upgrade_model(path: Path) -> list[str]:
    """Give an older export what this exporter adds (atomically): the ``ids`` and
    ``confidence`` outputs, by the same functions an export uses, and the weights digest.

    The weights stay byte for byte: a file with a digest is checked before anything changes
    and its digest is re-recorded over the new graph. Returns what was added ([] if none).
    """
    import onnx

    read_model_info(path)  # refuses a damaged file before we certify it again
    proto = onnx.load(str(path))
    outputs = {o.name for o in proto.graph.output}
    added = []
    if IDS_OUTPUT_NAME not in outputs:
        add_ids_output(proto)
        added.append(f'output {IDS_OUTPUT_NAME!r}')
    if CONFIDENCE_OUTPUT_NAME not in outputs:
        add_confidence_output(proto)
        added.append(f'output {CONFIDENCE_OUTPUT_NAME!r}')
    digest = graph_digest(proto)
    entries = [p for p in proto.metadata_props if p.key == WEIGHTS_DIGEST_KEY]
    if not entries:
        entries = [proto.metadata_props.add()]
        entries[0].key = WEIGHTS_DIGEST_KEY
        added.append('weights digest')
    if not added:
        return []
    for entry in entries:
        entry.value = digest
    onnx.checker.check_model(proto)
    write_model_file(proto, path)
    read_model_info(path)  # the digest reads back and matches
    return added


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``semseg export``; returns the exit code."""
    parser = _parser(prog)
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    # The in-place edits of an existing export: one file, one line of outcome.
    edits = (
        (args.add_digest, add_digest, lambda added: 'weights digest added' if added
         else 'has a digest'),
        (args.upgrade, upgrade_model, lambda added: f'added {", ".join(added)}' if added
         else 'up to date'),
    )  # fmt: skip
    for path, edit, outcome in edits:
        if path is None:
            continue
        try:
            result = edit(path)
        except (OSError, ModelFileError) as err:
            print(f'{parser.prog}: error: {err}', file=sys.stderr)
            return 1
        print(f'{path}: {outcome(result)}')
        return 0
    if args.checkpoint is None and args.onnx is None:
        msg = 'pass --checkpoint (or --onnx with --tensorrt / --openvino-int8)'
        print(f'{parser.prog}: error: {msg}', file=sys.stderr)
        return 2
    try:
        if args.checkpoint is not None:
            out = args.out or args.checkpoint.with_suffix('.onnx')
            report = export_all(
                args.checkpoint,
                out,
                opset=args.opset,
                fp16=args.fp16 or args.tensorrt,
                int8=args.int8,
                calibration=args.calibration_frames,
                eval_frames=args.eval_frames,
                verify=not args.no_verify,
            )
            _print_report(report)
            onnx_path = Path(report.onnx)
        else:
            report, onnx_path = ExportReport(str(args.onnx)), args.onnx
        if args.openvino_int8:
            report.int8 = {**(report.int8 or {}), **_openvino_int8(args, onnx_path)}
            print(f'OpenVINO INT8 IR: {report.int8["openvino_ir"]}')
        if args.tensorrt:
            from semseg_ros.engines.tensorrt_engine import build_engine

            engine = build_engine(
                onnx_path,
                fp16=not args.fp32_engine,
                workspace_gb=args.workspace_gb,
                rebuild=args.rebuild,
            )
            report.tensorrt = {'engine': str(engine)}
            print(f'TensorRT engine: {engine}')
    except (CheckpointError, ModelFileError, ExportError, ValueError, RuntimeError) as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 1
    except ImportError as err:
        msg = f'{parser.prog}: error: {err}; install the export tools: pip install -e .[train]'
        print(msg, file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(args.json)  # what killed exports left
        text = json.dumps(asdict(report), indent=1, default=str) + '\n'
        atomic_write_bytes(args.json, text.encode())  # whole or not at all
    return 0


def _openvino_int8(args: argparse.Namespace, onnx_path: Path) -> dict[str, Any]:
    """``--openvino-int8``: calibration frames from the checkpoint's training split or the
    synthetic generator, then :func:`quantize_openvino_int8`."""
    if args.calibration_synth_seed is not None:
        from .data.synthetic import render_frame

        seed, count = args.calibration_synth_seed, args.calibration_frames
        frames = [render_frame(seed, i)[0] for i in range(count)]
        source = f'semseg data synth seed {seed}, frames 0..{count - 1}'
    elif args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint)
        frames, _ = calibration_frames(checkpoint, args.checkpoint, args.calibration_frames)
        source = f'training split of {args.checkpoint}'
    else:
        raise ExportError('--openvino-int8 with --onnx needs --calibration-synth-seed SEED')
    path = quantize_openvino_int8(onnx_path, frames)
    return {'openvino_ir': str(path), 'openvino_calibration': source}


def _print_report(report: ExportReport) -> None:
    print(f'wrote {report.onnx}')
    if report.verification:
        v = report.verification
        print(
            f'  verified vs torch at {tuple(v["shape"])}: max abs diff {v["max_abs_diff"]:.2e}, '
            f'argmax agreement {v["argmax_agreement"]:.5f}'
        )
    if report.fp16:
        print(
            f'wrote {report.fp16["path"]} (argmax agreement vs FP32 '
            f'{report.fp16["argmax_agreement_vs_fp32"]:.5f})'
        )
    if report.int8:
        i = report.int8
        line = f'wrote {i["path"]} (calibrated on {i["calibration_frames"]} training frames)'
        if 'miou_drop_points' in i:
            line += (
                f'; mIoU on {i["eval_frames"]} {i["eval_split"]} frames: FP32 '
                f'{i["miou_fp32"]:.4f}, INT8 {i["miou_int8"]:.4f}, drop '
                f'{i["miou_drop_points"]:.2f} points'
            )
        print(line)


if __name__ == '__main__':
    raise SystemExit(main())
