"""``semseg bag``: offline segmentation of a ROS 2 bag, streamed, written atomically."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from semseg_ros import bag
from semseg_ros.labels import LYFT13
from semseg_ros.node.core import FrameProcessor, Outputs

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types
CAMERA = '/carla/ego_vehicle/rgb_front/image'
INFO = '/carla/ego_vehicle/rgb_front/camera_info'
FRAME_ID = 'ego_vehicle/rgb_front'


class BandSegmenter:
    """A stand-in Segmenter: class id = brightness band (deterministic, no model file)."""

    class_set = LYFT13
    backend_name = 'band'

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None):
        self.calls = 0
        self.fail_at, self.error = fail_at, error

    def segment(self, rgb: np.ndarray):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise self.error or RuntimeError('boom')
        return SimpleNamespace(ids=band_ids(rgb))


def band_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 ids: the red value's band of 20."""
    return rgb[..., 0] // 20 % 13


def _header(i: int) -> object:
    stamp = T['builtin_interfaces/msg/Time'](sec=i // 20, nanosec=(i % 20) * 50_000_000)
    return T['std_msgs/msg/Header'](stamp=stamp, frame_id=FRAME_ID)


def write_input_bag(
    path: Path,
    frames: int = 6,
    *,
    size: tuple[int, int] = (32, 24),
    storage: str = 'mcap',
    bad_at: int | None = None,
    extra_image_topic: str | None = None,
) -> list[tuple[str, int, bytes]]:
    """A bridge-like bag: bgra8 camera + camera_info (+ /diagnostics); returns what it holds."""
    width, height = size
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    rng = np.random.default_rng(0)
    written = []
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        conns = {
            CAMERA: writer.add_connection(CAMERA, 'sensor_msgs/msg/Image', typestore=TYPESTORE),
            INFO: writer.add_connection(INFO, 'sensor_msgs/msg/CameraInfo', typestore=TYPESTORE),
            '/diagnostics': writer.add_connection(
                '/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', typestore=TYPESTORE
            ),
        }
        if extra_image_topic:
            conns[extra_image_topic] = writer.add_connection(
                extra_image_topic, 'sensor_msgs/msg/Image', typestore=TYPESTORE
            )
        for i in range(frames):
            t = 1_000_000_000 + i * 50_000_000
            pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
            encoding = 'yuv422' if i == bad_at else 'bgra8'
            image = T['sensor_msgs/msg/Image'](
                header=_header(i + 1), height=height, width=width, encoding=encoding,
                is_bigendian=0, step=width * 4, data=pixels.reshape(-1),
            )  # fmt: skip
            info = T['sensor_msgs/msg/CameraInfo'](
                header=_header(i + 1), height=height, width=width, distortion_model='plumb_bob',
                d=np.zeros(5), k=np.eye(3).reshape(-1), r=np.eye(3).reshape(-1),
                p=np.zeros(12), binning_x=0, binning_y=0,
                roi=T['sensor_msgs/msg/RegionOfInterest'](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                ),
            )  # fmt: skip
            diag = T['diagnostic_msgs/msg/DiagnosticArray'](header=_header(i), status=[])
            for topic, msg, typename, dt in (
                (CAMERA, image, 'sensor_msgs/msg/Image', 0),
                (INFO, info, 'sensor_msgs/msg/CameraInfo', 1000),
                ('/diagnostics', diag, 'diagnostic_msgs/msg/DiagnosticArray', 2000),
            ):
                data = bytes(TYPESTORE.serialize_cdr(msg, typename))
                writer.write(conns[topic], t + dt, data)
                written.append((topic, t + dt, data))
            if extra_image_topic:
                data = bytes(TYPESTORE.serialize_cdr(image, 'sensor_msgs/msg/Image'))
                writer.write(conns[extra_image_topic], t + 3000, data)
                written.append((extra_image_topic, t + 3000, data))
    return written


def read_bag(path: Path) -> list[tuple[str, int, bytes]]:
    with AnyReader([path]) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_outputs_added_and_inputs_unchanged(tmp_path: Path, storage: str) -> None:
    written = write_input_bag(tmp_path / 'in', storage=storage)
    out = tmp_path / 'out'
    report = bag.process_bag(
        tmp_path / 'in', out, FrameProcessor(BandSegmenter()), storage=storage, progress=False
    )
    assert report.frames == 6 and report.messages_in == len(written)
    messages = read_bag(out)
    copied = [m for m in messages if not m[0].startswith('/semseg_node/')]
    assert sorted(copied) == sorted(written)  # every input message, bytes and log time
    cameras = {t: TYPESTORE.deserialize_cdr(d, 'sensor_msgs/msg/Image') for c, t, d in written
               if c == CAMERA}  # fmt: skip
    for name in ('mask', 'color', 'overlay'):
        outputs = [(t, d) for c, t, d in messages if c == f'/semseg_node/{name}']
        assert len(outputs) == 6
        for t, data in outputs:
            msg = TYPESTORE.deserialize_cdr(data, 'sensor_msgs/msg/Image')
            camera = cameras[t]  # same log time as its camera frame
            assert msg.header.stamp == camera.header.stamp
            assert msg.header.frame_id == FRAME_ID
            assert (msg.height, msg.width) == (camera.height, camera.width)
            if name == 'mask':
                assert msg.encoding == 'mono8' and int(msg.data.max()) < 13
                rgb = camera.data.reshape(24, 32, 4)[..., 2::-1]
                np.testing.assert_array_equal(msg.data.reshape(24, 32), band_ids(rgb))
            else:
                assert msg.encoding == 'rgb8'


def test_output_choice_color_encoding_and_namespace(tmp_path: Path) -> None:
    write_input_bag(tmp_path / 'in', frames=2)
    processor = FrameProcessor(BandSegmenter(), color_encoding='bgr8')
    report = bag.process_bag(
        tmp_path / 'in', tmp_path / 'out', processor, outputs=Outputs(False, True, False),
        namespace='/cam', progress=False,
    )  # fmt: skip
    assert report.output_topics == {'color': '/cam/semseg_node/color'}
    colors = [d for c, _, d in read_bag(tmp_path / 'out') if c == '/cam/semseg_node/color']
    assert len(colors) == 2
    data = colors[0]
    assert TYPESTORE.deserialize_cdr(data, 'sensor_msgs/msg/Image').encoding == 'bgr8'


@pytest.mark.parametrize('error', [KeyboardInterrupt(), RuntimeError('engine died')])
def test_interrupted_run_leaves_no_output(tmp_path: Path, error: BaseException) -> None:
    write_input_bag(tmp_path / 'in', frames=5)
    processor = FrameProcessor(BandSegmenter(fail_at=3, error=error))
    with pytest.raises(type(error)):
        bag.process_bag(tmp_path / 'in', tmp_path / 'out', processor, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']  # no OUT, no temp folder


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    write_input_bag(tmp_path / 'in', frames=2)
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'old.txt').write_text('old')
    processor = FrameProcessor(BandSegmenter())
    with pytest.raises(bag.BagError, match='--overwrite'):
        bag.process_bag(tmp_path / 'in', tmp_path / 'out', processor, progress=False)
    bag.process_bag(tmp_path / 'in', tmp_path / 'out', processor, overwrite=True, progress=False)
    assert not (tmp_path / 'out' / 'old.txt').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in', 'out']


def test_malformed_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    write_input_bag(tmp_path / 'in', frames=4, bad_at=1)
    warnings: list[str] = []
    report = bag.process_bag(
        tmp_path / 'in', tmp_path / 'out', FrameProcessor(BandSegmenter()), progress=False,
        log=warnings.append,
    )  # fmt: skip
    assert report.frames == 3 and report.bad_frames == {'encoding': 1}
    assert len(warnings) == 1 and 'yuv422' in warnings[0]
    assert sum(c == CAMERA for c, _, _ in read_bag(tmp_path / 'out')) == 4  # still copied


def test_camera_topic_choice(tmp_path: Path) -> None:
    write_input_bag(tmp_path / 'in', frames=1, extra_image_topic='/other/image')
    processor = FrameProcessor(BandSegmenter())
    report = bag.process_bag(tmp_path / 'in', tmp_path / 'a', processor, progress=False)
    assert report.image_topic == CAMERA  # the bridge's camera wins
    report = bag.process_bag(
        tmp_path / 'in', tmp_path / 'b', processor, image_topic='/other/image', progress=False
    )
    assert report.image_topic == '/other/image'
    with pytest.raises(bag.BagError, match=r'not an sensor_msgs/msg/Image topic.*/other/image'):
        bag.process_bag(tmp_path / 'in', tmp_path / 'c', processor, image_topic=INFO)
    with pytest.raises(bag.BagError, match='choose one with --image-topic'):
        bag.pick_image_topic(
            [type('C', (), {'topic': t, 'msgtype': 'sensor_msgs/msg/Image'}) for t in 'ab'], None
        )


def test_compressed_camera_topics_are_decoded_and_a_corrupt_frame_counted(tmp_path: Path):
    """A bag of sensor_msgs/CompressedImage (image_transport's topic and formats): PNG frames
    are segmented as their raw pixels, a truncated JPEG is skipped with one warning."""
    import cv2

    topic = CAMERA + '/compressed'
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]  # BGR
    jpeg = cv2.imencode('.jpg', frames[0])[1].tobytes()
    payloads = [
        ('rgb8; png compressed bgr8', cv2.imencode('.png', frames[0])[1].tobytes()),
        ('bgr8; jpeg compressed bgr8', jpeg[: len(jpeg) // 2]),
        ('png', cv2.imencode('.png', frames[2])[1].tobytes()),
    ]
    msgtype = 'sensor_msgs/msg/CompressedImage'
    with Writer(tmp_path / 'in', version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        for i, (fmt, data) in enumerate(payloads):
            msg = T[msgtype](header=_header(i + 1), format=fmt, data=np.frombuffer(data, np.uint8))
            writer.write(conn, 1_000_000_000 + i, bytes(TYPESTORE.serialize_cdr(msg, msgtype)))
    warnings: list[str] = []
    report = bag.process_bag(
        tmp_path / 'in', tmp_path / 'out', FrameProcessor(BandSegmenter()), progress=False,
        outputs=Outputs(True, False, False), log=warnings.append,
    )  # fmt: skip
    assert report.image_topic == topic  # found without --image-topic
    assert report.frames == 2 and report.bad_frames == {'compressed_data': 1}
    assert len(warnings) == 1 and 'cannot decode' in warnings[0] and topic in warnings[0]
    masks = [
        TYPESTORE.deserialize_cdr(d, 'sensor_msgs/msg/Image')
        for c, _, d in read_bag(tmp_path / 'out')
        if c == '/semseg_node/mask'
    ]
    assert [m.header.stamp.nanosec for m in masks] == [50_000_000, 150_000_000]
    for mask, bgr in zip(masks, (frames[0], frames[2]), strict=True):
        assert mask.header.frame_id == FRAME_ID and (mask.height, mask.width) == (24, 32)
        np.testing.assert_array_equal(mask.data.reshape(24, 32), band_ids(bgr[..., ::-1]))


def _peak_memory(tmp_path: Path, frames: int) -> int:
    write_input_bag(tmp_path / f'in{frames}', frames=frames, size=(800, 600))
    processor = FrameProcessor(BandSegmenter())
    tracemalloc.start()
    try:
        bag.process_bag(
            tmp_path / f'in{frames}', tmp_path / f'out{frames}', processor,
            outputs=Outputs(True, False, False), progress=False,
        )  # fmt: skip
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streams_instead_of_loading_the_bag(tmp_path: Path) -> None:
    # 8 vs 32 frames of 800x600 bgra8 (15 vs 61 MB): memory must not grow with the bag.
    small, large = _peak_memory(tmp_path, 8), _peak_memory(tmp_path, 32)
    assert large < 1.15 * small, f'peak {small / 1e6:.0f} MB -> {large / 1e6:.0f} MB'


def test_cli_with_an_exported_model(tmp_path: Path, tiny_model: Path, capsys) -> None:
    write_input_bag(tmp_path / 'in', frames=3)
    args = [str(tmp_path / 'in'), str(tmp_path / 'out'), '--model', str(tiny_model),
            '--backend', 'onnxruntime', '--device', 'cpu', '--no-progress']  # fmt: skip
    assert bag.main(args, prog='semseg bag') == 0
    assert 'wrote' in capsys.readouterr().out
    masks = [d for c, _, d in read_bag(tmp_path / 'out') if c == '/semseg_node/mask']
    assert len(masks) == 3
    mask = TYPESTORE.deserialize_cdr(masks[0], 'sensor_msgs/msg/Image')
    assert mask.encoding == 'mono8' and int(mask.data.max()) < 13
    # Errors name the problem: an existing OUT, a missing model.
    assert bag.main(args, prog='semseg bag') == 1
    assert '--overwrite' in capsys.readouterr().err
    missing = [*args[:3], str(tmp_path / 'nope.onnx'), *args[4:]]
    assert bag.main([str(tmp_path / 'in'), str(tmp_path / 'o2'), *missing[2:]]) == 1
    assert 'does not exist' in capsys.readouterr().err


# --- A real exported model (shared with test_graph.py) --------------------------------------


def export_tiny_model(folder: Path) -> Path:
    """A tiny UNet (lyft13, 64x48 input) exported by training.export, as a user would."""
    torch = pytest.importorskip('torch')
    from semseg_ros.pipeline import Normalization
    from training.checkpoint import Checkpoint, save_checkpoint
    from training.export import export_onnx
    from training.model import UNetConfig, build_model

    torch.manual_seed(0)
    config = UNetConfig(num_classes=13, base_channels=4, depth=2)
    checkpoint = Checkpoint(
        model_config=config.to_dict(),
        class_set=LYFT13.to_dict(),
        normalization=Normalization().to_dict(),
        input_size=[64, 48],
        model_state=build_model(config).state_dict(),
    )
    save_checkpoint(checkpoint, folder / 'tiny.pt')
    export_onnx(folder / 'tiny.pt', folder / 'tiny.onnx', verify=False)
    return folder / 'tiny.onnx'


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp('model'))
