"""``vo_node``: the ROS 2 adapter around :class:`kp2d_ros.pipeline.VOPipeline`.

Per image: message -> :class:`Frame` -> one ``pipeline.process`` call -> messages. The image
callback only stores the newest message; a worker thread processes the newest one when it is
free, so stale frames never queue up (replaced frames are counted as dropped).

Subscribes  ``image`` (sensor_msgs/Image, or CompressedImage with ``ros.compressed``), ``camera_info``,
            ``ros.scale_odometry_topic`` (nav_msgs/Odometry, wheel odometry for the metric scale; "" = none).
Publishes   ``odom`` (odom -> base, pose + body-frame twist with covariances; ``child_frame_id`` base_link;
            REP 105's odom: continuous, the backend's corrections go into TF map -> odom;
            in metres with the exact lever arm once a metric scale source (``geometry.camera_height_m``,
            wheel odometry) is accepted; before that ``scale: unknown`` in the diagnostics, VO units, and the
            camera's motion rotated into base axes, without the lever arm), ``path`` (in map, refined as the
            backend refines its keyframes; a timer, off the worker thread, every ``ros.path_period_s``),
            ``keypoints`` (PointCloud2: u, v, score, matched + x, y, z rays), ``debug_image`` (only with
            subscribers), ``diagnostics`` (1 Hz), TF map -> odom and odom -> base (one message per frame).
Services    ``~/reset``, ``~/pause``, ``~/resume``, ``~/save_trajectory`` (std_srvs/Trigger).
Parameters  the fields of :class:`kp2d_ros.config.VOConfig`, dotted (``frontend.type``);
            :data:`kp2d_ros.ros.params.LIVE_PARAMETERS` can change while running (from the next frame).

Threads: the executor thread runs callbacks, services, the parameter callback and the path timer;
the worker thread runs the pipeline. Resets and parameter changes are applied by whichever holds
the frame lock, between two frames, so the pipeline never sees them mid-frame.
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from kp2d_ros.errors import ConfigError, DataError, Kp2dError
from kp2d_ros.geometry import invert_se3
from kp2d_ros.ros import conversions as conv
from kp2d_ros.ros.outputs import PathBuffer, TrajectoryRecorder
from kp2d_ros.ros.params import apply_changes, check_changes, declare_parameters, read_config, refresh_frontend
from kp2d_ros.ros.tf_output import TfOutput
from kp2d_ros.ros.twist import TwistTracker, unknown_twist
from kp2d_ros.scale import WheelOdometry
from kp2d_ros.types import Frame, PoseEstimate, TrackingStatus

WARN_PERIOD_S = 5.0
# The backend's windows keep landing this many keyframes late (a saturated CPU), this many windows in a row: said once
LATE_WINDOW_KEYFRAMES, LATE_WINDOW_RUN = 3, 5
BACKWARD_RESET_S = 1.0  # a stamp this far in the past restarts the trajectory (a bag replayed again)
STOP_JOIN_S = 0.1  # how long shutdown waits for the worker (a frame in progress is left behind)
_LEVELS = {TrackingStatus.TRACKING: DiagnosticStatus.OK, TrackingStatus.STATIC: DiagnosticStatus.OK,
           TrackingStatus.INITIALIZING: DiagnosticStatus.WARN, TrackingStatus.LOST: DiagnosticStatus.WARN}


class VONode(Node):
    """Monocular VO node. ``pipeline`` may be injected (tests); otherwise built from the parameters."""

    def __init__(self, pipeline=None, **kwargs):
        # What destroy_node needs, set first: rclpy's context shutdown destroys a node whose
        # __init__ raised, and that must not hide the real error behind an AttributeError.
        self._cond = threading.Condition()
        self._stop = False
        self._window_done = False  # the backend's worker finished a window since the image thread last looked
        self._worker: threading.Thread | None = None
        kwargs.setdefault("automatically_declare_parameters_from_overrides", True)
        super().__init__(kwargs.pop("node_name", "kp2d_vo"), **kwargs)
        declare_parameters(self)
        self.cfg = read_config(self)  # raises ConfigError naming the parameter
        if pipeline is None:
            from kp2d_ros.pipeline import VOPipeline

            pipeline = VOPipeline(self.cfg)
        self.pipeline = pipeline
        if hasattr(pipeline, "start_backend"):
            pipeline.start_backend()  # its process starts now, not with the first frames
        if hasattr(pipeline, "on_window_done"):
            pipeline.on_window_done(self._on_window_done)  # a window that lands between images is taken then
        self._backend_revision = 0
        self._late_windows = 0  # windows in a row that landed LATE_WINDOW_KEYFRAMES+ keyframes late
        self._log_models()
        rc = self.cfg.ros
        self.T_base_cam = conv.xyzquat_to_matrix(rc.camera_to_base)

        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=rc.qos_depth,
                                reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, sensor_qos)
        self.create_subscription(CompressedImage if rc.compressed else Image, "image", self._on_image, sensor_qos)
        self.wheel: WheelOdometry | None = None
        if rc.scale_odometry_topic:
            self.wheel = WheelOdometry(max_age_s=rc.scale_odometry_max_age_s)
            self.create_subscription(Odometry, rc.scale_odometry_topic, self._on_wheel_odometry,
                                     QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200))
        self.pub_odom = self.create_publisher(Odometry, "odom", 10)
        self.pub_path = self.create_publisher(Path, "path", 10)
        self.pub_keypoints = self.create_publisher(PointCloud2, "keypoints", 10)
        self.pub_debug = self.create_publisher(Image, "debug_image", 1)  # reliable: rviz and image_view
        # absolute, as diagnostic_updater publishes it: a namespaced node still reaches the diagnostic aggregator
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf: TfOutput | None = None
        self._ensure_tf()

        self.path = PathBuffer(rc.max_path_length)
        self.trajectory = TrajectoryRecorder()
        self.twist = TwistTracker()
        self.stats = collections.Counter()  # received, processed, dropped, rejected, errors, paused_dropped, resets
        self.last_warning = ""
        self.last_estimate: PoseEstimate | None = None
        # per published frame (ms): receipt -> odometry out, and the part of it the image waited for the image thread
        # (busy with an earlier frame, its finish() or a parameter change: when saturated, about half the images'
        # period on average, since the newest image wins); latency less wait is the frame's own work
        self._latency_ms: collections.deque = collections.deque(maxlen=200)
        self._wait_ms: collections.deque = collections.deque(maxlen=200)
        self._publish_ms = {k: collections.deque(maxlen=200) for k in ("odom", "tf", "keypoints", "path")}
        # the backend's work in this thread per frame (ms): before the pose goes out (the frame's ``backend`` stage less
        # the last finish(), which the pipeline counts in it) and after it (finish(): when saturated it delays the next
        # frame's start, which costs frames processed; the newest image's wait is set by when images arrive)
        self._backend_thread_ms = {k: collections.deque(maxlen=200) for k in ("before_pose", "after_pose")}
        self._finish_ms = 0.0  # the last finish(), not yet counted in a frame's backend stage
        self._warned_at: dict[str, float] = {}  # keyed on the kind of event: a fixed, small set
        self._camera_info = None
        self._last_stamp: float | None = None  # the stamp the last processed frame was given
        self._last_header_stamp: float | None = None  # the last non-zero header stamp processed
        self._last_receipt: float | None = None  # monotonic receipt time of the last processed frame
        self._header_interval: float | None = None  # between the last two non-zero header stamps
        self._index = 0
        self._pending = None  # (msg, receipt time): the newest unprocessed image
        self._frame_lock = threading.Lock()  # held by whoever touches the pipeline: one frame or one change
        self._reset_requested = False
        self._twist_reset_requested = False
        self._param_changes: dict = {}  # accepted live changes not yet applied: {name: value}
        self._param_cfg = self.cfg  # the configuration the accepted parameters describe
        self._paused = False
        self._destroyed = False
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.create_service(Trigger, "~/pause", self._srv_pause)
        self.create_service(Trigger, "~/resume", self._srv_resume)
        self.create_service(Trigger, "~/save_trajectory", self._srv_save)
        self.create_timer(1.0, self._publish_diagnostics)
        self._path_timer = self.create_timer(rc.path_period_s, self._publish_path)
        self._worker = threading.Thread(target=self._work, name="vo_worker", daemon=True)
        self._worker.start()
        tf_mode = self.tf.mode if self.tf else "off"
        self.get_logger().info(f"vo_node up: frontend {self.cfg.frontend.type}, "
                               f"{'compressed' if rc.compressed else 'raw'} images, TF {tf_mode}")

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

    def _on_wheel_odometry(self, msg: Odometry) -> None:
        p = msg.pose.pose.position
        with self._cond:
            self.stats["wheel_odometry"] += 1
            warning = self.wheel.add(conv.stamp_to_sec(msg.header.stamp), (p.x, p.y, p.z))
        if warning:
            self._warn("wheel_odometry", warning)

    def _on_image(self, msg) -> None:
        with self._cond:
            self.stats["received"] += 1
            if self._paused:
                self.stats["paused_dropped"] += 1
                return
            if self._pending is not None:
                self.stats["dropped"] += 1
            self._pending = (msg, time.monotonic())
            self._cond.notify()

    # ---------------------------------------------------------------- services (executor thread)
    def _srv_reset(self, request, response):
        with self._cond:
            self._reset_requested = True
        self._apply_if_idle()
        response.success = True
        response.message = "trajectory restarts at the identity with the next frame"
        return response

    def _srv_pause(self, request, response):
        with self._cond:
            was, self._paused = self._paused, True
            if self._pending is not None:
                self._pending = None
                self.stats["paused_dropped"] += 1
        response.success = True
        response.message = "already paused" if was else "paused: images are counted and dropped until ~/resume"
        return response

    def _srv_resume(self, request, response):
        with self._cond:
            was, self._paused = self._paused, False
            self._twist_reset_requested = True  # the first step after a pause spans it: velocity unknown
        response.success = True
        response.message = f"resumed ({self.stats['paused_dropped']} images dropped while paused)" if was \
            else "not paused"
        return response

    def _srv_save(self, request, response):
        response.success, response.message = self.save_trajectory()
        return response

    def save_trajectory(self) -> tuple[bool, str]:
        """Write the trajectory so far to ``ros.trajectory_file``: (success, message naming the file)."""
        path = self._param_cfg.ros.trajectory_file  # the value last accepted, even if no frame applied it yet
        if not path:
            return False, "ros.trajectory_file is not set (ros2 param set <node> ros.trajectory_file FILE.tum)"
        try:
            n = self.trajectory.save(path)
        except OSError as e:
            return False, f"cannot write {path}: {e.strerror or e}"
        return True, f"wrote {n} poses (TUM: stamp, camera position, quaternion) to {os.path.abspath(path)}"

    # ---------------------------------------------------------------- live parameters (executor thread)
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept live parameters (applied between frames), refuse the rest with the reason."""
        changes = {p.name: p.value for p in params}
        try:
            with self._cond:
                candidate = check_changes(self._param_cfg, {**self._param_changes, **changes})
                self._param_changes.update(changes)
                self._param_cfg = candidate
        except ConfigError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self._apply_if_idle()
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- between frames
    def _apply_if_idle(self) -> None:
        """Apply pending resets / parameter changes now when no frame is in progress (else the worker
        applies them before its next frame)."""
        if self._frame_lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self._frame_lock.release()

    def _apply_pending(self) -> None:
        """Pending reset and parameter changes; the caller holds the frame lock."""
        with self._cond:
            reset, self._reset_requested = self._reset_requested, False
            twist_reset, self._twist_reset_requested = self._twist_reset_requested, False
            changes, self._param_changes = self._param_changes, {}
            candidate = self._param_cfg
        if changes:
            names = [n for n in changes if "." in n and not n.startswith("qos_overrides.")]
            apply_changes(self.cfg, candidate, names)
            pipeline_cfg = getattr(self.pipeline, "cfg", None)
            if pipeline_cfg is not None and pipeline_cfg is not self.cfg:
                apply_changes(pipeline_cfg, candidate, names)
            refresh_frontend(self.pipeline, names)
            rc = self.cfg.ros
            self.path.resize(rc.max_path_length)
            if self._path_timer.timer_period_ns != int(rc.path_period_s * 1e9):
                self._path_timer.timer_period_ns = int(rc.path_period_s * 1e9)
                self._path_timer.reset()
            self._ensure_tf()
            self.get_logger().info("parameters applied: " + ", ".join(f"{n}={changes[n]!r}" for n in names))
        if twist_reset:
            self.twist.reset()
        if reset:
            self.reset()
            self.get_logger().info("trajectory reset (~/reset)")

    def _ensure_tf(self) -> None:
        if self.cfg.ros.publish_tf and self.tf is None:
            self.tf = TfOutput(self)
            self.tf.send(self._transform(self.T_base_cam, self.get_clock().now().to_msg(),
                                         self.cfg.ros.base_frame, self.cfg.ros.camera_frame), static=True)

    def reset(self) -> None:
        """Forget the trajectory (the pipeline, the path, the recorded poses, the stamp history, the twist)."""
        self.pipeline.reset()
        self._last_stamp = self._last_header_stamp = self._last_receipt = self._header_interval = None
        self.path.clear()
        self.trajectory.clear()
        self.twist.reset()

    # ---------------------------------------------------------------- worker thread
    def _have_intrinsics(self) -> bool:
        return self._camera_info is not None or self.cfg.camera.is_set

    def _on_window_done(self) -> None:
        """The backend's worker finished a window (called from its thread): wake the image thread."""
        with self._cond:
            self._window_done = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (self._pending is None or not self._have_intrinsics()) \
                        and not self._window_done:
                    if self._pending is not None:
                        self._warn("no_camera", "waiting for camera_info (or camera.fx/fy parameters) "
                                                "before processing images")
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    return
                self._window_done = False
                job = None
                if self._pending is not None and self._have_intrinsics():
                    (msg, t_recv), self._pending = self._pending, None
                    job = (msg, t_recv, self._camera_info)
            try:
                with self._frame_lock:
                    self._apply_pending()
                    if job is None:  # no image waits: a window that landed meanwhile is taken now, not at the next
                        self._take_window()  # image (the path follows it at once)
                    else:
                        self._process(*job)
            except Exception as e:  # noqa: BLE001 - the node outlives any single bad frame
                if self._stop:  # shutting down: publishers may be gone already
                    return
                self.stats["errors"] += 1
                detail = "" if isinstance(e, Kp2dError) else "\n" + traceback.format_exc()
                self._warn(f"error:{type(e).__name__}", f"frame dropped: {type(e).__name__}: {e}{detail}",
                           error=True)

    def _process(self, msg, t_recv: float, camera_info) -> None:
        t_taken = time.monotonic()  # the image's wait ends here
        try:
            frame, from_header = self._to_frame(msg, camera_info, t_recv)
        except _StampOrderError as e:
            self.stats["rejected"] += 1
            self._warn("stamp_order", f"image rejected: {e}")
            return
        except DataError as e:
            self.stats["rejected"] += 1
            self._warn("image_rejected", f"image rejected: {e}")
            return
        if self.wheel is not None:
            estimate = self.pipeline.process(frame, travelled_m=self._travelled(frame.stamp))
        else:
            estimate = self.pipeline.process(frame)
        if self._stop:
            return
        backend_ms = (getattr(estimate, "timings_ms", None) or {}).get("backend")
        if backend_ms is not None:
            self._backend_thread_ms["before_pose"].append(max(backend_ms - self._finish_ms, 0.0))
        self._finish_ms = 0.0
        self._follow_backend(estimate)
        self._last_stamp, self._last_receipt = frame.stamp, t_recv
        if from_header:
            if self._last_header_stamp is not None:
                self._header_interval = frame.stamp - self._last_header_stamp
            self._last_header_stamp = frame.stamp
        # the header's own stamp when it has one (bit-exact for listeners matching stamps), else the estimate
        stamp = msg.header.stamp if from_header else conv.sec_to_stamp(frame.stamp, Time)
        self._publish(estimate, frame, stamp, t_recv, t_taken)
        finish = getattr(self.pipeline, "finish", None)
        if finish is not None:  # the backend's work that this frame's pose did not need, after it went out
            t0 = time.perf_counter()
            finish()
            self._finish_ms = (time.perf_counter() - t0) * 1e3
            self._backend_thread_ms["after_pose"].append(self._finish_ms)
            self._follow_backend(estimate)

    def _take_window(self) -> None:
        """Between images: the window the backend's worker finished, into the map (:meth:`VOPipeline.take_window`),
        off the next image's path; the path follows it."""
        take = getattr(self.pipeline, "take_window", None)
        if take is not None and take():
            self.stats["windows_between_images"] += 1
            self._follow_backend(self.last_estimate)

    def _follow_backend(self, estimate) -> None:
        """The path (in map) follows the backend's refined keyframes when it took a window."""
        revision = getattr(self.pipeline, "backend_revision", 0)
        if revision != self._backend_revision:
            self._backend_revision = revision
            metric = bool(getattr(estimate, "scale_metric", False))  # the path holds one unit (cleared when metric)
            keyframes = self.pipeline.keyframe_poses()
            self.path.refine(keyframes, lambda pose, T: conv.fill_pose(pose, self._odom_base(T, metric)))
            self._hint_late_windows()

    def _hint_late_windows(self) -> None:
        """Say which setting helps when the backend's windows keep landing late (once per run of late windows, and
        at most every WARN_PERIOD_S): the CPU is saturated, and the published odometry pays for it (KITTI 07 threaded
        replays on 2 cores: 0.08-0.12 m with windows 3-5 keyframes late; with ``backend.worker_core`` every window in
        time since stop 42, 0.0549 m as the deterministic replay, at 1.6-1.9 against 2.7-2.9 FPS; docs/results.md,
        Windows in time for the next pair). With ``backend.worker_core`` on, windows
        that stay late although the worker gets a core mean that other processes hold the CPU (SCHED_IDLE starves
        the worker behind them)."""
        lag = int(getattr(self.pipeline, "backend_lag", 0))
        self._late_windows = self._late_windows + 1 if lag >= LATE_WINDOW_KEYFRAMES else 0
        if self._late_windows != LATE_WINDOW_RUN:
            return
        bc = self.cfg.backend
        if not bc.worker_core:
            self._warn("backend_late", f"the backend's windows land {lag} keyframes late (the CPU is saturated), which "
                       "costs the odometry accuracy: backend.worker_core: true gives the optimisation a core while it "
                       "runs, at some frame rate")
        elif bc.worker_idle:
            self._warn("backend_late", f"the backend's windows land {lag} keyframes late although the optimisation "
                       "gets a core: other processes hold the CPU, and the worker (SCHED_IDLE) runs only when they "
                       "leave it idle; backend.worker_idle: false lets it compete with them at backend.worker_nice")

    def _travelled(self, stamp: float) -> float | None:
        """Wheel-odometry distance since the previous frame (None, with a warning, when unknown)."""
        if self._last_stamp is None:
            return None
        with self._cond:
            travel = self.wheel.travelled(self._last_stamp, stamp)
        if travel.distance is None:
            self._warn("wheel_odometry_missing", f"wheel odometry not used for this frame: {travel.reason}")
        return travel.distance

    def _to_frame(self, msg, camera_info, t_recv: float) -> tuple[Frame, bool]:
        image = conv.compressed_to_array(msg) if self.cfg.ros.compressed else conv.image_to_array(msg)
        h, w = image.shape[:2]
        cam = conv.camera_for_image(camera_info, w, h) if camera_info is not None else \
            conv.camera_from_config(self.cfg.camera, w, h)
        stamp, from_header = self._frame_stamp(msg, t_recv)
        self._index += 1
        return Frame(image=image, camera=cam, stamp=stamp, index=self._index - 1), from_header

    def _frame_stamp(self, msg, t_recv: float) -> tuple[float, bool]:
        """(stamp the frame is processed with, whether it is the header's); restarts the trajectory on a
        real jump back in time.

        * A header stamp of 0 (unset) is replaced by the previous frame's stamp plus the receipt
          interval, at most half the last interval between real stamps so that the next real stamp
          still comes after it (the node clock for a first frame). Such a frame never restarts the
          trajectory and is never the reference for the next frame's jump check.
        * A header stamp more than ``BACKWARD_RESET_S`` before the last non-zero one (a bag replayed
          again) restarts the trajectory, logged once per jump.
        * Any other stamp not after the previous frame's is rejected (duplicate or out of order).
        """
        stamp = conv.stamp_to_sec(msg.header.stamp)
        if stamp == 0.0:
            self._warn("zero_stamp", "image header stamp is 0: stamped from the previous frame's stamp "
                                     "and the receipt interval")
            if self._last_stamp is None:
                return conv.stamp_to_sec(self.get_clock().now().to_msg()), False
            step = t_recv - self._last_receipt
            if self._header_interval is not None:
                step = min(step, 0.5 * self._header_interval)
            return self._last_stamp + max(step, 1e-6), False
        if self._last_header_stamp is not None and stamp < self._last_header_stamp - BACKWARD_RESET_S:
            self.stats["resets"] += 1
            self.get_logger().warning(f"time jumped back {self._last_header_stamp - stamp:.3f} s "
                                      "(a replayed bag?): restarting the trajectory")
            self.reset()
        elif self._last_stamp is not None and stamp <= self._last_stamp and self._last_header_stamp is not None:
            raise _StampOrderError(f"stamp {stamp:.9f} not after the previous frame's {self._last_stamp:.9f}")
        return stamp, True

    # ---------------------------------------------------------------- output
    def _publish(self, est: PoseEstimate, frame: Frame, stamp, t_recv: float, t_taken: float) -> None:
        rc = self.cfg.ros
        t0 = time.perf_counter()
        metric = bool(getattr(est, "scale_metric", False))
        rescale = float(getattr(est, "scale_rescaled", 1.0))
        if rescale != 1.0:  # the trajectory turned metric: everything before was in VO units
            self.get_logger().info(f"scale: metric from this frame on ({est.scale_source}); the trajectory was "
                                   f"rescaled by {rescale:.4g}; the odometry published before stays in VO units")
            self.path.clear()
            self.twist.reset()
            self.trajectory.rescale(rescale)  # the saved trajectory file is metric throughout, as kp2d replay's
        T_ext = conv.odom_extrinsic(self.T_base_cam, metric)
        # REP 105: odometry and TF odom -> base continue without the backend's corrections (T_odom_cam); those are
        # TF map -> odom, and the path is in map
        T_odom_cam = est.odometry()[1]
        T_odom_base = self._odom_base(T_odom_cam, metric)
        T_map_base = self._odom_base(est.T_world_cam, metric)
        odom = Odometry()
        odom.header.stamp = stamp
        odom.header.frame_id = rc.odom_frame
        odom.child_frame_id = rc.base_frame
        conv.fill_pose(odom.pose.pose, T_odom_base)
        fallback = np.asarray(conv.pose_covariance(est.quality, est.status)).reshape(6, 6)
        # the core's accumulated covariance (world axes) when it provides one; a lost tracker's held pose
        # is not a measurement, so it keeps the fallback's 1e3 std ("ignore me" for an EKF)
        cov_odom = conv.odom_covariance(est, T_ext) if est.status != TrackingStatus.LOST else None
        odom.pose.covariance = (fallback if cov_odom is None else cov_odom).ravel().tolist()
        if est.motion_model == "repeated":  # a stale image: nothing new about the velocity (an EKF ignores it); the
            tw = unknown_twist()  # tracker keeps the last image's pose, and the next step spans this frame's time
        else:
            tw = self.twist.update(frame.stamp, T_odom_base, est.status, cov_odom, fallback, est.interval_s)
        v, w = odom.twist.twist.linear, odom.twist.twist.angular
        v.x, v.y, v.z = (float(x) for x in tw.linear)
        w.x, w.y, w.z = (float(x) for x in tw.angular)
        odom.twist.covariance = tw.covariance.ravel().tolist()
        self.pub_odom.publish(odom)
        self.trajectory.append(frame.stamp, T_odom_cam)  # the published odometry, as kp2d replay's trajectory_est.tum
        if rc.publish_path:
            in_map = PoseStamped(header=Header(stamp=stamp, frame_id=rc.map_frame))
            conv.fill_pose(in_map.pose, T_map_base)
            self.path.append(in_map, est.keyframe_id, est.T_keyframe_cam)
        t1 = time.perf_counter()
        self._publish_ms["odom"].append((t1 - t0) * 1e3)

        if rc.publish_keypoints:
            cam_header = Header(stamp=stamp, frame_id=rc.camera_frame)
            self.pub_keypoints.publish(conv.keypoints_to_cloud(est, PointCloud2, PointField, cam_header,
                                                               frame.camera.K))
            t2 = time.perf_counter()
            self._publish_ms["keypoints"].append((t2 - t1) * 1e3)
        if self.pub_debug.get_subscription_count() > 0:
            self.pub_debug.publish(conv.array_to_image(conv.draw_debug(frame.image, est), Image, stamp,
                                                       rc.camera_frame))
        if self.tf is not None and self.tf.mode != "none" and rc.publish_tf:
            t3 = time.perf_counter()
            tfs = [self._transform(T_odom_base, stamp, rc.odom_frame, rc.base_frame)]
            if rc.publish_map_tf:
                tfs.insert(0, self._transform(T_map_base @ invert_se3(T_odom_base), stamp, rc.map_frame, rc.odom_frame))
            self.tf.send(*tfs)
            self._publish_ms["tf"].append((time.perf_counter() - t3) * 1e3)
        self.stats["processed"] += 1
        self.last_estimate = est
        self._latency_ms.append((time.monotonic() - t_recv) * 1e3)
        self._wait_ms.append(max(t_taken - t_recv, 0.0) * 1e3)

    def _odom_base(self, T_world_cam: np.ndarray, metric: bool) -> np.ndarray:
        """The base pose in odom that odometry, TF and the path publish for a camera pose (the lever arm only
        with a metric scale: :func:`conversions.odom_extrinsic`)."""
        return conv.camera_to_base_pose(T_world_cam, conv.odom_extrinsic(self.T_base_cam, metric))

    def _publish_path(self) -> None:
        """Timer (executor thread): the path, when it changed and someone listens. The worker only appends
        one PoseStamped per frame; building and serialising the whole Path happens here."""
        if not self.cfg.ros.publish_path or self.pub_path.get_subscription_count() == 0:
            return
        t0 = time.perf_counter()
        msg = self.path.message(Path, self.cfg.ros.map_frame)
        if msg is None:
            return
        self.pub_path.publish(msg)
        self._publish_ms["path"].append((time.perf_counter() - t0) * 1e3)

    @staticmethod
    def _transform(T: np.ndarray, stamp, parent: str, child: str) -> TransformStamped:
        tf = TransformStamped()
        tf.header.stamp = stamp
        tf.header.frame_id = parent
        tf.child_frame_id = child
        conv.fill_transform(tf.transform, T)
        return tf

    def diagnostics(self) -> DiagnosticStatus:
        """Tracking state, counts, latency and publication costs as one DiagnosticStatus."""
        est = self.last_estimate
        lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
        wait = np.asarray(self._wait_ms) if self._wait_ms else np.zeros(1)
        st = DiagnosticStatus(name="kp2d_ros: visual odometry", hardware_id=self.cfg.ros.camera_frame)
        st.level = _LEVELS[est.status] if est is not None else DiagnosticStatus.WARN
        st.message = "paused" if self._paused else (est.status.value if est is not None else "waiting for images")
        values = {
            "status": est.status.value if est is not None else "waiting for images",
            "paused": str(self._paused).lower(),
            **{k: str(self.stats[k]) for k in ("received", "processed", "dropped", "rejected", "errors",
                                                "camera_info_rejected", "paused_dropped", "resets")},
            "num_features": str(est.num_features if est else 0),
            "num_matches": str(est.num_matches if est else 0),
            "num_inliers": str(est.num_inliers if est else 0),
            "quality": f"{est.quality:.3f}" if est else "0",
            "latency_ms_median": f"{np.median(lat):.1f}",
            "latency_ms_max": f"{np.max(lat):.1f}",
            # the latency's two parts: the image waiting for the image thread, and the frame's own work (receipt ->
            # odometry out, less the wait); a saturated node waits about half the images' period
            "latency_wait_ms_median": f"{np.median(wait):.1f}",
            "latency_wait_ms_max": f"{np.max(wait):.1f}",
            "latency_work_ms_median": f"{np.median(lat - wait):.1f}",
            "processing_ms": f"{est.timings_ms.get('total', 0.0):.1f}" if est else "0",
            "path_poses": str(len(self.path)),
            "scale": ("metric" if est is not None and getattr(est, "scale_metric", False) else "unknown"),
            "scale_source": getattr(est, "scale_source", "none") if est is not None else "none",
            "scale_notes": getattr(est, "scale_notes", "") if est is not None else "",
            "wheel_odometry": str(self.stats["wheel_odometry"]) if self.wheel is not None else "off",
            **self._backend_diagnostics(),
            "still_masked": self._still_masked(),
            **{f"publish_ms_{k}": f"{np.median(v):.3f}" if v else "nan" for k, v in self._publish_ms.items()},
            "last_warning": self.last_warning,
        }
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return st

    def _still_masked(self) -> str:
        """How much of the image gets no keypoints because it stays still while the view moves (the robot's own body
        in view: ``frontend.still_mask_frames``), in percent; ``off`` without that mask."""
        still = getattr(self.pipeline, "still_blocks", None)
        return "off" if still is None else f"{100.0 * still.masked_fraction:.0f}%"

    def _backend_diagnostics(self) -> dict[str, str]:
        """The local bundle adjustment's keys: windows taken, how many keyframes late the last one landed (late
        windows cost accuracy: ``backend.worker_idle``), its time and outcome; ``backend: off`` without it. And what
        it costs this node's latency: its work in the image thread per frame, the mean over the last 200 frames,
        before the pose goes out (``backend_before_pose_ms``) and after it (``backend_after_pose_ms``, the map's
        upkeep in ``finish()``: on a saturated node it costs frames processed, not latency, since the newest image's
        wait is set by when images arrive, ``latency_wait_ms_median``); and the windows taken
        between images, off any image's path (``backend_windows_between_images``)."""
        status_of = getattr(self.pipeline, "backend_status", None)
        status = status_of() if status_of is not None else None
        if status is None:
            return {"backend": "off"}
        return {"backend": status.last, "backend_windows": str(status.windows),
                "backend_lag_keyframes": str(status.lag_keyframes), "backend_ms": f"{status.time_ms:.1f}",
                **{f"backend_{k}_ms": f"{np.mean(v):.3f}" if v else "nan"
                   for k, v in self._backend_thread_ms.items()},
                "backend_windows_between_images": str(self.stats["windows_between_images"])}

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray(status=[self.diagnostics()])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def _warn(self, kind: str, text: str, error: bool = False) -> None:
        """Log ``text`` at most once per WARN_PERIOD_S for each ``kind`` of event (a fixed name, never
        text with stamps or values in it, so the table stays small and repeats are throttled)."""
        self.last_warning = text.splitlines()[0]
        now = time.monotonic()
        if now - self._warned_at.get(kind, -1e9) >= WARN_PERIOD_S:
            self._warned_at[kind] = now
            (self.get_logger().error if error else self.get_logger().warning)(text)

    def destroy_node(self) -> None:
        """Stop the worker (a frame in progress is left behind after STOP_JOIN_S), write
        ``ros.trajectory_file`` when set, then destroy the node."""
        if getattr(self, "_destroyed", True):
            return super().destroy_node()
        self._destroyed = True
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None and self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=STOP_JOIN_S)
        if hasattr(self.pipeline, "close"):
            self.pipeline.close()  # the backend's thread
        if self._param_cfg.ros.trajectory_file:
            ok, text = self.save_trajectory()
            (self.get_logger().info if ok else self.get_logger().error)(f"on shutdown: {text}")
        super().destroy_node()


    def frame_in_progress(self) -> bool:
        """True while the worker thread is still inside a frame (after :meth:`destroy_node`)."""
        return self._worker is not None and self._worker.is_alive()


class _StampOrderError(DataError):
    """A header stamp not after the previous frame's (duplicate or slightly out of order)."""


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
    except Exception:  # noqa: BLE001
        if rclpy.ok():
            raise
        # SIGINT shut the context down while a callback was publishing (InvalidHandle/RCLError from
        # the callback): that is the requested shutdown, not an error.
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if node is not None and node.frame_in_progress():
        # A frame is still inside OpenCV/torch (seconds for a 4000x3000 image): the interpreter's
        # finalisation would compete with it for the CPU and then tear down libraries under it. The
        # node is destroyed and the trajectory file written, so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
