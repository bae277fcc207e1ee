"""vo_node in-process: bad input never crashes it, newest frame wins, outputs are well formed.

The node and a driver node share one rclpy context; messages go through the middleware
(loopback only, a private domain id). Waits use generous deadlines that only fail a broken node.
"""
import math
import os
import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry, Path  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402

from kp2d_ros.backend import BackendStatus  # noqa: E402
from kp2d_ros.ros import conversions as conv  # noqa: E402
from kp2d_ros.ros.node import VONode  # noqa: E402
from kp2d_ros.ros.spinning import Spinner  # noqa: E402
from kp2d_ros.types import Features, PoseEstimate, TrackingStatus  # noqa: E402

from conftest import data_path  # noqa: E402

DOMAIN = 100 + (os.getpid() + 23) % 100
W, H = 160, 120
TIMEOUT = 30.0


def wait_until(pred, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakePipeline:
    """Moves 0.1 along the optical axis per frame; optional delay to make the node busy."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.frames, self.resets = delay, [], 0

    def process(self, frame):
        time.sleep(self.delay)
        self.frames.append(frame)
        T = np.eye(4)
        T[2, 3] = 0.1 * (len(self.frames) - 1)
        feats = Features(np.array([[10.0, 20.0], [30.0, 40.0]], np.float32), np.zeros((2, 32), np.uint8),
                         np.array([0.5, 0.25], np.float32), binary=True)
        return PoseEstimate(frame.stamp, T, TrackingStatus.TRACKING, 2, 1, 1, True, {"total": 1.0}, feats,
                            np.array([True, False]), np.array([[9.0, 19.0]]), np.array([[10.0, 20.0]]), 0.8)

    def reset(self):
        self.resets += 1
        self.frames.clear()


class Rig:
    """A VONode plus a driver node publishing images and recording the node's outputs."""

    def __init__(self, pipeline=None, params=None, debug_subscriber=False):
        self.closed = False
        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx, domain_id=DOMAIN)
        overrides = [Parameter(k, value=v) for k, v in {"frontend.type": "orb", **(params or {})}.items()]
        self.node = VONode(pipeline=pipeline, context=self.ctx, parameter_overrides=overrides)
        self.driver = rclpy.create_node("driver", context=self.ctx)
        compressed = self.node.cfg.ros.compressed
        qos = QoSProfile(depth=10)
        self.pub_image = self.driver.create_publisher(CompressedImage if compressed else Image, "image", qos)
        self.pub_info = self.driver.create_publisher(CameraInfo, "camera_info", qos)
        self.odom, self.paths, self.clouds, self.debug, self.diag = [], [], [], [], []
        self.driver.create_subscription(Odometry, "odom", self.odom.append, qos)
        self.driver.create_subscription(Path, "path", self.paths.append, qos)
        self.driver.create_subscription(PointCloud2, "keypoints", self.clouds.append, qos)
        self.driver.create_subscription(DiagnosticArray, "diagnostics", self.diag.append, qos)
        if debug_subscriber:
            self.driver.create_subscription(Image, "debug_image", self.debug.append, qos)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.driver)
        self.spinner = Spinner(self.executor)
        self.spinner.start()
        wait_until(lambda: self.pub_image.get_subscription_count() > 0 and self.pub_info.get_subscription_count() > 0
                   and self.driver.count_publishers("odom") > 0, "discovery")

    def handled(self) -> int:
        s = self.node.stats
        return s["processed"] + s["rejected"] + s["errors"]

    def send_image(self, msg, expect_handled: bool = True) -> None:
        before = self.handled()
        received = self.node.stats["received"]
        self.pub_image.publish(msg)
        wait_until(lambda: self.node.stats["received"] > received, "image received")
        if expect_handled:
            wait_until(lambda: self.handled() > before, "image handled")

    def send_info(self, msg) -> None:
        before = self.node.stats["camera_info"] + self.node.stats["camera_info_rejected"]
        self.pub_info.publish(msg)
        wait_until(lambda: self.node.stats["camera_info"] + self.node.stats["camera_info_rejected"] > before,
                   "camera_info handled")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # the spin thread ends before the nodes and the context go: a callback still running (a 10 000-pose path on
        # a loaded CI machine takes over a second) would otherwise raise in it when the context is shut down
        self.spinner.stop(timeout_s=10.0)
        self.node.destroy_node()
        self.driver.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


