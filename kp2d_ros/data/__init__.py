"""Input data: image-folder datasets (KITTI, TUM RGB-D, EuRoC), ROS bags, a synthetic scene.

:func:`open_sequence` recognises the layout and returns a :class:`Sequence` of
:class:`kp2d_ros.types.Frame` with intrinsics and ground truth; :func:`write_bag` writes rosbag2
bags from any sequence.
"""
from kp2d_ros.data.bag_writer import write_bag
from kp2d_ros.data.bags import list_topics, read_trajectory_topic
from kp2d_ros.data.camera_yaml import read_camera_yaml, write_camera_yaml
from kp2d_ros.data.dataset import detect_layout, open_sequence
from kp2d_ros.data.images import load_image
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.data.trajectory_io import read_kitti_poses, read_tum, write_tum

__all__ = [
    "Sequence", "detect_layout", "list_topics", "load_image", "open_sequence", "read_camera_yaml",
    "read_kitti_poses", "read_trajectory_topic", "read_tum", "write_bag", "write_camera_yaml", "write_tum",
]
