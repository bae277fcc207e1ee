"""SIGINT ends vo_node (its own process) in under 2 s while a 4000x3000 frame is being processed,
without a traceback, and the trajectory file is written.

The requirement (issue 14) is 2 s, a behaviour (a user pressing Ctrl-C), not a speed benchmark: the
node must not wait for the frame. SIFT on a 4000x3000 image takes several seconds (it works on a 2x
upsampled 8000x6000 base image), so the signal arrives mid-frame; the test checks that it did.
Measured on the shared 2-core machine at load 11-13: 0.56-0.60 s typical, one run in nine 2.08 s;
before the fix 7.4 s. The test allows STOP_BOUND_S = 3 s so that load spikes do not fail it while
the old behaviour still would.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("std_srvs")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402

from kp2d_ros.data import read_tum  # noqa: E402
from kp2d_ros.ros import conversions as conv  # noqa: E402
from kp2d_ros.ros.spinning import Spinner  # noqa: E402

from test_ros_dds import stop_node  # noqa: E402
from test_ros_runtime import Client  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOMAIN = 100 + (os.getpid() + 61) % 100
ENV = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(DOMAIN),
           FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"), PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
BIG_STAMP = 100.0
STOP_BOUND_S = 3.0  # requirement 2 s; margin for an overloaded CI machine (see the module docstring)


def wait_until(pred, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigint_during_a_large_frame(tmp_path):
    traj = tmp_path / "out" / "trajectory.tum"
    proc = subprocess.Popen(
        [str(BIN / "vo_node"), "--ros-args", "-p", "frontend.type:=sift", "-p", "frontend.num_features:=500",
         "-p", "camera.fx:=500.0", "-p", "camera.fy:=500.0", "-p", f"ros.trajectory_file:={traj}"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=DOMAIN)
    node = rclpy.create_node("sigint_test", context=ctx)
    odom, diag = [], []
    node.create_subscription(Odometry, "/odom", lambda m: odom.append((time.monotonic(), m)), QoSProfile(depth=100))
    node.create_subscription(DiagnosticArray, "/diagnostics", diag.append, QoSProfile(depth=100))
    sender = Client(DOMAIN, FASTDDS_DEFAULT_PROFILES_FILE=ENV["FASTDDS_DEFAULT_PROFILES_FILE"])  # big SHM segments
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = Spinner(executor)
    spinner.start()

    def received() -> int:
        values = {kv.key: kv.value for kv in diag[-1].status[0].values} if diag else {}
        return int(values.get("received", 0))

    sent = None
    try:
        wait_until(lambda: node.count_publishers("/odom") > 0, "vo_node up")
        t = 10.0
        while len(odom) < 3:  # a few ordinary frames (re-sent until processed: the first may precede matching)
            n, deadline = len(odom), time.monotonic() + 3.0
            assert sender.image("/image", 640, 480, t) == {"published": True}
            t += 0.1
            wait_until(lambda: len(odom) > n or time.monotonic() > deadline, "odometry")
        wait_until(lambda: received() >= 3, "diagnostics")
        before = received()
        assert sender.image("/image", 4000, 3000, BIG_STAMP) == {"published": True}
        sent = time.monotonic()
        wait_until(lambda: received() > before, "the large frame to reach the node")
    finally:
        signalled = time.monotonic()
        elapsed, err = stop_node(proc, timeout=30)
        sender.close()
        spinner.stop(timeout_s=2.0)
        rclpy.try_shutdown(context=ctx)

    big_odom = [at for at, m in odom if conv.stamp_to_sec(m.header.stamp) == BIG_STAMP]
    assert sent is not None and not [at for at in big_odom if at < signalled], "the large frame was done before SIGINT"
    assert elapsed < STOP_BOUND_S, f"vo_node took {elapsed:.2f} s to stop on SIGINT\n{err[-3000:]}"
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    saved = read_tum(traj)  # written at shutdown: the frames processed before the signal
    processed = sorted(conv.stamp_to_sec(m.header.stamp) for _, m in odom)
    # a frame the node posed before our subscription matched its publisher is saved but never reached us (volatile
    # QoS; stop 39's CI: 10.0 saved, 10.1-10.3 received): compare from the first one received
    np.testing.assert_allclose(saved.stamps[saved.stamps >= processed[0]], processed)
    assert np.all(np.diff(saved.stamps) > 0) and saved.stamps[0] >= 10.0
    assert len(saved) >= 3 and f"wrote {len(saved)} poses" in err