@pytest.fixture
def rig():
    made = []

    def make(**kwargs):
        r = Rig(**kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def texture(shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(7)
    big = cv2.GaussianBlur(rng.integers(0, 256, (H + 40, W + 40, 3), dtype=np.uint8), (0, 0), 1.5)
    M = np.float32([[1, 0, -20 + shift], [0, 1, -20]])
    return cv2.warpAffine(big, M, (W, H))


def stamp(t: float) -> Time:
    return conv.sec_to_stamp(t, Time)


def image_msg(t: float, img=None) -> Image:
    return conv.array_to_image(texture() if img is None else img, Image, stamp(t), "cam")


def info_msg(k=(200.0, 0.0, 80.0, 0.0, 200.0, 60.0, 0.0, 0.0, 1.0), w=W, h=H) -> CameraInfo:
    msg = CameraInfo(width=w, height=h, distortion_model="plumb_bob")
    msg.k = [float(v) for v in k]
    msg.d = [0.0] * 5
    return msg


# --------------------------------------------------------------------------------------------
class CorrectedPipeline(FakePipeline):
    """FakePipeline whose backend moved the map 0.5 along the optical axis from the second frame on: odom continues
    (``T_odom_cam``), the map pose (``T_world_cam``) carries the correction (``T_world_odom``)."""

    def process(self, frame):
        est = super().process(frame)
        est.T_odom_cam = est.T_world_cam.copy()
        est.T_world_odom = np.eye(4)
        est.T_world_odom[2, 3] = 0.5 if len(self.frames) > 1 else 0.0
        est.T_world_cam = est.T_world_odom @ est.T_odom_cam
        return est


class TfRecorder:
    mode = "recorder"

    def __init__(self):
        self.sent = []

    def send(self, *tfs, static=False):
        self.sent.append([(t.header.frame_id, t.child_frame_id, t.transform.translation.x) for t in tfs])


def test_odometry_is_continuous_and_the_correction_is_map_to_odom(rig):
    """REP 105: odom (and TF odom -> base) without the backend's correction, TF map -> odom with it, the path in map."""
    r = rig(pipeline=CorrectedPipeline())
    tf = r.node.tf = TfRecorder()
    r.send_info(info_msg())
    for i in range(3):
        r.send_image(image_msg(1.0 + 0.1 * i))
    wait_until(lambda: len(r.odom) == 3 and r.paths and len(r.paths[-1].poses) == 3, "outputs")
    assert [o.pose.pose.position.x for o in r.odom] == pytest.approx([0.0, 0.1, 0.2])  # base x = optical z
    assert r.paths[-1].header.frame_id == "map"
    assert [p.pose.position.x for p in r.paths[-1].poses] == pytest.approx([0.0, 0.6, 0.7])
    assert [[(p, c) for p, c, _ in sent] for sent in tf.sent] == [[("map", "odom"), ("odom", "base_link")]] * 3
    assert [[x for _, _, x in sent] for sent in tf.sent] == [pytest.approx([0.0, 0.0]), pytest.approx([0.5, 0.1]),
                                                             pytest.approx([0.5, 0.2])]


def test_map_to_odom_can_be_left_to_another_node(rig):
    """ros.publish_map_tf false (a localisation node owns map -> odom): only odom -> base from this node."""
    r = rig(pipeline=CorrectedPipeline(), params={"ros.publish_map_tf": False})
    tf = r.node.tf = TfRecorder()
    r.send_info(info_msg())
    for i in range(2):
        r.send_image(image_msg(1.0 + 0.1 * i))
    wait_until(lambda: len(r.odom) == 2, "outputs")
    assert tf.sent == [[("odom", "base_link", pytest.approx(0.0))], [("odom", "base_link", pytest.approx(0.1))]]


def fed(rig, fake, n, params=None):
    """A rig around the fake pipeline ``fake`` (told its node), after camera info and ``n`` images 0.1 s apart."""
    r = rig(pipeline=fake, params=params)
    fake.node = r.node
    r.send_info(info_msg())
    for i in range(n):
        r.send_image(image_msg(1.0 + 0.1 * i))
    return r


class FinishingPipeline(FakePipeline):
    """FakePipeline with the backend's after-the-pose work (:meth:`VOPipeline.finish`): records how many frames the
    node had published when it was called, and refines keyframe 0 (the path follows a new backend revision)."""

    def __init__(self):
        super().__init__()
        self.node, self.published_at_finish, self.backend_revision = None, [], 0

    def process(self, frame):
        est = super().process(frame)
        est.keyframe_id, est.T_keyframe_cam = 0, est.T_world_cam.copy()
        return est

    def finish(self):
        self.published_at_finish.append(self.node.stats["processed"])
        self.backend_revision += 1

    def keyframe_poses(self):
        T = np.eye(4)
        T[2, 3] = 1.0  # keyframe 0 moved 1 along the optical axis
        return {0: T}


def test_the_backends_work_comes_after_the_frames_odometry(rig):
    """The node publishes a frame's odometry first, then lets the pipeline do the backend's work that the pose did
    not need (the new keyframe's landmarks and window, a finished window taken); the path follows what it took."""
    fake = FinishingPipeline()
    r = fed(rig, fake, 3)
    wait_until(lambda: len(r.odom) == 3 and r.paths and len(r.paths[-1].poses) == 3, "outputs")
    assert fake.published_at_finish == [1, 2, 3]
    assert [o.pose.pose.position.x for o in r.odom] == pytest.approx([0.0, 0.1, 0.2])  # odom: the front end's
    assert [p.pose.position.x for p in r.paths[-1].poses] == pytest.approx([1.0, 1.1, 1.2])  # map: refined keyframe


class TimedBackendPipeline(FinishingPipeline):
    """FinishingPipeline whose backend works 30 ms after each pose (``finish``) and 5 ms before it: each frame's
    ``backend`` stage counts both, as :meth:`VOPipeline.process` counts the last ``finish()`` in it."""

    def __init__(self):
        super().__init__()
        self.carried = 0.0

    def process(self, frame):
        est = super().process(frame)
        est.timings_ms = {"total": 1.0, "backend": self.carried + 5.0}
        self.carried = 0.0
        return est

    def finish(self):
        super().finish()
        t0 = time.perf_counter()
        time.sleep(0.03)
        self.carried = (time.perf_counter() - t0) * 1e3

    def backend_status(self):
        return BackendStatus(self.backend_revision, 0, 1.0, "ok")


def test_diagnostics_give_the_backends_work_before_and_after_the_pose(rig):
    """What the backend costs the node's latency, in its diagnostics: its work in the image thread per frame before
    the pose goes out (the frame's backend stage less the last ``finish()`` it carries) and after it."""
    fake = TimedBackendPipeline()
    r = fed(rig, fake, 3)
    wait_until(lambda: len(r.odom) == 3 and len(fake.published_at_finish) == 3, "outputs")
    values = {kv.key: kv.value for kv in r.node.diagnostics().values}
    assert values["backend"] == "ok"
    assert float(values["backend_before_pose_ms"]) == pytest.approx(5.0, abs=0.5)
    assert 30.0 <= float(values["backend_after_pose_ms"]) < 60.0


class SlowFinishPipeline(FakePipeline):
    """FakePipeline whose frames take 20 ms and whose work after each pose (``finish``) takes 300 ms."""

    def __init__(self):
        super().__init__(delay=0.02)

    def finish(self):
        time.sleep(0.3)


def test_diagnostics_split_the_latency_into_the_images_wait_and_the_frames_work(rig):
    """An image that arrives while the image thread is still busy (here with the last frame's ``finish()``) waits for
    it: the diagnostics give that wait and the frame's own work (its latency less the wait) apart."""
    r = rig(pipeline=SlowFinishPipeline())
    r.send_info(info_msg())
    r.send_image(image_msg(1.0))
    wait_until(lambda: len(r.odom) == 1, "first odometry")
    r.send_image(image_msg(1.1))  # during the first frame's 300 ms finish()
    wait_until(lambda: len(r.odom) == 2, "second odometry")
    values = {kv.key: kv.value for kv in r.node.diagnostics().values}
    wait_max, work = float(values["latency_wait_ms_max"]), float(values["latency_work_ms_median"])
    assert 150.0 <= wait_max < 400.0  # the second image waited for the first frame's finish()
    assert 20.0 <= work < 150.0  # each frame's own work: 20 ms and its messages, without the wait
    assert float(values["latency_ms_max"]) >= wait_max + 20.0
    assert float(values["latency_wait_ms_median"]) == pytest.approx(wait_max / 2, abs=20.0)  # of [~0, wait_max]


class ListeningPipeline(FinishingPipeline):
    """FinishingPipeline whose backend's worker tells the node when a window is done (``on_window_done``); the node
    takes it with ``take_window``, which refines keyframe 0."""

    def __init__(self):
        super().__init__()
        self.listener, self.ready, self.taken = None, False, 0

    def on_window_done(self, callback):
        self.listener = callback

    def finish(self):
        self.published_at_finish.append(self.node.stats["processed"])

    def take_window(self):
        if not self.ready:
            return False
        self.ready, self.taken = False, self.taken + 1
        self.backend_revision += 1
        return True


def test_a_window_that_lands_between_images_is_taken_then(rig):
    """A window the backend finishes while the node waits for its next image is taken at once, not at the next
    image: off that image's path, and the path follows the refined keyframes without another image."""
    fake = ListeningPipeline()
    r = fed(rig, fake, 2)
    assert fake.listener is not None  # the node listens from the start
    wait_until(lambda: len(r.odom) == 2 and r.paths and len(r.paths[-1].poses) == 2, "outputs")
    assert [p.pose.position.x for p in r.paths[-1].poses] == pytest.approx([0.0, 0.1])
    fake.ready = True
    threading.Thread(target=fake.listener).start()  # the worker's thread
    wait_until(lambda: r.paths and r.paths[-1].poses[0].pose.position.x == pytest.approx(1.0), "refined path")
    assert fake.taken == 1 and len(fake.frames) == 2 and r.node.stats["windows_between_images"] == 1
    assert [p.pose.position.x for p in r.paths[-1].poses] == pytest.approx([1.0, 1.1])


class LatePipeline(FinishingPipeline):
    """FinishingPipeline whose every window lands ``lag`` keyframes late."""

    def __init__(self, lag):
        super().__init__()
        self.backend_lag = lag


@pytest.mark.parametrize("lag, worker_core, idle, hinted", [
    (4, False, True, "backend.worker_core"), (1, False, True, ""), (1, True, True, ""),
    (4, True, True, "backend.worker_idle"), (4, True, False, "")])
def test_windows_that_keep_landing_late_name_the_setting_that_helps(rig, lag, worker_core, idle, hinted):
    """Five windows in a row 3+ keyframes late (a saturated CPU; the odometry pays for it): the node says once that
    ``backend.worker_core`` trades frame rate for it; not when they keep up. With the core given and the windows
    still late, other processes hold the CPU: it names ``backend.worker_idle`` (not when that is off already)."""
    fake = LatePipeline(lag)
    r = fed(rig, fake, 6, params={"backend.worker_core": worker_core, "backend.worker_idle": idle})
    wait_until(lambda: len(r.odom) == 6 and fake.backend_revision == 6, "outputs")
    said = r.node.last_warning or ""
    assert ("backend.worker_" in said) == bool(hinted) and hinted in said, said


def test_good_frames_publish_odom_path_keypoints_diagnostics(rig):
    fake = FakePipeline()
    r = rig(pipeline=fake)
    r.send_info(info_msg())
    for i in range(3):
        r.send_image(image_msg(1.0 + 0.1 * i))
    wait_until(lambda: len(r.odom) == 3 and len(r.clouds) == 3 and r.paths and len(r.paths[-1].poses) == 3,
               "outputs")  # the path comes from a timer (ros.path_period_s), not once per frame
    o = r.odom[-1]
    assert (o.header.frame_id, o.child_frame_id) == ("odom", "base_link")
    assert conv.stamp_to_sec(o.header.stamp) == pytest.approx(1.2)
    # camera moved 0.2 along its optical axis = 0.2 forward (x) for the REP-103 base
    assert (o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z) == pytest.approx((0.2, 0, 0))
    assert o.pose.covariance[0] == pytest.approx(conv.pose_covariance(0.8, TrackingStatus.TRACKING)[0])
    assert len(r.paths[-1].poses) == 3 and r.paths[-1].header.frame_id == "map"
    kp = conv.cloud_to_keypoints(r.clouds[-1])
    np.testing.assert_allclose(kp[:, :4], [[10, 20, 0.5, 1], [30, 40, 0.25, 0]])
    np.testing.assert_allclose(kp[:, 4:], [[-0.35, -0.2, 1], [-0.25, -0.1, 1]], rtol=1e-6)
    assert r.clouds[-1].header.frame_id == "camera_optical_frame"
    # intrinsics reached the pipeline from CameraInfo
    assert fake.frames[0].camera.K[0, 0] == 200.0 and fake.frames[0].image.shape == (H, W, 3)
    wait_until(lambda: any(d.status[0].message == "tracking" for d in r.diag), "diagnostics")
    values = {kv.key: kv.value for kv in r.diag[-1].status[0].values}
    assert values["processed"] == "3" and values["num_inliers"] == "1" and "latency_ms_median" in values
    assert values["backend"] == "off"  # a pipeline without a backend
    assert values["still_masked"] == "off"  # nor a mask of what stays still in the view (the robot's own body)
    assert not r.debug  # no subscriber: no debug image


def test_debug_image_only_with_subscribers(rig, monkeypatch):
    calls = []
    real = conv.draw_debug
    monkeypatch.setattr(conv, "draw_debug", lambda *a: calls.append(1) or real(*a))
    r = rig(pipeline=FakePipeline())
    r.send_info(info_msg())
    r.send_image(image_msg(1.0))
    wait_until(lambda: len(r.odom) == 1, "odom")
    assert calls == []
    r.close()  # one rig at a time: they share the domain
    r2 = rig(pipeline=FakePipeline(), debug_subscriber=True)
    wait_until(lambda: r2.node.pub_debug.get_subscription_count() > 0, "debug subscriber")
    r2.send_info(info_msg())
    r2.send_image(image_msg(1.0))
    wait_until(lambda: len(r2.debug) == 1, "debug image")
    assert calls and (r2.debug[0].width, r2.debug[0].height, r2.debug[0].encoding) == (W, H, "rgb8")


@pytest.mark.parametrize("encoding", ["yuv422_yuy2", "bayer_rggb8"])
def test_camera_native_images_reach_the_pipeline_as_rgb(rig, encoding):
    """A USB camera's YUYV and a raw Bayer stream, as their drivers publish them, are processed (not rejected):
    the pipeline gets the (H, W, 3) RGB image."""
    from kp2d_ros.data.images import encode_image

    fake = FakePipeline()
    r = rig(pipeline=fake)
    r.send_info(info_msg())
    rgb = texture()
    msg = image_msg(1.0)
    data, msg.step = encode_image(rgb, encoding)
    msg.encoding, msg.data = encoding, data.tobytes()
    r.send_image(msg)
    wait_until(lambda: len(r.odom) == 1, "odom")
    assert r.node.stats["rejected"] == 0 and fake.frames[0].image.shape == (H, W, 3)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "encoding", "nv21"), "nv21"),
    (lambda m: (setattr(m, "height", 0), setattr(m, "width", 0), setattr(m, "data", b"")), "empty"),
    (lambda m: setattr(m, "data", bytes(len(m.data) - 5)), "bytes"),
    (lambda m: setattr(m, "step", 3), "step"),
])
def test_malformed_image_rejected_node_keeps_working(rig, mutate, match):
    fake = FakePipeline()
    r = rig(pipeline=fake)
    r.send_info(info_msg())
    r.send_image(image_msg(1.0))
    bad = image_msg(1.1)
    mutate(bad)
    r.send_image(bad)
    assert r.node.stats["rejected"] == 1 and match in r.node.last_warning
    r.send_image(image_msg(1.2))
    wait_until(lambda: len(r.odom) == 2, "odom after bad input")
    assert [f.stamp for f in fake.frames] == pytest.approx([1.0, 1.2])


