"""semseg_ros: an ament_python ROS 2 package that also installs with pip.

`colcon build` reads this file (ROS users); `pip install -e .[train,test]` reads it too
(people without ROS).  Runtime dependencies stay lean; torch is only in the `train` extra
and is never pinned here, so GPU users keep their CUDA build.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = 'semseg_ros'
SHARE = f'share/{PACKAGE}'
# The folder training/ installs as the package semseg_ros_training, so it never collides with
# another distribution's top-level `training`; in a checkout it stays the package `training`
# (`python -m training.train`). Its imports of its own modules are relative, so both work;
# the runtime finds it through semseg_ros/training_half.py (docs/architecture.md).
TRAINING = 'semseg_ros_training'
TRAINING_PACKAGES = [
    TRAINING + name.removeprefix('training')
    for name in find_packages(include=['training', 'training.*'])
]

RUNTIME = [
    'numpy>=1.23',
    'opencv-python-headless>=4.8',
    'pyyaml>=6',
    'onnxruntime>=1.17',
    'tqdm>=4.60',
]
TRAIN = [
    'torch>=2.3',
    'tensorboard>=2.14',
    'matplotlib>=3.7',
    'onnx>=1.16',  # export: onnx.checker, graph edits; the runtime reads metadata without it
    'sympy',  # onnxruntime's quantization tools import it
]
# The OpenVINO CPU engine (`backend=auto` picks it on a CPU: `make bench`) and NNCF, which
# makes its INT8 IR (`semseg export --openvino-int8`). The node runs without them (onnxruntime).
OPENVINO = ['openvino>=2026.4,<2027', 'nncf>=3.4,<4']
# TensorRT engines, for the GPU machine that runs the node. pycuda builds from source (no
# binary wheel): it needs the CUDA toolkit (nvcc, cuda.h) and a C++ compiler (README, GPU).
# onnxruntime-gpu is not listed: it and the runtime's onnxruntime install the same module and
# overwrite each other; replace one with the other by hand (README, GPU).
GPU = ['tensorrt>=10', 'pycuda>=2024.1']
TEST = [
    'pytest>=8',
    'pytest-timeout>=2.3',
    'hypothesis>=6.100',  # test/test_fuzz.py: generated hostile messages
    'pytest-cov>=6',  # `make test` records what ran (.coverage) and prints the table
    'coverage>=7.10',  # its `patch = subprocess` measures the node and tools we start
    'ruff>=0.6',
    'torchmetrics>=1.3',
    'colcon-common-extensions>=0.3',
    'rosbags>=0.10',  # ROS 2 bags without ROS: the recorder, the bag tool and their checks
    'rosbags-image>=0.10',  # a cv_bridge port, to check semseg_ros.imaging against
    'carla==0.9.16',  # the collector's real no-server time-out is tested
]
# ROS 2 from PyPI for machines without a ROS install (CPython 3.10-3.13 on x86_64 Linux):
# ROS 2 Kilted's rclpy on Fast DDS and the message packages the node, replay, record and the
# demo use. With a sourced ROS 2 install (Humble, Jazzy, Kilted) this extra is not needed.
_ROS_WHEELS = (
    'platform_system == "Linux" and platform_machine == "x86_64" and python_version < "3.14"'
)
ROS = [
    f'{name}; {_ROS_WHEELS}'
    for name in (
        'ros-kilted-rclpy[fastrtps]>=9.1',
        'ros-kilted-sensor-msgs>=5.5',
        'ros-kilted-std-msgs>=5.5',
        'ros-kilted-diagnostic-msgs>=5.5',
        'ros-kilted-rosgraph-msgs>=2.3',
    )
] + ['rosbags>=0.10']  # record writes bags; replay and the bag tool read them

setup(
    name=PACKAGE,
    version='0.1.0',
    description='Real-time semantic segmentation of CARLA camera streams for ROS 2',
    # resolve(): colcon build --symlink-install runs a symlink to this file in build/
    long_description=(Path(__file__).resolve().parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    maintainer='semseg_ros developers',
    maintainer_email='semseg-ros@example.com',
    python_requires='>=3.10',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']) + TRAINING_PACKAGES,
    package_dir={TRAINING: 'training'},
    package_data={TRAINING: ['configs/*.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (SHARE, ['package.xml']),
        (f'{SHARE}/launch', glob('launch/*.launch.py')),
        (
            f'{SHARE}/config',
            glob('config/*.yaml')
            + glob('config/*.json')
            + glob('config/*.rviz')
            + glob('config/*.xml'),
        ),
        (f'{SHARE}/config/class_sets', glob('config/class_sets/*.yaml')),
        (
            f'{SHARE}/models',
            sorted(glob('models/*.onnx') + glob('models/*.xml') + glob('models/*.bin'))
            + glob('models/*.md'),
        ),
    ],
    install_requires=RUNTIME,
    # `carla`: the CARLA client for `semseg data collect` (needs a running CARLA server).
    extras_require={
        'train': TRAIN,
        'test': TEST,
        'ros': ROS,
        'gpu': GPU,
        'openvino': OPENVINO,
        'bag': ['rosbags>=0.10'],
        'carla': ['carla==0.9.16'],
    },
    zip_safe=True,
    entry_points={
        'console_scripts': [
            'semseg = semseg_ros.cli:main',
            'semseg_node = semseg_ros.node:main',
        ],
    },
)
