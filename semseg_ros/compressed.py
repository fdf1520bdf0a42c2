"""sensor_msgs/CompressedImage -> RGB: the formats image_transport's compressed plugin writes.

The node (``input_transport: compressed``) and ``semseg bag`` hand a CompressedImage's
``format`` and ``data`` to :class:`CompressedFields`; :meth:`CompressedFields.to_rgb` decodes
them with OpenCV (``cv2.imdecode``) into the (H, W, 3) uint8 RGB frame the rest of the
per-frame path takes, on the worker thread (a stale frame is never decoded).

``format`` as image_transport's ``compressed`` plugin writes it,
``'<camera encoding>; <jpeg|png> compressed <encoding of the compressed pixels>'``, e.g.
``'bgr8; jpeg compressed bgr8'``, ``'rgb8; png compressed bgr8'`` (the plugin converts colour
images to bgr8 first) or ``'mono8; jpeg compressed mono8'``; camera drivers that skip
image_transport write plain ``'jpeg'`` / ``'png'`` (pixels in OpenCV's bgr8 order). The pixels
are in the order the part after ``compressed`` names: ``rgb8`` / ``rgba8`` as written, every
other colour encoding as OpenCV's BGR. 16-bit images and ``compressedDepth`` are not camera
frames the model takes.

A format it cannot decode (kind ``'compressed_format'``) or data that is not a whole image of
that format (``'compressed_data'``: corrupt, truncated) raises :class:`CompressedImageError`,
an :class:`~semseg_ros.imaging.ImageFormatError`, so adapters count and warn once per kind as
for raw frames.
"""

from __future__ import annotations

import array as pyarray
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np

from semseg_ros.imaging import ImageData, ImageFormatError

COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
COMPRESSED_SUFFIX = '/compressed'  # image_transport's topic for the compressed plugin
CODECS = {'jpeg': 'jpeg', 'jpg': 'jpeg', 'png': 'png'}
#: Encodings of the compressed pixels the model can take (8 bits per channel).
PIXEL_ENCODINGS = ('bgr8', 'rgb8', 'mono8', 'bgra8', 'rgba8')
FORMAT_EXAMPLES = "'bgr8; jpeg compressed bgr8', 'rgb8; png compressed bgr8', 'jpeg' or 'png'"
JPEG_END = b'\xff\xd9'  # EOI marker: a JPEG without it is truncated


class CompressedImageError(ImageFormatError):
    """A CompressedImage that cannot be decoded; ``kind`` is 'compressed_format' or
    'compressed_data' and the message names the value and the fix."""

    def __init__(self, kind: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.kind = kind  # type: ignore[assignment]  # kinds of their own, beside imaging's


class CompressedFormat(NamedTuple):
    codec: str  # 'jpeg' | 'png'
    pixels: str  # encoding of the compressed pixels: one of PIXEL_ENCODINGS


def parse_format(text: object) -> CompressedFormat:
    """``'rgb8; jpeg compressed bgr8'`` -> ``CompressedFormat('jpeg', 'bgr8')``."""
    if not isinstance(text, str):
        msg = f'CompressedImage format {text!r} is not a string: use e.g. {FORMAT_EXAMPLES}'
        raise CompressedImageError('compressed_format', msg)
    value = text.strip()
    codec_part, pixels = value, 'bgr8'
    if ';' in value:  # '<camera encoding>; <codec> compressed <pixels>'
        codec_part = value.split(';', 1)[1].strip()
        words = codec_part.split()
        if len(words) == 3 and words[1] == 'compressed':
            codec_part, pixels = words[0], words[2]
        elif len(words) != 1:
            codec_part = ''
    codec = CODECS.get(codec_part.lower())
    if codec is None or pixels not in PIXEL_ENCODINGS:
        hint = (
            f'8-bit {"/".join(PIXEL_ENCODINGS)} pixels'
            if codec is not None
            else 'JPEG or PNG (image_transport compressed plugin)'
        )
        msg = (
            f'CompressedImage format {text!r} is not supported: the node decodes {hint}, '
            f'format e.g. {FORMAT_EXAMPLES}; for another transport or a raw camera set '
            'input_transport:=raw (or republish with image_transport)'
        )
        raise CompressedImageError('compressed_format', msg)
    return CompressedFormat(codec, pixels)


def _as_bytes(data: Any) -> np.ndarray:
    """(N,) uint8 view of a message's ``data`` (array.array, bytes, ndarray or list)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, pyarray.array)):
        return np.frombuffer(data, np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError) as err:
        msg = f'CompressedImage data is a {type(data).__name__}, not bytes: send uint8[] data'
        raise CompressedImageError('compressed_data', msg) from err


@dataclass(frozen=True, eq=False)
class CompressedFields:
    """The two fields of a sensor_msgs/msg/CompressedImage, free of any message class."""

    format: str
    data: ImageData = field(repr=False)

    @classmethod
    def from_msg(cls, msg: Any) -> CompressedFields:
        """Read ``format`` and ``data`` off any CompressedImage-like object (rclpy, rosbags)."""
        return cls(getattr(msg, 'format', None), getattr(msg, 'data', b''))  # type: ignore[arg-type]

    def to_rgb(self) -> np.ndarray:
        """Decode to (H, W, 3) uint8 RGB; :class:`CompressedImageError` when it cannot."""
        spec = parse_format(self.format)
        buffer = _as_bytes(self.data)  # (N,) uint8
        truncated = spec.codec == 'jpeg' and not bytes(buffer[-16:]).rstrip(b'\0').endswith(
            JPEG_END
        )
        pixels = None if truncated or not buffer.size else cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if pixels is None:
            msg = (
                f'cannot decode {buffer.size} bytes as {spec.codec} (format '
                f'{self.format!r}): the data is corrupt or truncated; check the camera '
                "driver's compression, or subscribe the raw image with input_transport:=raw"
            )
            raise CompressedImageError('compressed_data', msg)
        # (H, W, 3) uint8 in the file's channel order, which OpenCV reads as BGR.
        if spec.pixels in ('rgb8', 'rgba8'):
            return pixels
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