@pytest.mark.parametrize("k", [(0.0,) * 9, (math.nan, 0, 80, 0, 200, 60, 0, 0, 1)])
def test_bad_camera_info_ignored(rig, k):
    fake = FakePipeline()
    r = rig(pipeline=fake)
    r.send_info(info_msg(k))
    assert r.node.stats["camera_info_rejected"] == 1
    r.send_image(image_msg(1.0), expect_handled=False)  # no intrinsics yet: waits, is not processed
    time.sleep(0.3)
    assert r.node.stats["processed"] == 0 and r.node._pending is not None
    r.send_info(info_msg())  # a good CameraInfo releases the waiting frame
    wait_until(lambda: r.node.stats["processed"] == 1, "processing after a good CameraInfo")
    r.send_info(info_msg(k))  # a bad one later keeps the previous intrinsics
    r.send_image(image_msg(1.1))
    assert fake.frames[-1].camera.K[0, 0] == 200.0 and r.node.stats["camera_info_rejected"] == 2


def test_camera_parameters_used_without_camera_info(rig):
    fake = FakePipeline()
    r = rig(pipeline=fake, params={"camera.fx": 300.0, "camera.fy": 310.0})
    r.send_image(image_msg(1.0))
    K = fake.frames[0].camera.K
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (300.0, 310.0, (W - 1) / 2, (H - 1) / 2)


