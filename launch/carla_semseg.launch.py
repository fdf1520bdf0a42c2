"""CARLA bridge + example ego vehicle (our sensors) + semseg_node with ground truth + rviz2.

Start the CARLA 0.9.13 server first (`./CarlaUE4.sh`), then:

    ros2 launch semseg_ros carla_semseg.launch.py model:=/path/to/model.onnx town:=Town03

The bridge's `carla_ros_bridge_with_example_ego_vehicle.launch.py` also starts
carla_manual_control (a pygame window showing rgb_view: click it, then drive with WASD or
press P for autopilot). Its sensors come from our config/carla_objects.json: rgb_front and a
semantic_segmentation_front of the same pose, size and fov, so ground truth lines up.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.conditions import LaunchConfigurationNotEquals
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'semseg_ros'
PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
ROLE_NAME = 'ego_vehicle'  # the vehicle id in config/carla_objects.json


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
            'rviz', default_value='true', description='Start rviz2 with config/semseg.rviz'
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
    semseg = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch', 'semseg.launch.py'])),
        launch_arguments={
            'model': LaunchConfiguration('model'),
            'image_topic': f'/carla/{ROLE_NAME}/rgb_front/image',
            'ground_truth': 'true',
            'gt_topic': f'/carla/{ROLE_NAME}/semantic_segmentation_front/image',
            'use_sim_time': 'true',  # the bridge runs synchronous and publishes /clock
            'fastdds_profile': LaunchConfiguration('fastdds_profile'),
            'rviz': LaunchConfiguration('rviz'),
        }.items(),
    )
    return LaunchDescription([*arguments, fastdds_profile, bridge, semseg])
