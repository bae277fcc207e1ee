"""Monocular VO: ``ros2 launch kp2d_ros vo.launch.py [image:=...] [camera_info:=...] [use_rviz:=true] [bag:=DIR]``.

Arguments
    params_file   the node's parameters (default: the installed config/vo.yaml)
    image         image topic (sensor_msgs/Image, or CompressedImage with ros.compressed: true)
    camera_info   CameraInfo topic (without one, set camera.fx/fy/cx/cy in the params file)
    use_rviz      start RViz with config/vo.rviz
    bag           a rosbag2 to play with ``ros2 bag play`` (empty: none)
    dds_profile   Fast DDS profile with large shared-memory segments (default: config/fastdds_shm.xml)
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("kp2d_ros")
    bag = LaunchConfiguration("bag")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "vo.yaml"),
                              description="vo_node parameters (VOConfig as a ROS params file)"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz"),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2 to play (empty: none)"),
        DeclareLaunchArgument("dds_profile", default_value=os.path.join(share, "config", "fastdds_shm.xml"),
                              description="Fast DDS profile (large shared-memory segments for images)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("dds_profile")),
        Node(
            package="kp2d_ros",
            executable="vo_node",
            name="kp2d_vo",
            output="screen",
            parameters=[LaunchConfiguration("params_file")],
            remappings=[
                ("image", LaunchConfiguration("image")),
                ("camera_info", LaunchConfiguration("camera_info")),
            ],
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", os.path.join(share, "config", "vo.rviz")],
            condition=IfCondition(LaunchConfiguration("use_rviz")),
        ),
        ExecuteProcess(
            cmd=["ros2", "bag", "play", bag],
            output="screen",
            condition=IfCondition(PythonExpression(["'", bag, "' != ''"])),
        ),
    ])
