"""kp2d_ros.ros"""
