"""TF output of vo_node: tf2_ros broadcasters when importable, else raw tf2_msgs on /tf, else nothing.

tf2_ros is not installable from PyPI; with only tf2_msgs the node still publishes the same
transforms on ``/tf`` and ``/tf_static`` (transient local), and without either it logs once and
keeps publishing odometry and path.
"""
from __future__ import annotations

from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy


class TfOutput:
    """map -> odom -> base (and static base -> camera) through tf2_ros, else raw /tf messages, else nothing."""

    def __init__(self, node: Node):
        self.mode = "none"
        try:
            import tf2_ros

            self._dynamic = tf2_ros.TransformBroadcaster(node)
            self._static = tf2_ros.StaticTransformBroadcaster(node)
            self.mode = "tf2_ros"
            return
        except ImportError:
            pass
        try:
            from tf2_msgs.msg import TFMessage

            self._msg = TFMessage
            self._dynamic = node.create_publisher(TFMessage, "/tf", 100)
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self._static = node.create_publisher(TFMessage, "/tf_static", latched)
            self.mode = "tf2_msgs"
        except ImportError:
            node.get_logger().info("TF output unavailable (neither tf2_ros nor tf2_msgs importable): "
                                   "publishing odom/path only")

    def send(self, *tfs: TransformStamped, static: bool = False) -> None:
        """Publish ``tfs`` together (one message)."""
        if self.mode == "tf2_ros":
            (self._static.sendTransform if static else self._dynamic.sendTransform)(list(tfs))
        elif self.mode == "tf2_msgs":
            (self._static if static else self._dynamic).publish(self._msg(transforms=list(tfs)))
