"""CARLA bridge + example ego vehicle (our sensors) + semseg_node with ground truth + rviz2.

Start the CARLA 0.9.13 server first (`./CarlaUE4.sh`), then:

    ros2 launch semseg_ros carla_semseg.launch.py model:=/path/to/model.onnx town:=Town03

The bridge's `carla_ros_bridge_with_example_ego_vehicle.launch.py` also starts
carla_manual_control (a pygame window showing rgb_view: click it, then drive with WASD or
press P for autopilot). Its sensors come from our config/carla_objects.json: rgb_front and a
semantic_segmentation_front of the same pose, size and fov, so ground truth lines up (and
rgb_left / rgb_right with their segmentation cameras).

`cameras:=rgb_front,rgb_left,rgb_right` starts one semseg_node per camera, each in the
namespace of its camera (/<camera>/semseg_node/...), its own process: an OpaqueFunction
expands the list when the launch runs (a substitution cannot make a variable number of
actions).
"""

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.conditions import LaunchConfigurationNotEquals
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'semseg_ros'
PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
ROLE_NAME = 'ego_vehicle'  # the vehicle id in config/carla_objects.json
RGB_PREFIX = 'rgb_'  # rgb_<side> pairs with semantic_segmentation_<side> in carla_objects.json
SEG_PREFIX = 'semantic_segmentation_'


def camera_list(text: str) -> list[str]:
    """``'rgb_front, rgb_left'`` -> ``['rgb_front', 'rgb_left']``; each must be an rgb_<side>."""
    cameras = [c.strip() for c in text.split(',') if c.strip()]
    bad = [c for c in cameras if not c.startswith(RGB_PREFIX)]
    if not cameras or bad or len(set(cameras)) != len(cameras):
        msg = (
            f'cameras:={text!r}: give distinct rgb_<side> camera ids of carla_objects.json, '
            'comma-separated, e.g. cameras:=rgb_front,rgb_left,rgb_right'
        )
        raise ValueError(msg)
    return cameras


def semseg_nodes(context, share):
    """One semseg.launch.py per camera of ``cameras``, each in its camera's namespace, with
    that camera's segmentation camera as ground truth; rviz2 once, showing all of them."""
    cameras = camera_list(context.launch_configurations['cameras'])
    single = cameras == ['rgb_front']  # the default keeps the root namespace: /semseg_node/...
    rviz_config = (
        PathJoinSubstitution([share, 'config', 'semseg.rviz'])
        if single
        else PathJoinSubstitution([share, 'config', 'semseg_multi.rviz'])
    )
    actions = []
    for index, camera in enumerate(cameras):
        seg_camera = SEG_PREFIX + camera.removeprefix(RGB_PREFIX)
        actions.append(
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(
                    PathJoinSubstitution([share, 'launch', 'semseg.launch.py'])
                ),
                launch_arguments={
                    'model': LaunchConfiguration('model'),
                    'namespace': '' if single else camera,
                    'image_topic': f'/carla/{ROLE_NAME}/{camera}/image',
                    'ground_truth': 'true',
                    'gt_topic': f'/carla/{ROLE_NAME}/{seg_camera}/image',
                    'use_sim_time': 'true',  # the bridge runs synchronous and publishes /clock
                    'fastdds_profile': LaunchConfiguration('fastdds_profile'),
                    'rviz': LaunchConfiguration('rviz') if index == 0 else 'false',
                    'rviz_config': rviz_config,
                }.items(),
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'fastdds_profile',
            default_value=EnvironmentVariable(
                PROFILE_ENV,
                default_value=PathJoinSubstitution([share, 'config', 'fastdds_large_data.xml']),
            ),
            description=(
                'Fast DDS profile for every process of this launch (sets FASTDDS_DEFAULT_'
                'PROFILES_FILE): '
                'large shared-memory segments, ~5 ms instead of ~15 ms per 800x600 frame. '
                "Default: yours if set, else config/fastdds_large_data.xml; '' leaves it unset"
            ),
        ),
        DeclareLaunchArgument(
            'host', default_value='localhost', description='Host of the CARLA server'
        ),
        DeclareLaunchArgument(
            'port', default_value='2000', description='TCP port of the CARLA server'
        ),
        DeclareLaunchArgument(
            'town',
            default_value='Town01',
            description='CARLA town to load (e.g. Town03) or an OpenDRIVE .xodr file',
        ),
        DeclareLaunchArgument(
            'timeout',
            default_value='10',
            description='Seconds to wait for the CARLA server to answer',
        ),
        DeclareLaunchArgument(
            'fixed_delta_seconds',
            default_value='0.05',
            description='Simulated seconds per tick (0.05 = 20 Hz camera frames)',
        ),
        DeclareLaunchArgument(
            'objects_definition_file',
            default_value=PathJoinSubstitution([share, 'config', 'carla_objects.json']),
            description='Bridge objects.json: the ego vehicle and its sensors',
        ),
        DeclareLaunchArgument(
            'model',
            default_value=PathJoinSubstitution([share, 'models', 'semseg_demo.onnx']),
            description='Model file for the node (model_path): .onnx, .engine or checkpoint',
        ),
        DeclareLaunchArgument(
            'cameras',
            default_value='rgb_front',
            description=(
                'Comma-separated RGB cameras of carla_objects.json to segment, e.g. '
                'rgb_front,rgb_left,rgb_right: one semseg_node process per camera, in the '
                'namespace /<camera> when there are several (outputs /<camera>/semseg_node/...)'
            ),
        ),
        DeclareLaunchArgument(
            'rviz',
            default_value='true',
            description='Start rviz2 with config/semseg.rviz (semseg_multi.rviz for several)',
        ),
    ]
    # Before the nodes: the publisher's profile counts most, so the bridge gets it too.
    fastdds_profile = SetEnvironmentVariable(
        PROFILE_ENV,
        LaunchConfiguration('fastdds_profile'),
        condition=LaunchConfigurationNotEquals('fastdds_profile', ''),
    )
    bridge = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution(
                [
                    FindPackageShare('carla_ros_bridge'),
                    'carla_ros_bridge_with_example_ego_vehicle.launch.py',
                ]
            )
        ),
        launch_arguments={
            'host': LaunchConfiguration('host'),
            'port': LaunchConfiguration('port'),
            'town': LaunchConfiguration('town'),
            'timeout': LaunchConfiguration('timeout'),
            'fixed_delta_seconds': LaunchConfiguration('fixed_delta_seconds'),
            'role_name': ROLE_NAME,
            # Not declared by the file we include: launch configurations flow down into the
            # launch files it includes, and carla_spawn_objects' carla_example_ego_vehicle
            # .launch.py declares and uses it (its default is the bridge's own objects.json).
            'objects_definition_file': LaunchConfiguration('objects_definition_file'),
        }.items(),
    )
    semseg = OpaqueFunction(function=semseg_nodes, args=[share])
    return LaunchDescription([*arguments, fastdds_profile, bridge, semseg])