def test_duplicate_and_backward_stamps(rig):
    fake = FakePipeline()
    r = rig(pipeline=fake)
    r.send_info(info_msg())
    r.send_image(image_msg(10.0))
    r.send_image(image_msg(10.0))  # duplicate
    assert r.node.stats["rejected"] == 1 and "not after" in r.node.last_warning
    r.send_image(image_msg(9.8))  # slightly out of order
    assert r.node.stats["rejected"] == 2
    r.send_image(image_msg(10.1))
    assert r.node.stats["processed"] == 2 and fake.resets == 0
    r.send_image(image_msg(3.0))  # far back: a replayed bag, the trajectory restarts
    assert fake.resets == 1 and r.node.stats["processed"] == 3
    wait_until(lambda: len(r.odom) == 3 and r.paths and len(r.paths[-1].poses) == 1, "path after the restart")
    assert r.odom[-1].pose.pose.position.x == 0.0


def test_zero_stamp_uses_node_clock(rig):
    fake = FakePipeline()
    r = rig(pipeline=fake)
    r.send_info(info_msg())
    r.send_image(image_msg(0.0))
    r.send_image(image_msg(0.0))
    assert r.node.stats["processed"] == 2 and fake.frames[1].stamp > fake.frames[0].stamp > 0


def test_newest_frame_wins(rig):
    fake = FakePipeline(delay=0.3)
    r = rig(pipeline=fake)
    r.send_info(info_msg())
    msgs = [image_msg(1.0 + 0.1 * i) for i in range(6)]
    for m in msgs:  # straight into the callback: far faster than the node processes
        r.node._on_image(m)
    wait_until(lambda: r.node._pending is None and r.handled() + r.node.stats["dropped"] == 6, "queue drained")
    stats = r.node.stats
    assert stats["dropped"] >= 3 and stats["processed"] + stats["dropped"] == 6
    assert fake.frames[-1].stamp == pytest.approx(1.5)  # the newest frame is always processed


