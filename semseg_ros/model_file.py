"""The model file contract: semseg_ros metadata inside an ONNX file, and engine cache names.

An exported model is self-describing (docs/architecture.md, The model file): its ONNX
``metadata_props`` carry the class set (name, class names, palette), the input spec (input
size, row crop, normalization), the output kind and where the model came from.
:func:`read_model_info` reads them back with a ~60-line protobuf wire reader instead of
the ``onnx`` package, so the runtime half needs only onnxruntime (and never loads a whole
inference session to learn what a file is). Writing happens at export time
(:mod:`training.export`, with ``onnx``).

TensorRT engines are built from the ONNX on the machine that runs them and cached next to
it under a name that holds everything that makes an engine unportable::

    model.onnx -> model.<gpu>-sm<major><minor>-trt<version>-<precision>-<profile>-<sha[:12]>.engine
                  model.<...>.engine.json   (the ONNX metadata + the build facts, the sidecar)

where ``<profile>`` is the optimization profile (``b8-64x32``: batch 1..8 at 64x32; a range
of sizes as ``64x32to800x600``) and ``<sha>`` the hash of the ONNX file TensorRT parsed
(the FP16 copy on TensorRT 11). A changed GPU, TensorRT version, precision, profile or ONNX
file picks a new name (a rebuild). The sidecar is written first and atomically, the engine
last; a cache entry counts only when both files are there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semseg_ros.labels import (
    BUILTIN_CLASS_SETS,
    ClassSet,
    ClassSetError,
    class_set_from_dict,
)
from semseg_ros.pipeline import InputSpec
from semseg_ros.staged_output import atomic_write_bytes

#: Bumped when the metadata layout changes incompatibly.
METADATA_FORMAT = 1
FORMAT_KEY = 'semseg_ros.format'
OUTPUT_KINDS = ('logits',)
PRECISIONS = ('fp32', 'fp16', 'int8')
ENGINE_SUFFIX = '.engine'
SIDECAR_SUFFIX = '.json'

_EXPORT_HINT = 'semseg export --checkpoint CHECKPOINT.pt --out MODEL.onnx'

#: Metadata key of the weights digest: sha256 (hex) of the serialized GraphProto (the ONNX
#: ``graph`` field: nodes and initializers, i.e. every weight), recorded at export and checked
#: by :func:`read_model_info`. Metadata is outside the graph, so adding it changes nothing.
WEIGHTS_DIGEST_KEY = 'weights_sha256'


class ModelFileError(ValueError):
    """A model file is missing, not a model, or lacks / has bad semseg_ros metadata.

    The message names the file and the command that fixes it.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


# --- What a model file says about itself ---------------------------------------------------


