"""Wheel odometry over real DDS: ``vo_node`` (its own process) subscribing ``ros.scale_odometry_topic``
publishes metric odometry.

The TUM fr2/desk bag is played with ``kp2d play --lockstep``; a wheel-odometry stand-in (nav_msgs/Odometry
at 100 Hz, positions along the ground-truth camera path) is published to the node first. Without it the
trajectory's unit is the first baseline (TUM: Sim3 scale ~0.03); with it the node's odometry and saved
trajectory are in metres. Run with PYTHONPATH=<worktree> so that the vo_node process imports this code.
"""
import subprocess

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402

from kp2d_ros.config import dump_config, load_config  # noqa: E402
from kp2d_ros.ros import conversions as conv  # noqa: E402
from test_ros_dds import BIN, ENV, OVERRIDES, REPO, Listener, start_node, stop_node, wait_until  # noqa: E402

from conftest import data_path  # noqa: E402


def test_wheel_odometry_over_dds_gives_metric_odometry(tmp_path):
    from kp2d_ros.data import open_sequence, read_tum, write_bag

    seq = open_sequence(data_path("vo", "tum_fr2_desk_20f"))
    bag = write_bag(tmp_path / "bag", seq, storage="sqlite3")
    params = tmp_path / "vo.yaml"
    dump_config(load_config(REPO / "config" / "vo.yaml",
                            overrides={**OVERRIDES, "ros.scale_odometry_topic": "/wheel_odom",
                                       # the exact comparison with the offline pipeline below is of the front
                                       # end's wheel scale: without the backend's windows (the node's saved
                                       # trajectory keeps refined keyframes; test_ros_runtime covers the backend)
                                       "backend.window": 0}), params)
    gt = seq.ground_truth
    centres = gt.poses[:, :3, 3]
    fine = np.arange(gt.stamps[0] - 0.05, gt.stamps[-1] + 0.05, 0.01)
    positions = np.stack([np.interp(fine, gt.stamps, centres[:, k]) for k in range(3)], axis=1)

    saved = tmp_path / "node.tum"
    proc = start_node(params, "-p", f"ros.trajectory_file:={saved}")
    listener = Listener()
    try:
        pub = listener.node.create_publisher(Odometry, "/wheel_odom", QoSProfile(depth=1000))
        wait_until(lambda: pub.get_subscription_count() > 0 and listener.node.count_publishers("/odom") > 0,
                   "vo_node to come up")
        for t, p in zip(fine, positions):
            msg = Odometry()
            msg.header.stamp = conv.sec_to_stamp(float(t), Time)
            msg.header.frame_id, msg.child_frame_id = "odom_wheels", "base_link"
            msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = (float(v) for v in p)
            msg.pose.pose.orientation.w = 1.0
            pub.publish(msg)
        wait_until(lambda: listener.diagnostic("wheel_odometry") == str(len(fine)), "wheel odometry received")
        play = subprocess.run([str(BIN / "kp2d"), "play", str(bag), "--lockstep", "--rate", "0",
                               "--config", str(params), "--wait", "60"],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert play.returncode == 0, play.stderr
        wait_until(lambda: len(listener.odom) >= 20, "odometry")
        wait_until(lambda: listener.diagnostic("scale") == "metric", "scale: metric in the diagnostics")
        assert "wheel_odometry" in listener.diagnostic("scale_source")
        assert proc.poll() is None, "vo_node died"
    finally:
        listener.close()
        _, err = stop_node(proc)
    assert proc.returncode == 0 and "Traceback" not in err, err

    # the odometry after the scale turned metric: the Sim(3) fit to the ground truth needs no scale
    odom = {conv.stamp_to_sec(o.header.stamp): np.array([o.pose.pose.position.x, o.pose.pose.position.y,
                                                         o.pose.pose.position.z]) for o in listener.odom}
    stamps = np.array(sorted(odom))[-10:]
    idx = [int(np.argmin(np.abs(gt.stamps - s))) for s in stamps]
    # (ORB on 20 handheld frames of ~2 cm: the per-step noise is ~20 %; without wheel odometry the scale is ~0.03)
    assert sim3_scale(np.stack([odom[s] for s in stamps]), centres[idx]) == pytest.approx(1.0, abs=0.2)
    # the node's saved trajectory is metric throughout (rescaled when the scale was acquired) ...
    traj = read_tum(saved)
    assert len(traj) == 20
    assert sim3_scale(traj.poses[:, :3, 3], centres) == pytest.approx(1.0, abs=0.2)
    # ... and is exactly what the pipeline gives offline with the same wheel samples, interpolated the same way
    from kp2d_ros.pipeline import VOPipeline
    from kp2d_ros.scale import WheelOdometry

    wheel = WheelOdometry()
    for t, p in zip(fine, positions):
        wheel.add(float(t), p)
    vo, offline, prev = VOPipeline(load_config(params)), [], None
    for frame in open_sequence(bag):
        d = None if prev is None else wheel.travelled(prev, frame.stamp).distance
        est = vo.process(frame, travelled_m=d)
        for T in offline:  # as kp2d replay: the poses so far in the new unit when the scale turned metric
            T[:3, 3] *= est.scale_rescaled
        offline.append(est.T_world_cam.copy())
        prev = frame.stamp
    np.testing.assert_allclose(traj.poses, np.stack(offline), atol=1e-5)


def sim3_scale(est: np.ndarray, gt: np.ndarray) -> float:
    """Umeyama: the scale s of the Sim(3) that best maps ``est`` onto ``gt`` (1: metric)."""
    e, g = est - est.mean(0), gt - gt.mean(0)
    U, S, Vt = np.linalg.svd(g.T @ e / len(e))
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    return float(np.trace(np.diag(S) @ D) / np.mean(np.sum(e ** 2, axis=1)))