def test_pipeline_exception_does_not_kill_node(rig):
    class Flaky(FakePipeline):
        def process(self, frame):
            if len(self.frames) == 1 and not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("boom")
            return super().process(frame)

    r = rig(pipeline=Flaky())
    r.send_info(info_msg())
    r.send_image(image_msg(1.0))
    r.send_image(image_msg(1.1))
    assert r.node.stats["errors"] == 1 and "boom" in r.node.last_warning
    r.send_image(image_msg(1.2))
    wait_until(lambda: len(r.odom) == 2, "odom after the error")


def test_compressed_input(rig):
    fake = FakePipeline()
    r = rig(pipeline=fake, params={"ros.compressed": True})
    r.send_info(info_msg())
    ok, buf = cv2.imencode(".png", texture()[:, :, ::-1])
    msg = CompressedImage(format="rgb8; png compressed bgr8", header=image_msg(1.0).header)
    msg.data = buf.tobytes()
    r.send_image(msg)
    np.testing.assert_array_equal(fake.frames[0].image, texture())
    bad = CompressedImage(format="jpeg", header=image_msg(1.1).header)
    bad.data = b"\xff\xd8garbage"
    r.send_image(bad)
    assert r.node.stats["rejected"] == 1 and "decode" in r.node.last_warning


