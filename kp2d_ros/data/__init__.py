"""kp2d_ros.data"""
