"""Launch semseg_node with config/semseg.yaml, and rviz2 if asked.

    ros2 launch semseg_ros semseg.launch.py model:=/path/to/model.onnx
    ros2 launch semseg_ros semseg.launch.py model:=... image_topic:=/my/camera/image rviz:=true

`ros2 launch semseg_ros semseg.launch.py --show-args` lists every argument with its default.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, LaunchConfigurationNotEquals
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'semseg_ros'
PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'


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
            'model',
            default_value=PathJoinSubstitution([share, 'models', 'semseg_demo.onnx']),
            description='Model file for the node (model_path): .onnx, .engine or checkpoint',
        ),
        DeclareLaunchArgument(
            'image_topic',
            default_value='/carla/ego_vehicle/rgb_front/image',
            description='Camera topic (sensor_msgs/Image: bgra8, bgr8, rgba8, rgb8 or mono8)',
        ),
        DeclareLaunchArgument(
            'ground_truth',
            default_value='false',
            description='Subscribe gt_topic and report online IoU on /diagnostics',
        ),
        DeclareLaunchArgument(
            'gt_topic',
            default_value='/carla/ego_vehicle/semantic_segmentation_front/image',
            description='Ground-truth segmentation camera topic (CityScapes palette colours)',
        ),
        DeclareLaunchArgument(
            'namespace',
            default_value='',
            description='Namespace of the node: outputs become /<namespace>/semseg_node/...',
        ),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', 'semseg.yaml']),
            description='ROS params file for semseg_node',
        ),
        DeclareLaunchArgument(
            'use_sim_time',
            default_value='false',
            description='Use /clock (true with CARLA or `ros2 bag play --clock`)',
        ),
        DeclareLaunchArgument(
            'rviz',
            default_value='false',
            description='Start rviz2 with config/semseg.rviz (camera, colour mask, overlay)',
        ),
        DeclareLaunchArgument(
            'rviz_config',
            default_value=PathJoinSubstitution([share, 'config', 'semseg.rviz']),
            description='rviz2 configuration file',
        ),
    ]
    # Before the nodes: the publisher's profile counts most, so the bridge gets it too.
    fastdds_profile = SetEnvironmentVariable(
        PROFILE_ENV,
        LaunchConfiguration('fastdds_profile'),
        condition=LaunchConfigurationNotEquals('fastdds_profile', ''),
    )
    use_sim_time = ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)
    node = Node(
        package=PACKAGE,
        executable='semseg_node',
        name='semseg_node',
        namespace=LaunchConfiguration('namespace'),
        # Later entries win: the YAML first, then the launch arguments.
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'model_path': ParameterValue(LaunchConfiguration('model'), value_type=str),
                'ground_truth': ParameterValue(
                    LaunchConfiguration('ground_truth'), value_type=bool
                ),
                'use_sim_time': use_sim_time,
            },
        ],
        remappings=[
            ('image', LaunchConfiguration('image_topic')),
            ('ground_truth', LaunchConfiguration('gt_topic')),
        ],
        output='screen',
        emulate_tty=True,
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', LaunchConfiguration('rviz_config')],
        parameters=[{'use_sim_time': use_sim_time}],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    return LaunchDescription([*arguments, fastdds_profile, node, rviz])
