"""kp2d_ros: monocular visual odometry with learned keypoints (KP2D) for ROS 2.

The core (networks, matching, geometry, pipeline) has no ROS in it; only ``kp2d_ros.ros``
imports rclpy. Importing this package has no side effects.
"""
__version__ = "0.1.0"
