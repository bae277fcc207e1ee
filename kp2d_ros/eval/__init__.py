"""kp2d_ros.eval"""