#: The optional second output of an exported model: per-pixel argmax as (N, H, W) uint8,
#: so a runtime gets class ids without reading C float maps back (training.export adds it).
IDS_OUTPUT_NAME = 'ids'
#: The optional confidence output: the largest softmax probability per pixel as (N, H, W)
#: uint8, 255 = certain (training.export adds it; files exported before have none).
CONFIDENCE_OUTPUT_NAME = 'confidence'


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, ONNX element type name and dims (None = dynamic)."""

    name: str
    dtype: str  # 'float32', 'float16', 'uint8', ...
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class ModelInfo:
    """Everything the runtime needs about a model, read from its file alone."""

    path: Path
    class_set: ClassSet
    input_spec: InputSpec
    output_kind: str = 'logits'
    precision: str = 'fp32'
    input_name: str = 'image'
    output_name: str = 'logits'
    opset: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    sha256: str = ''
    #: The weights digest recorded at export, checked at load; '' for an older export.
    weights_sha256: str = ''

    @property
    def num_classes(self) -> int:
        return self.class_set.num_classes

    @property
    def ids_output(self) -> str | None:
        """The graph's uint8 class-id output (:data:`IDS_OUTPUT_NAME`), if it has one."""
        for tensor in self.outputs:
            if tensor.name == IDS_OUTPUT_NAME and tensor.dtype == 'uint8':
                return tensor.name
        return None

    @property
    def confidence_output(self) -> str | None:
        """The graph's uint8 confidence output (:data:`CONFIDENCE_OUTPUT_NAME`), if any."""
        for tensor in self.outputs:
            if tensor.name == CONFIDENCE_OUTPUT_NAME and tensor.dtype == 'uint8':
                return tensor.name
        return None

    @property
    def in_channels(self) -> int:
        """Channels of the image input (3 unless the graph says otherwise)."""
        for tensor in self.inputs:
            named = tensor.name == self.input_name and len(tensor.shape) == 4
            if named and isinstance(tensor.shape[1], int):
                return tensor.shape[1]
        return 3

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (for logs, ``/diagnostics`` and bench reports)."""
        return {
            'path': str(self.path),
            'class_set': self.class_set.name,
            'num_classes': self.num_classes,
            **self.input_spec.to_dict(),
            'output_kind': self.output_kind,
            'precision': self.precision,
            'opset': self.opset,
            'sha256': self.sha256[:12],
        }


def metadata_dict(
    class_set: ClassSet,
    input_spec: InputSpec,
    *,
    precision: str = 'fp32',
    input_name: str = 'image',
    output_name: str = 'logits',
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: string keys to string (JSON) values.

    One key per fact, so tools that show ONNX metadata (Netron, ``onnx.load``) are readable.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    meta = {
        FORMAT_KEY: str(METADATA_FORMAT),
        'class_set': class_set.name,
        'class_names': json.dumps(list(class_set.names)),
        'palette': json.dumps([[int(c) for c in rgb] for rgb in class_set.colors]),
        'input_size': json.dumps(list(input_spec.input_size)),
        'crop_top': str(input_spec.crop_top),
        'crop_bottom': str(input_spec.crop_bottom),
        'normalization': json.dumps(input_spec.normalization.to_dict()),
        'output_kind': 'logits',
        'precision': precision,
        'input_name': input_name,
        'output_name': output_name,
        'provenance': json.dumps(dict(provenance or {}), default=str),
    }
    if class_set.maps_to and BUILTIN_CLASS_SETS.get(class_set.name) is not class_set:
        meta['class_maps_to'] = json.dumps({k: dict(v) for k, v in class_set.maps_to.items()})
    return meta


def _class_set_from_metadata(meta: Mapping[str, str], source: str) -> ClassSet:
    name = meta.get('class_set')
    if not name:
        msg = f'{source}: metadata has no class_set; re-export it with `{_EXPORT_HINT}`'
        raise ModelFileError(msg, path=source)
    builtin = BUILTIN_CLASS_SETS.get(name)
    if 'class_names' not in meta or 'palette' not in meta:
        if builtin is None:
            msg = (
                f'{source}: class set {name!r} is not built in ({sorted(BUILTIN_CLASS_SETS)}) '
                f'and the metadata has no class_names/palette to rebuild it; re-export the '
                f'model with `{_EXPORT_HINT}`'
            )
            raise ModelFileError(msg, path=source)
        return builtin
    try:
        names = json.loads(meta['class_names'])
        palette = json.loads(meta['palette'])
        maps_to = json.loads(meta.get('class_maps_to', '{}'))
        definition = {
            'name': name,
            'classes': [{'name': n, 'color': c} for n, c in zip(names, palette, strict=True)],
            'maps_to': maps_to,
        }
        class_set = class_set_from_dict(definition, source=source)
    except (ValueError, TypeError, ClassSetError) as err:
        msg = f'{source}: bad class set in metadata ({err}); re-export with `{_EXPORT_HINT}`'
        raise ModelFileError(msg, path=source) from err
    if builtin is not None:
        same = builtin.names == class_set.names and (builtin.colors == class_set.colors).all()
        if not same:
            msg = (
                f'{source}: metadata names class set {name!r} but its classes or colours differ '
                f'from the built-in {name!r}; rename the custom set or re-export the model'
            )
            raise ModelFileError(msg, path=source)
        return builtin  # keeps the built-in mappings to the other sets
    return class_set


def model_info_from_metadata(
    meta: Mapping[str, str],
    *,
    path: str | Path,
    opset: int | None = None,
    inputs: tuple[TensorInfo, ...] = (),
    outputs: tuple[TensorInfo, ...] = (),
    sha256: str = '',
) -> ModelInfo:
    """Parse :func:`metadata_dict` output back; raises :class:`ModelFileError` naming ``path``."""
    source = str(path)
    if FORMAT_KEY not in meta:
        msg = (
            f'{source} has no semseg_ros metadata (keys: {sorted(meta) or "none"}); it was not '
            f'exported by semseg_ros. Export the checkpoint with `{_EXPORT_HINT}`'
        )
        raise ModelFileError(msg, path=path)
    if meta[FORMAT_KEY] != str(METADATA_FORMAT):
        msg = (
            f'{source} has semseg_ros metadata format {meta[FORMAT_KEY]}, this version reads '
            f'{METADATA_FORMAT}; re-export it with `{_EXPORT_HINT}`'
        )
        raise ModelFileError(msg, path=path)
    class_set = _class_set_from_metadata(meta, source)
    try:
        spec = InputSpec.from_dict(
            {
                'input_size': json.loads(meta['input_size']),
                'crop_top': int(meta.get('crop_top', 0)),
                'crop_bottom': int(meta.get('crop_bottom', 0)),
                'normalization': json.loads(meta['normalization']),
            }
        )
        provenance = json.loads(meta.get('provenance', '{}'))
    except (KeyError, ValueError, TypeError) as err:
        msg = f'{source}: bad input spec in metadata ({err!r}); re-export with `{_EXPORT_HINT}`'
        raise ModelFileError(msg, path=path) from err
    output_kind = meta.get('output_kind', 'logits')
    precision = meta.get('precision', 'fp32')
    if output_kind not in OUTPUT_KINDS or precision not in PRECISIONS:
        msg = (
            f'{source}: output_kind {output_kind!r} / precision {precision!r} are not ones this '
            f'version runs ({OUTPUT_KINDS} / {PRECISIONS}); re-export with `{_EXPORT_HINT}`'
        )
        raise ModelFileError(msg, path=path)
    return ModelInfo(
        path=Path(path),
        class_set=class_set,
        input_spec=spec,
        output_kind=output_kind,
        precision=precision,
        input_name=meta.get('input_name', 'image'),
        output_name=meta.get('output_name', 'logits'),
        opset=opset,
        provenance=provenance if isinstance(provenance, dict) else {},
        inputs=inputs,
        outputs=outputs,
        sha256=sha256,
    )


# --- A minimal ONNX (protobuf wire format) reader --------------------------------------------
# ModelProto fields used: 1 ir_version, 7 graph, 8 opset_import, 14 metadata_props.
# GraphProto: 11 input, 12 output (ValueInfoProto: 1 name, 2 type). TypeProto: 1 tensor_type
# (2 shape -> 1 dim: 1 dim_value | 2 dim_param; 1 elem_type).

_ELEM_TYPES = {1: 'float32', 2: 'uint8', 3: 'int8', 6: 'int32', 7: 'int64', 10: 'float16'}


class _WireError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _WireError('truncated varint')
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _spans(buf: memoryview) -> Iterator[tuple[int, int | memoryview | None, int, int]]:
    """(field number, varint value or length-delimited bytes (None for fixed-size ones),
    start, end) of one message; ``buf[start:end]`` is the whole field, key included."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError('field number 0')
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value, start, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _WireError('length past the end')
            yield number, buf[pos : pos + length], start, pos + length
            pos += length
        elif wire in (1, 5):  # fixed64 / fixed32: not read here, but copied with the rest
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise _WireError('fixed-size field past the end')
            yield number, None, start, pos
        else:
            raise _WireError(f'wire type {wire}')
    if pos != len(buf):
        raise _WireError('message overruns its end')


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, varint value or length-delimited bytes) of one message."""
    for number, value, _, _ in _spans(buf):
        if value is not None:
            yield number, value


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise _WireError('expected a string')
    return bytes(value).decode('utf-8')


def _tensor_info(value_info: memoryview) -> TensorInfo:
    name, dtype, dims = '', 'unknown', []
    for number, value in _fields(value_info):
        if number == 1:
            name = _text(value)
        elif number == 2 and isinstance(value, memoryview):
            for t_num, t_val in _fields(value):
                if t_num != 1 or not isinstance(t_val, memoryview):
                    continue
                for tt_num, tt_val in _fields(t_val):
                    if tt_num == 1 and isinstance(tt_val, int):
                        dtype = _ELEM_TYPES.get(tt_val, f'onnx:{tt_val}')
                    elif tt_num == 2 and isinstance(tt_val, memoryview):
                        for d_num, d_val in _fields(tt_val):
                            if d_num != 1 or not isinstance(d_val, memoryview):
                                continue
                            dim: int | str | None = None
                            for x_num, x_val in _fields(d_val):
                                dim = x_val if x_num == 1 else _text(x_val) if x_num == 2 else dim
                            dims.append(dim)
    return TensorInfo(name, dtype, tuple(dims))


@dataclass
class _OnnxFacts:
    meta: dict[str, str]
    opset: int | None
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    graph_sha256: str = ''


def _parse_onnx(data: bytes) -> _OnnxFacts:
    buf = memoryview(data)
    meta: dict[str, str] = {}
    opset = None
    ir_version = graph = None
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            ir_version = value
        elif number == 7 and isinstance(value, memoryview):
            graph = value
        elif number == 8 and isinstance(value, memoryview):
            domain, version = '', None
            for o_num, o_val in _fields(value):
                domain = _text(o_val) if o_num == 1 else domain
                version = o_val if o_num == 2 and isinstance(o_val, int) else version
            if domain in ('', 'ai.onnx'):
                opset = version
        elif number == 14 and isinstance(value, memoryview):
            entry = dict(_fields(value))
            meta[_text(entry.get(1, memoryview(b'')))] = _text(entry.get(2, memoryview(b'')))
    if ir_version is None or graph is None:
        raise _WireError('no ir_version or no graph')
    inputs, outputs, initializers = [], [], set()
    for number, value in _fields(graph):
        if number in (11, 12) and isinstance(value, memoryview):
            (inputs if number == 11 else outputs).append(_tensor_info(value))
        elif number == 5 and isinstance(value, memoryview):  # TensorProto.name is field 8
            initializers.update(_text(v) for n, v in _fields(value) if n == 8)
    inputs = [t for t in inputs if t.name not in initializers]  # IR < 4 lists weights too
    digest = hashlib.sha256(graph).hexdigest()
    return _OnnxFacts(meta, opset, tuple(inputs), tuple(outputs), digest)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def onnx_without_outputs(data: bytes, names: set[str]) -> bytes:
    """The ONNX model ``data`` without the graph outputs ``names`` and the nodes that only
    they need (onnxruntime runs every node of a graph whatever outputs are asked for).

    Byte-level, no ``onnx`` package needed. Returns ``data`` unchanged when nothing would be
    dropped or the graph has a node with a subgraph attribute (its outer-scope reads are
    not in its inputs, so what it needs cannot be told here).
    """
    buf = memoryview(data)
    graph = next((v for n, v in _fields(buf) if n == 7 and isinstance(v, memoryview)), None)
    if graph is None:
        return data
    nodes, kept_outputs, dropped_any = [], [], False
    for number, value in _fields(graph):
        if number == 1 and isinstance(value, memoryview):
            fields = list(_fields(value))
            if any(n == 5 and any(a in (6, 11) for a, _ in _fields(v))
                   for n, v in fields if isinstance(v, memoryview)):  # fmt: skip
                return data  # an AttributeProto with g (6) or graphs (11): a subgraph
            ins = [_text(v) for n, v in fields if n == 1]
            outs = [_text(v) for n, v in fields if n == 2]
            nodes.append((ins, outs))
        elif number == 12 and isinstance(value, memoryview):
            name = _tensor_info(value).name
            dropped_any |= name in names
            if name not in names:
                kept_outputs.append(name)
    if not dropped_any:
        return data
    needed, keep = set(kept_outputs), []
    for ins, outs in reversed(nodes):  # graphs are stored in topological order
        keep.append(any(o in needed for o in outs))
        if keep[-1]:
            needed.update(ins)
    keep.reverse()

    def dropped(number: int, value: int | memoryview | None) -> bool:
        if not isinstance(value, memoryview):
            return False
        if number == 12:  # a graph output
            return _tensor_info(value).name in names
        if number == 5:  # an initializer only the dropped nodes read (TensorProto.name: 8)
            return not any(n == 8 and _text(v) in needed for n, v in _fields(value))
        return False

    parts, node_index = [], 0
    for number, value, start, end in _spans(graph):
        if number == 1:
            node_index += 1
            if not keep[node_index - 1]:
                continue
        if not dropped(number, value):
            parts.append(graph[start:end])
    new_graph = b''.join(parts)
    out = []
    for number, _, start, end in _spans(buf):
        if number == 7:  # the graph, rewritten: key (field 7, length-delimited), length, bytes
            out.append(_encode_varint(7 << 3 | 2) + _encode_varint(len(new_graph)) + new_graph)
        else:
            out.append(buf[start:end])
    return b''.join(out)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _require_file(path: Path) -> None:
    if not path.exists():
        msg = (
            f'model file {path} does not exist; export one with `{_EXPORT_HINT}` '
            '(or check the model_path parameter)'
        )
        raise ModelFileError(msg, path=path)
    if not path.is_file():
        raise ModelFileError(f'model path {path} is not a file', path=path)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The raw ``metadata_props`` of an ONNX file (raises :class:`ModelFileError`)."""
    path = Path(path)
    _require_file(path)
    return _read_onnx(path, path.read_bytes()).meta


