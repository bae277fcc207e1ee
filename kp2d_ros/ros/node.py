"""``vo_node``: the ROS 2 adapter around :class:`kp2d_ros.pipeline.VOPipeline`.

Per image: message -> :class:`Frame` -> one ``pipeline.process`` call -> messages. The image
callback only stores the newest message; a worker thread processes the newest one when it is
free, so stale frames never queue up (replaced frames are counted as dropped).

Subscribes  ``image`` (sensor_msgs/Image, or CompressedImage with ``ros.compressed``), ``camera_info``.
Publishes   ``odom`` (odom -> base), ``path``, ``keypoints`` (PointCloud2: u, v, score, matched + x, y, z rays),
            ``debug_image`` (only with subscribers), ``diagnostics`` (1 Hz), TF odom -> base.
Parameters  the fields of :class:`kp2d_ros.config.VOConfig`, dotted (``frontend.type``).
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry, Path
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from kp2d_ros.errors import DataError, Kp2dError
from kp2d_ros.ros import conversions as conv
from kp2d_ros.ros.params import declare_parameters, read_config
from kp2d_ros.ros.tf_output import TfOutput
from kp2d_ros.types import Frame, PoseEstimate, TrackingStatus

WARN_PERIOD_S = 5.0
BACKWARD_RESET_S = 1.0  # a stamp this far in the past restarts the trajectory (a bag replayed again)
_LEVELS = {TrackingStatus.TRACKING: DiagnosticStatus.OK, TrackingStatus.STATIC: DiagnosticStatus.OK,
           TrackingStatus.INITIALIZING: DiagnosticStatus.WARN, TrackingStatus.LOST: DiagnosticStatus.WARN}


class VONode(Node):
    """Monocular VO node. ``pipeline`` may be injected (tests); otherwise built from the parameters."""

    def __init__(self, pipeline=None, **kwargs):
        # What destroy_node needs, set first: rclpy's context shutdown destroys a node whose
        # __init__ raised, and that must not hide the real error behind an AttributeError.
        self._cond = threading.Condition()
        self._stop = False
        self._worker: threading.Thread | None = None
        kwargs.setdefault("automatically_declare_parameters_from_overrides", True)
        super().__init__(kwargs.pop("node_name", "kp2d_vo"), **kwargs)
        declare_parameters(self)
        self.cfg = read_config(self)  # raises ConfigError naming the parameter
        if pipeline is None:
            from kp2d_ros.pipeline import VOPipeline

            pipeline = VOPipeline(self.cfg)
        self.pipeline = pipeline
        self._log_models()
        rc = self.cfg.ros
        self.T_base_cam = conv.xyzquat_to_matrix(rc.camera_to_base)

        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=rc.qos_depth,
                                reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, sensor_qos)
        self.create_subscription(CompressedImage if rc.compressed else Image, "image", self._on_image, sensor_qos)
        self.pub_odom = self.create_publisher(Odometry, "odom", 10)
        self.pub_path = self.create_publisher(Path, "path", 10)
        self.pub_keypoints = self.create_publisher(PointCloud2, "keypoints", 10)
        self.pub_debug = self.create_publisher(Image, "debug_image", 1)  # reliable: rviz and image_view
        self.pub_diag = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        self.tf = TfOutput(self) if rc.publish_tf else None
        if self.tf is not None:
            self.tf.send(self._transform(self.T_base_cam, self.get_clock().now().to_msg(),
                                         rc.base_frame, rc.camera_frame), static=True)

        self.path = Path()
        self.path.header.frame_id = rc.odom_frame
        self._path_poses: collections.deque = collections.deque(maxlen=rc.max_path_length)
        self.stats = collections.Counter()  # received, processed, dropped, rejected, errors
        self.last_warning = ""
        self.last_estimate: PoseEstimate | None = None
        self._latency_ms: collections.deque = collections.deque(maxlen=200)
        self._warned_at: dict[str, float] = {}
        self._camera_info = None
        self._last_stamp: float | None = None
        self._index = 0
        self._pending = None  # (msg, receipt time): the newest unprocessed image
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="vo_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"vo_node up: frontend {self.cfg.frontend.type}, "
                               f"{'compressed' if rc.compressed else 'raw'} images, TF {self.tf.mode if self.tf else 'off'}")

    def _log_models(self) -> None:
        """Log each network file the pipeline loaded, with its metadata (which copy was found)."""
        for part in (getattr(self.pipeline, "frontend", None), getattr(self.pipeline, "scorer", None)):
            model = getattr(part, "model", None)
            if getattr(model, "source_path", None) is not None:
                from kp2d_ros.networks.weights import model_summary  # torch is loaded already

                self.get_logger().info(f"model: {model_summary(model)}")

    # ---------------------------------------------------------------- callbacks (executor thread)
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            cam = conv.camera_info_to_camera(msg, rectified=self.cfg.camera.rectified)
        except DataError as e:
            self.stats["camera_info_rejected"] += 1
            self._warn("camera_info", f"ignoring CameraInfo: {e}")
            return
        with self._cond:
            self.stats["camera_info"] += 1
            self._camera_info = cam
            self._cond.notify()

    def _on_image(self, msg) -> None:
        with self._cond:
            self.stats["received"] += 1
            if self._pending is not None:
                self.stats["dropped"] += 1
            self._pending = (msg, time.monotonic())
            self._cond.notify()

    # ---------------------------------------------------------------- worker thread
    def _have_intrinsics(self) -> bool:
        return self._camera_info is not None or self.cfg.camera.is_set

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (self._pending is None or not self._have_intrinsics()):
                    if self._pending is not None:
                        self._warn("no_camera", "waiting for camera_info (or camera.fx/fy parameters) "
                                                "before processing images")
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    return
                (msg, t_recv), self._pending = self._pending, None
                camera_info = self._camera_info
            try:
                self._process(msg, t_recv, camera_info)
            except Exception as e:  # noqa: BLE001 - the node outlives any single bad frame
                if self._stop:  # shutting down: publishers may be gone already
                    return
                self.stats["errors"] += 1
                detail = "" if isinstance(e, Kp2dError) else "\n" + traceback.format_exc()
                self._warn(f"error:{type(e).__name__}", f"frame dropped: {type(e).__name__}: {e}{detail}",
                           error=True)

    def _process(self, msg, t_recv: float, camera_info) -> None:
        try:
            frame = self._to_frame(msg, camera_info)
        except DataError as e:
            self.stats["rejected"] += 1
            self._warn(f"reject:{str(e)[:40]}", f"image rejected: {e}")
            return
        estimate = self.pipeline.process(frame)
        self._last_stamp = frame.stamp
        self._publish(estimate, frame, msg.header.stamp, t_recv)

    def _to_frame(self, msg, camera_info) -> Frame:
        image = conv.compressed_to_array(msg) if self.cfg.ros.compressed else conv.image_to_array(msg)
        h, w = image.shape[:2]
        cam = conv.camera_for_image(camera_info, w, h) if camera_info is not None else \
            conv.camera_from_config(self.cfg.camera, w, h)
        stamp = conv.stamp_to_sec(msg.header.stamp)
        if stamp == 0.0:  # unset stamps: use the receipt time so frames stay ordered
            self._warn("zero_stamp", "image header stamp is 0: using the node clock")
            msg.header.stamp = self.get_clock().now().to_msg()
            stamp = conv.stamp_to_sec(msg.header.stamp)
        if self._last_stamp is not None and stamp <= self._last_stamp:
            if stamp < self._last_stamp - BACKWARD_RESET_S:
                self._warn("reset", f"time jumped back {self._last_stamp - stamp:.3f} s: restarting the trajectory")
                self.reset()
            else:
                raise DataError(f"stamp {stamp:.9f} not after the previous frame's {self._last_stamp:.9f}")
        self._index += 1
        return Frame(image=image, camera=cam, stamp=stamp, index=self._index - 1)

    def reset(self) -> None:
        """Forget the trajectory (the pipeline, the path and the stamp history)."""
        self.pipeline.reset()
        self._last_stamp = None
        self._path_poses.clear()

    # ---------------------------------------------------------------- output
    def _publish(self, est: PoseEstimate, frame: Frame, stamp, t_recv: float) -> None:
        rc = self.cfg.ros
        T_odom_base = conv.camera_to_base_pose(est.T_world_cam, self.T_base_cam)
        odom = Odometry()
        odom.header.stamp = stamp
        odom.header.frame_id = rc.odom_frame
        odom.child_frame_id = rc.base_frame
        conv.fill_pose(odom.pose.pose, T_odom_base)
        odom.pose.covariance = conv.pose_covariance(est.quality, est.status)
        odom.twist.covariance[0] = -1.0  # twist not estimated
        self.pub_odom.publish(odom)

        ps = PoseStamped(header=odom.header, pose=odom.pose.pose)
        self._path_poses.append(ps)
        self.path.header.stamp = stamp
        self.path.poses = list(self._path_poses)
        self.pub_path.publish(self.path)

        cam_header = Header(stamp=stamp, frame_id=rc.camera_frame)
        self.pub_keypoints.publish(conv.keypoints_to_cloud(est, PointCloud2, PointField, cam_header, frame.camera.K))
        if self.pub_debug.get_subscription_count() > 0:
            self.pub_debug.publish(conv.array_to_image(conv.draw_debug(frame.image, est), Image, stamp,
                                                       rc.camera_frame))
        if self.tf is not None:
            self.tf.send(self._transform(T_odom_base, stamp, rc.odom_frame, rc.base_frame))
        self.stats["processed"] += 1
        self.last_estimate = est
        self._latency_ms.append((time.monotonic() - t_recv) * 1e3)

    @staticmethod
    def _transform(T: np.ndarray, stamp, parent: str, child: str) -> TransformStamped:
        tf = TransformStamped()
        tf.header.stamp = stamp
        tf.header.frame_id = parent
        tf.child_frame_id = child
        conv.fill_transform(tf.transform, T)
        return tf

    def diagnostics(self) -> DiagnosticStatus:
        """Tracking state, counts and latency as one DiagnosticStatus."""
        est = self.last_estimate
        lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
        st = DiagnosticStatus(name="kp2d_ros: visual odometry", hardware_id=self.cfg.ros.camera_frame)
        st.level = _LEVELS[est.status] if est is not None else DiagnosticStatus.WARN
        st.message = est.status.value if est is not None else "waiting for images"
        values = {
            "status": st.message,
            **{k: str(self.stats[k]) for k in ("received", "processed", "dropped", "rejected", "errors",
                                                "camera_info_rejected")},
            "num_features": str(est.num_features if est else 0),
            "num_matches": str(est.num_matches if est else 0),
            "num_inliers": str(est.num_inliers if est else 0),
            "quality": f"{est.quality:.3f}" if est else "0",
            "latency_ms_median": f"{np.median(lat):.1f}",
            "latency_ms_max": f"{np.max(lat):.1f}",
            "processing_ms": f"{est.timings_ms.get('total', 0.0):.1f}" if est else "0",
            "last_warning": self.last_warning,
        }
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return st

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray(status=[self.diagnostics()])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def _warn(self, key: str, text: str, error: bool = False) -> None:
        """Log ``text`` at most once per WARN_PERIOD_S for each ``key``."""
        self.last_warning = text.splitlines()[0]
        now = time.monotonic()
        if now - self._warned_at.get(key, -1e9) >= WARN_PERIOD_S:
            self._warned_at[key] = now
            (self.get_logger().error if error else self.get_logger().warning)(text)

    def destroy_node(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None and self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=1.5)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script ``vo_node`` (``ros2 run kp2d_ros vo_node --ros-args --params-file ...``)."""
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = VONode()
        rclpy.spin(node)
    except Kp2dError as e:
        print(f"vo_node: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
