"""kp2d_ros.networks"""
