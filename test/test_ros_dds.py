"""End to end over real DDS: bag -> ``kp2d play`` -> ``vo_node`` (separate process) -> odometry.

The test bags are written from ../shared/data/vo/tum_fr2_desk_20f with the rosbags writer (sqlite3
and mcap). The node runs as its own process with the shipped Fast DDS shared-memory profile
(640x480 rgb8 frames do not fit the default segments), on loopback only and a private domain id.
The trajectory recorded by ``kp2d play --lockstep`` must equal the offline pipeline on the same
bag with the same config.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

from kp2d_ros.config import dump_config, load_config  # noqa: E402
from kp2d_ros.ros import conversions as conv  # noqa: E402
from kp2d_ros.ros.spinning import Spinner  # noqa: E402

from conftest import data_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOMAIN = 100 + (os.getpid() + 37) % 100
# the backend waits for each window (as kp2d replay does): the node's odometry must equal the offline replay's
OVERRIDES = {"frontend.type": "orb", "frontend.num_features": 1000, "backend.threaded": False}
ENV = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(DOMAIN),
           FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"), PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("cfg") / "vo_test.yaml"
    dump_config(load_config(REPO / "config" / "vo.yaml", overrides=OVERRIDES), f)
    return f


@pytest.fixture(scope="module")
def sequence():
    from kp2d_ros.data import open_sequence

    return open_sequence(data_path("vo", "tum_fr2_desk_20f"))


@pytest.fixture(scope="module")
def bags(sequence, tmp_path_factory) -> dict:
    from kp2d_ros.data import write_bag

    root = tmp_path_factory.mktemp("bags")
    return {s: write_bag(root / s, sequence, storage=s) for s in ("sqlite3", "mcap")}


def offline_replay(bag: Path, params_file: Path):
    """The same bag through the offline replay (VOPipeline in this process): its ReplayResult."""
    from kp2d_ros.data import open_sequence
    from kp2d_ros.eval.replay import replay

    return replay(open_sequence(bag), load_config(params_file), progress=False)


class Listener:
    """Records the node's odom, path and keypoints; can publish a malformed image."""

    def __init__(self):
        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx, domain_id=DOMAIN)
        self.node = rclpy.create_node("test_listener", context=self.ctx)
        self.odom, self.paths, self.clouds, self.diag = [], [], [], []
        q = QoSProfile(depth=100)
        self.node.create_subscription(Odometry, "/odom", self.odom.append, q)
        self.node.create_subscription(PathMsg, "/path", self.paths.append, q)
        self.node.create_subscription(PointCloud2, "/keypoints", self.clouds.append, q)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, q)
        self.pub_bad = self.node.create_publisher(Image, "/camera/image_raw", 10)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.spinner = Spinner(self.executor)
        self.spinner.start()

    def diagnostic(self, key: str) -> str | None:
        if not self.diag:
            return None
        return {kv.key: kv.value for kv in self.diag[-1].status[0].values}.get(key)

    def close(self):
        self.spinner.stop(timeout_s=2.0)
        rclpy.try_shutdown(context=self.ctx)