def _read_onnx(path: Path, data: bytes) -> _OnnxFacts:
    try:
        return _parse_onnx(data)
    except (_WireError, UnicodeDecodeError) as err:
        if path.suffix in ('.pt', '.pth', '.ckpt'):
            hint = f'it looks like a PyTorch checkpoint: export it with `{_EXPORT_HINT}`'
        elif data[:4] == b'PK\x03\x04':
            hint = f'it is a zip archive (a PyTorch checkpoint?): export with `{_EXPORT_HINT}`'
        else:
            hint = f'export a model with `{_EXPORT_HINT}`'
        msg = f'{path} is not an ONNX model or TensorRT engine ({err}); {hint}'
        raise ModelFileError(msg, path=path) from err


def read_model_info(path: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of an ONNX file or a cached TensorRT engine (via its sidecar).

    Raises :class:`ModelFileError` (naming the file and the fix) for a missing file, a file
    that is neither, and absent, foreign or unknown-class-set metadata.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix == ENGINE_SUFFIX:
        return read_engine_sidecar(path)[0]
    data = path.read_bytes()
    facts = _read_onnx(path, data)
    info = model_info_from_metadata(
        facts.meta,
        path=path,
        opset=facts.opset,
        inputs=facts.inputs,
        outputs=facts.outputs,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    recorded = facts.meta.get(WEIGHTS_DIGEST_KEY, '')
    if recorded and recorded != facts.graph_sha256:
        msg = (
            f'{path} is damaged: its weights do not match the digest recorded at export '
            f'({WEIGHTS_DIGEST_KEY} {recorded[:12]}..., the file has {facts.graph_sha256[:12]}'
            '...); copy it again or re-export it'
        )
        raise ModelFileError(msg, path=path)
    info = dataclasses.replace(info, weights_sha256=recorded)
    names = [t.name for t in facts.inputs], [t.name for t in facts.outputs]
    if info.input_name not in names[0] or info.output_name not in names[1]:
        msg = (
            f'{path}: metadata names input {info.input_name!r} / output {info.output_name!r} '
            f'but the graph has inputs {names[0]} / outputs {names[1]}; re-export it with '
            f'`{_EXPORT_HINT}`'
        )
        raise ModelFileError(msg, path=path)
    return info


def unverified_warning(info: ModelInfo) -> str | None:
    """The one warning for a model whose weights cannot be checked (an older export)."""
    if info.weights_sha256 or info.path.suffix != '.onnx':
        return None
    return (
        f'{info.path} records no weights digest ({WEIGHTS_DIGEST_KEY}; exported before it '
        'existed), so damage to its weights cannot be detected; re-export it, or add the '
        'digest to a copy you trust with `semseg export --add-digest MODEL.onnx`'
    )


# --- TensorRT engine cache names -------------------------------------------------------------


@dataclass(frozen=True)
class EngineTarget:
    """What an engine is tied to: the GPU, its compute capability, TensorRT and precision."""

    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    precision: str = 'fp16'

    def tag(self) -> str:
        gpu = re.sub(r'[^A-Za-z0-9]+', '_', self.gpu_name).strip('_') or 'gpu'
        major, minor = self.compute_capability
        return f'{gpu}-sm{major}{minor}-trt{self.tensorrt_version}-{self.precision}'

    def to_dict(self) -> dict[str, Any]:
        return {
            'gpu_name': self.gpu_name,
            'compute_capability': list(self.compute_capability),
            'tensorrt_version': self.tensorrt_version,
            'precision': self.precision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineTarget:
        return cls(
            str(data['gpu_name']),
            tuple(int(v) for v in data['compute_capability']),  # type: ignore[arg-type]
            str(data['tensorrt_version']),
            str(data.get('precision', 'fp16')),
        )


def profile_tag(
    max_batch: int, input_size: tuple[int, int], max_size: tuple[int, int] | None = None
) -> str:
    """The optimization profile in a cache name: ``b8-64x32`` or ``b8-64x32to800x600``."""
    width, height = input_size
    max_w, max_h = max_size or input_size
    max_w, max_h = max(width, max_w), max(height, max_h)
    sizes = f'{width}x{height}'
    if (max_w, max_h) != (width, height):
        sizes += f'to{max_w}x{max_h}'
    return f'b{int(max_batch)}-{sizes}'


def engine_cache_path(
    onnx_path: str | Path, target: EngineTarget, onnx_sha256: str, profile: str = ''
) -> Path:
    """Where the engine for ``onnx_path`` on ``target`` is cached (next to the ONNX).

    ``onnx_sha256`` is the hash of the file TensorRT parsed; ``profile`` a :func:`profile_tag`.
    """
    onnx_path = Path(onnx_path)
    profile = f'-{profile}' if profile else ''
    return onnx_path.with_name(
        f'{onnx_path.stem}.{target.tag()}{profile}-{onnx_sha256[:12]}{ENGINE_SUFFIX}'
    )


def engine_cache_complete(engine_path: str | Path) -> bool:
    """Whether a cached engine can be used: the engine and its sidecar both exist."""
    return Path(engine_path).is_file() and sidecar_path(engine_path).is_file()


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def write_engine_sidecar(
    engine_path: Path,
    info: ModelInfo,
    target: EngineTarget,
    *,
    parsed: Path | None = None,
    parsed_sha256: str | None = None,
    profile: str = '',
) -> Path:
    """Write ``ENGINE.json`` atomically: the ONNX metadata and the build facts.

    ``parsed`` / ``parsed_sha256``: the file TensorRT parsed, when not ``info.path`` (the FP16
    copy on TensorRT 11). The engine then loads from the sidecar alone.
    """
    data = {
        'metadata': metadata_dict(
            info.class_set,
            info.input_spec,
            precision=target.precision if target.precision in PRECISIONS else info.precision,
            input_name=info.input_name,
            output_name=info.output_name,
            provenance=info.provenance,
        ),
        'onnx': str(info.path),
        'onnx_sha256': info.sha256,
        'parsed': str(parsed or info.path),
        'parsed_sha256': parsed_sha256 or info.sha256,
        'profile': profile,
        'target': target.to_dict(),
    }
    path = sidecar_path(engine_path)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + '\n').encode())
    return path


def read_engine_sidecar(engine_path: str | Path) -> tuple[ModelInfo, EngineTarget]:
    """The :class:`ModelInfo` and :class:`EngineTarget` an engine was built with."""
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    fix = (
        'rebuild it from the ONNX with `semseg export --tensorrt --onnx MODEL.onnx` '
        '(or pass the .onnx as model_path: the engine is then built and cached on first run)'
    )
    try:
        data = json.loads(side.read_text())
        target = EngineTarget.from_dict(data['target'])
        meta = data['metadata']
    except FileNotFoundError as err:
        msg = f'TensorRT engine {engine_path} has no metadata file {side.name}; {fix}'
        raise ModelFileError(msg, path=engine_path) from err
    except (ValueError, KeyError, TypeError) as err:
        msg = f'TensorRT engine metadata {side} is unreadable ({err!r}); {fix}'
        raise ModelFileError(msg, path=engine_path) from err
    info = model_info_from_metadata(meta, path=engine_path, sha256=str(data.get('onnx_sha256')))
    return info, target


def sort_nodes_topologically(graph: Any) -> None:
    """Reorder ``graph.node`` so every node follows its inputs' producers (in place).

    onnxruntime's FP16 converter appends its input casts at the end; the checker (rightly)
    wants a sorted graph. Subgraphs are not used by the UNet. Raises ValueError naming the
    first nodes of a cycle or of a missing input.
    """
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {''}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            names = [n.name or n.op_type for n in pending[:5]]
            raise ValueError(f'graph has a cycle or a missing input around nodes {names}')
        for node in ready:
            known.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def graph_digest(model_proto: Any) -> str:
    """sha256 of the serialized graph (every node and weight): the ``weights_sha256`` key, the
    same bytes :func:`read_model_info` hashes from the file."""
    return hashlib.sha256(model_proto.graph.SerializeToString()).hexdigest()
