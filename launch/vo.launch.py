"""Monocular VO: ``ros2 launch kp2d_ros vo.launch.py [image:=...] [camera_info:=...] [use_rviz:=true] [bag:=DIR]``.

Arguments
    params_file   the node's parameters (default: the installed config/vo.yaml)
    image         image topic (sensor_msgs/Image, or CompressedImage with ros.compressed: true)
    camera_info   CameraInfo topic (without one, set camera.fx/fy/cx/cy in the params file)
    namespace     vo_node's namespace (default: none), e.g. robot1: its topics become /robot1/odom, ...,
                  its services /robot1/kp2d_vo/reset, ...; image and camera_info, when relative, are
                  resolved in it too. /tf and /diagnostics stay global (set the ros.*_frame parameters
                  to tell robots apart in TF). RViz's displays keep the global topic names.
    use_rviz      start RViz with config/vo.rviz (needs rviz2, which this package does not depend on)
    bag           a rosbag2 to play with ``ros2 bag play --clock`` (empty: none)
    bag_delay     seconds ``ros2 bag play`` waits before playing, so that no frame is sent while
                  vo_node is still loading torch and its networks (default 8)
    use_sim_time  vo_node on the bag's /clock (default: true with bag:=, else false)
    dds_profile   a Fast DDS XML profile for every process started here, e.g. the installed
                  config/fastdds_shm.xml (large shared-memory segments, UDP on loopback only: one
                  machine). Empty (default): the environment's own FASTDDS_DEFAULT_PROFILES_FILE, if any,
                  is left as it is.
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
    dds_profile = LaunchConfiguration("dds_profile")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "vo.yaml"),
                              description="vo_node parameters (VOConfig as a ROS params file)"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("namespace", default_value="", description="vo_node's namespace (empty: none)"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="start RViz (rviz2 must be installed)"),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2 to play (empty: none)"),
        DeclareLaunchArgument("bag_delay", default_value="8.0",
                              description="seconds ros2 bag play waits before playing (vo_node start-up)"),
        DeclareLaunchArgument("use_sim_time", default_value=PythonExpression(["'", bag, "' != ''"]),
                              description="vo_node on /clock (default: true when a bag is played)"),
        DeclareLaunchArgument("dds_profile", default_value="",
                              description="Fast DDS XML profile, e.g. "
                              + os.path.join(share, "config", "fastdds_shm.xml")
                              + " (one machine only); empty: leave the environment as it is"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", dds_profile,
                               condition=IfCondition(PythonExpression(["'", dds_profile, "' != ''"]))),
        Node(
            package="kp2d_ros",
            executable="vo_node",
            name="kp2d_vo",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("params_file"), {"use_sim_time": LaunchConfiguration("use_sim_time")}],
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
            cmd=["ros2", "bag", "play", bag, "--clock", "--delay", LaunchConfiguration("bag_delay")],
            output="screen",
            condition=IfCondition(PythonExpression(["'", bag, "' != ''"])),
        ),
    ])