def wait_until(pred, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_node(params_file: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "vo_node"), "--ros-args", "--params-file", str(params_file),
         "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info", *args],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_node(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[float, str]:
    """SIGINT; returns (seconds to exit, stderr); inf when it had to be killed after ``timeout`` s."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return float("inf"), err
    return time.monotonic() - t0, err


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_through_node_matches_offline_replay(storage, bags, params_file, tmp_path):
    bag = bags[storage]
    saved = tmp_path / "node_trajectory.tum"  # written by the node at shutdown
    proc = start_node(params_file, "-p", f"ros.trajectory_file:={saved}")
    listener = Listener()
    try:
        wait_until(lambda: listener.pub_bad.get_subscription_count() > 0
                   and listener.node.count_publishers("/odom") > 0, "vo_node to come up")
        out = tmp_path / "odom.tum"
        play = subprocess.run([str(BIN / "kp2d"), "play", str(bag), "--lockstep", "--rate", "0",
                               "--record-odom", str(out), "--config", str(params_file), "--wait", "60"],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert play.returncode == 0, play.stderr
        assert "images published: 20, odometry received: 20, without odometry: 0" in play.stdout

        wait_until(lambda: len(listener.odom) >= 20 and len(listener.clouds) >= 20
                   and listener.paths and len(listener.paths[-1].poses) == 20, "odom/path/keypoints")
        # a malformed image: rejected with a warning naming the encoding, the node stays up
        bad = conv.array_to_image(np.zeros((4, 4, 3), np.uint8), Image)
        bad.encoding = "nv21"
        listener.pub_bad.publish(bad)
        wait_until(lambda: listener.diagnostic("rejected") == "1", "rejection in diagnostics")
        assert listener.diagnostic("processed") == "20" and "nv21" in listener.diagnostic("last_warning")
        # the backend (deterministic here: each window taken at once) reports itself
        assert int(listener.diagnostic("backend_windows")) > 0 and listener.diagnostic("backend_lag_keyframes") == "0"
        assert proc.poll() is None, "vo_node died"
    finally:
        listener.close()
        dt, err = stop_node(proc)

    assert dt < 2.0, f"vo_node took {dt:.2f} s to stop on SIGINT"
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "nv21" in err  # the warning names the encoding

    # recorded camera trajectory == offline replay of the same bag and config
    from kp2d_ros.data import read_tum

    rec = read_tum(out)
    replayed = offline_replay(bag, params_file)
    stamps, poses = replayed.estimate.stamps, replayed.estimate.poses
    assert len(rec) == 20
    np.testing.assert_allclose(rec.stamps, stamps, atol=1e-6)
    np.testing.assert_allclose(rec.poses, poses, atol=1e-5)
    assert np.linalg.norm(poses[-1][:3, 3]) > 0.1  # the camera moved: not a trivial comparison

    # the node's own trajectory file + kp2d evaluate against the bag = the offline replay's metrics
    node_traj = read_tum(saved)
    np.testing.assert_allclose(node_traj.stamps, stamps, atol=1e-6)
    np.testing.assert_allclose(node_traj.poses, poses, atol=1e-5)
    ev = subprocess.run([str(BIN / "kp2d"), "evaluate", str(saved), str(bag), "--out", str(tmp_path / "ev")],
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    report, expected = json.loads((tmp_path / "ev" / "report.json").read_text()), replayed.report()
    assert expected["ate_rmse_m"] > 0
    for key in ("frames", "path_length_m", "ate_rmse_m", "rpe_rot_deg", "rpe_trans_m"):
        assert report[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key

    # the other outputs
    odom = listener.odom[-1]
    assert (odom.header.frame_id, odom.child_frame_id) == ("odom", "base_link")
    T_base_cam = conv.xyzquat_to_matrix(load_config(params_file).ros.camera_to_base)
    np.testing.assert_allclose(conv.base_to_camera_pose(conv.pose_msg_to_matrix(odom.pose.pose), T_base_cam),
                               poses[-1], atol=1e-5)
    cloud = listener.clouds[-1]
    kp = conv.cloud_to_keypoints(cloud)
    assert cloud.width > 100 and kp[:, 3].sum() > 15  # matched keypoints flagged
    assert (0 <= kp[:, 0]).all() and (kp[:, 0] < 640).all() and (kp[:, 1] < 480).all()


def test_the_frames_the_node_dropped_replay_to_its_trajectory(bags, params_file, tmp_path):
    """Played faster than the node keeps up, it drops frames (the newest image wins); ``kp2d play --record-drops``
    names them, and the offline replay of the bag without them gives the node's trajectory."""
    from kp2d_ros.data import open_sequence, read_tum
    from kp2d_ros.data.faults import simulate
    from kp2d_ros.eval.replay import replay

    bag, out, drops = bags["mcap"], tmp_path / "odom.tum", tmp_path / "drops.txt"
    proc = start_node(params_file)
    try:
        play = subprocess.run([str(BIN / "kp2d"), "play", str(bag), "--rate", "4", "--record-odom", str(out),
                               "--record-drops", str(drops), "--config", str(params_file), "--wait", "60"],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert play.returncode == 0, play.stderr
        assert proc.poll() is None, "vo_node died"
    finally:
        _, err = stop_node(proc)
    spec = drops.read_text().strip()
    rec = read_tum(out)
    # 4x the bag's 10 Hz: a frame every 25 ms, less than the node needs (the backend waits for each window)
    assert spec and 2 <= len(rec) < 20, (spec, len(rec))
    assert f"without odometry: {20 - len(rec)}" in play.stdout and "replay them: kp2d replay" in play.stdout
    replayed = replay(simulate(open_sequence(bag), spec), load_config(params_file), progress=False)
    np.testing.assert_allclose(rec.stamps, replayed.estimate.stamps, atol=1e-6)
    np.testing.assert_allclose(rec.poses, replayed.estimate.poses, atol=1e-5)
    assert "Traceback" not in err, err


def test_dropped_images_are_told_by_stamp_and_zero_stamps_by_the_node_s_own():
    from kp2d_ros.ros.player import dropped_images

    assert dropped_images([10, 20, 30, 40], [10, 40]) == [1, 2]
    # a first image stamped 0 is published under the node's clock: processed, not dropped
    assert dropped_images([0, 20, 30, 40], [1_800_000_000_000_000_000, 30, 40]) == [1]
    assert dropped_images([0, 20, 30, 40], [30, 40]) == [0, 1]
    assert dropped_images([0, 0, 0], [5]) is None  # an unstamped camera, two of three dropped: cannot be told


def test_play_without_node_fails_clearly(bags, tmp_path):
    env = dict(ENV, ROS_DOMAIN_ID=str((DOMAIN + 50) % 200 + 1))  # nobody listens there
    p = subprocess.run([str(BIN / "kp2d"), "play", str(bags["sqlite3"]), "--wait", "1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no vo_node subscribed to /camera/image_raw" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run([str(BIN / "kp2d"), "play", str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "not a rosbag2 bag" in p.stderr