def test_the_backend_process_starts_with_the_node(rig):
    """The threaded backend's process is running (and loads its solver) before the first image arrives, so the
    first frames do not pay for starting it; it ends with the node."""
    r = rig()
    worker = r.node.pipeline.worker
    assert r.node.cfg.backend.threaded and worker is not None and worker.pid is not None
    pid = worker.pid
    r.close()
    wait_until(lambda: _process_ended(pid), "the backend process ended", timeout=10.0)


def _process_ended(pid: int) -> bool:
    """The process ``pid`` has exited: reaped (gone) or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next((line.split()[1] for line in f if line.startswith("State:")), "")
    except (FileNotFoundError, ProcessLookupError):  # gone, or went while being read
        return True
    return state == "Z"


def camera_info_of(cam) -> CameraInfo:
    """The CameraInfo of a sequence's camera (K, size, plumb_bob distortion)."""
    info = info_msg(cam.K.ravel(), cam.width, cam.height)
    info.d = [float(v) for v in cam.dist]
    return info


def test_tracking_loss_with_real_pipeline(rig):
    """Black and noise frames between real frames: LOST with a large covariance, then tracking again."""
    folder = data_path("vo", "tum_fr2_desk_20f")
    from kp2d_ros.data import open_sequence

    frames = list(open_sequence(folder, max_frames=8))
    r = rig(params={"frontend.num_features": 500})
    cam = frames[0].camera
    r.send_info(camera_info_of(cam))
    t = frames[0].stamp
    for f in frames[:3]:
        r.send_image(image_msg(f.stamp, f.image))
    black = np.zeros_like(frames[0].image)
    noise = np.random.default_rng(0).integers(0, 256, frames[0].image.shape, dtype=np.uint8)
    for i, img in enumerate([black, black, noise, black, black]):
        t = frames[2].stamp + 0.01 * (i + 1)
        r.send_image(image_msg(t, img))
    assert r.node.last_estimate.status == TrackingStatus.LOST
    wait_until(lambda: len(r.odom) == 8, "odom during loss")
    assert r.odom[-1].pose.covariance[0] == pytest.approx(1e6)
    for f in frames[3:]:
        r.send_image(image_msg(f.stamp, f.image))
    wait_until(lambda: len(r.odom) == 13, "odom after loss")
    assert r.node.stats["errors"] == 0 and r.node.stats["processed"] == 13
    assert r.node.last_estimate.status in (TrackingStatus.TRACKING, TrackingStatus.STATIC,
                                           TrackingStatus.INITIALIZING)


