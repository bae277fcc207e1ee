"""kp2d_ros.training"""