def test_a_repeated_image_holds_the_pose_and_leaves_the_velocity_unknown(rig):
    """A driver sends frame 3's image again with a new stamp (a stalled camera) while the camera moves on: that
    odometry holds the pose with the twist unknown (1e6 variance: an EKF ignores it), and the next image's twist
    spans both intervals, so it is not twice the speed."""
    folder = data_path("vo", "tum_fr2_desk_20f")
    from kp2d_ros.data import open_sequence

    frames = list(open_sequence(folder, max_frames=7))
    r = rig(params={"frontend.num_features": 500})
    r.send_info(camera_info_of(frames[0].camera))
    for f in frames[:4]:
        r.send_image(image_msg(f.stamp, f.image))
    r.send_image(image_msg(frames[4].stamp, frames[3].image))  # stale: frame 3's bytes, frame 4's stamp
    for f in frames[5:]:
        r.send_image(image_msg(f.stamp, f.image))
    wait_until(lambda: len(r.odom) == 7, "odom")
    assert r.node.stats["errors"] == 0
    held, before, after = r.odom[4], r.odom[3], r.odom[5]
    assert (held.pose.pose.position.x, held.pose.pose.position.y, held.pose.pose.position.z) == \
        (before.pose.pose.position.x, before.pose.pose.position.y, before.pose.pose.position.z)
    assert held.twist.covariance[0] == pytest.approx(1e6) and before.twist.covariance[0] < 1.0
    speed = [math.dist((o.twist.twist.linear.x, o.twist.twist.linear.y, o.twist.twist.linear.z), (0, 0, 0))
             for o in (before, after, r.odom[6])]
    assert after.twist.covariance[0] < 1.0 and speed[1] < 1.5 * max(speed[0], speed[2])


def test_a_stream_that_switches_resolution_restarts_tracking(rig):
    """The driver switches the stream to half resolution mid-run, CameraInfo still the full-size one (a new one
    often comes later): the node scales the camera to the images, the pipeline restarts from the last pose at the
    switch (LOST for that frame) and tracks on the half-size frames; odom does not jump at the switch."""
    folder = data_path("vo", "tum_fr2_desk_20f")
    from kp2d_ros.data import open_sequence

    frames = list(open_sequence(folder, max_frames=10))
    r = rig(params={"frontend.num_features": 500, "backend.window": 0})
    cam = frames[0].camera
    r.send_info(camera_info_of(cam))
    statuses = []
    for i, f in enumerate(frames):
        img = f.image if i < 5 else cv2.resize(f.image, (cam.width // 2, cam.height // 2), interpolation=cv2.INTER_AREA)
        r.send_image(image_msg(f.stamp, img))
        statuses.append(r.node.last_estimate.status)
    wait_until(lambda: len(r.odom) == 10, "odom for every frame")
    assert r.node.stats["errors"] == 0 and r.node.stats["processed"] == 10
    assert statuses[5] == TrackingStatus.LOST and r.node.stats["resets"] == 0
    assert all(st == TrackingStatus.TRACKING for st in statuses[6:]), statuses
    p4, p5 = (np.array([o.pose.pose.position.x, o.pose.pose.position.y, o.pose.pose.position.z]) for o in r.odom[4:6])
    np.testing.assert_allclose(p5, p4, atol=1e-9)  # held at the switch


class YawPipeline(FakePipeline):
    """A 90 deg in-place yaw of a base whose camera sits 1 m ahead of it, seen at VO scale 0.3, or metric
    (``metric``: the trajectory in metres, as with geometry.camera_height_m or wheel odometry)."""

    def __init__(self, metric: bool):
        super().__init__()
        self.metric = metric

    def process(self, frame, travelled_m=None):
        est = super().process(frame)
        T_bc = conv.xyzquat_to_matrix([1.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5])
        T_ob = np.eye(4)
        if len(self.frames) > 1:
            T_ob[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
        T = conv.invert(T_bc) @ T_ob @ T_bc
        T[:3, 3] *= 1.0 if self.metric else 0.3
        est.T_world_cam, est.scale_metric = T, self.metric
        est.scale_source = "ground_plane" if self.metric else "propagated"
        return est


@pytest.mark.parametrize("metric, position, scale", [(True, (0.0, 0.0, 0.0), "metric"),
                                                      (False, (-0.3, 0.3, 0.0), "unknown")])
def test_lever_arm_with_and_without_metric_scale(rig, metric, position, scale):
    """Camera 1 m ahead of base_link, 90 deg in-place yaw: metric -> base_link stays at the origin (exact
    lever arm); VO units -> the camera's motion in base axes, never (0.7, -0.7, 0)."""
    r = rig(pipeline=YawPipeline(metric), params={"ros.camera_to_base": [1.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]})
    r.send_info(info_msg())
    for i in range(2):
        r.send_image(image_msg(1.0 + 0.1 * i))
    wait_until(lambda: len(r.odom) == 2, "odometry")
    p, q = r.odom[-1].pose.pose.position, r.odom[-1].pose.pose.orientation
    assert (p.x, p.y, p.z) == pytest.approx(position, abs=1e-9)
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)), abs=1e-9)
    wait_until(lambda: any({kv.key: kv.value for kv in d.status[0].values}.get("scale") == scale for d in r.diag),
               "scale in the diagnostics")
