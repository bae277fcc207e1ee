"""``kp2d bench-node`` smoke test: a few frames through a real vo_node process, JSON report keys."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
from conftest import data_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = {"frames", "received", "drop_rate", "publish_rate_hz", "node_rate_hz", "latency_ms_median",
        "latency_ms_p95", "latency_ms_mean", "latency_ms_max", "rss_mb_start", "rss_mb_max", "rss_mb_end",
        "image_width", "image_height", "encoding", "wall_s", "frontend", "sequence", "unique_frames", "rate_factor", "rate_hz",
        "publish_ms", "path_poses", "path_at_length", "backend", "node_latency"}


def test_bench_node_smoke(tmp_path):
    seq = data_path("vo", "tum_fr2_desk_20f")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_DOMAIN_ID=str(100 + (os.getpid() + 53) % 100),
               FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"))
    out = tmp_path / "bench.json"
    p = subprocess.run([str(Path(sys.executable).with_name("kp2d")), "bench-node", str(seq), "--frames", "8",
                        "--unique", "4", "--warmup", "2", "--rate", "10", "--set", "frontend.type=orb",
                        "--set", "frontend.num_features=300", "--path-poses", "300", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    report = json.loads(out.read_text())
    assert KEYS <= set(report)
    assert report["frames"] == 8 and 1 <= report["received"] <= 8  # the newest frame is always processed
    assert report["drop_rate"] == pytest.approx(1 - report["received"] / 8)
    assert report["frontend"] == "orb" and (report["image_width"], report["image_height"]) == (640, 480)
    assert report["rss_mb_max"] >= report["rss_mb_start"] > 0
    assert report["latency_ms_p95"] >= report["latency_ms_median"] > 0
    assert json.loads(p.stdout) == report
    # --rate: a fixed publishing rate (8 images, 7 periods of 0.1 s at least), not 2x the node's
    assert report["rate_hz"] == 10 and report["rate_factor"] is None and report["publish_rate_hz"] <= 10 * 8 / 7 + 1e-6
    # the node's publication costs (ms per call); TF only where tf2_ros / tf2_msgs are installed
    assert report["publish_ms"]["odom"] > 0 and report["publish_ms"]["keypoints"] > 0
    assert 1 <= report["path_poses"] <= 10 and set(report["publish_ms"]) == {"odom", "keypoints", "tf", "path"}
    # the backend's windows in the measured phase, from the node's diagnostics
    assert set(report["backend"]) == {"windows", "lag_keyframes_median", "lag_keyframes_max", "samples",
                                      "before_pose_ms", "after_pose_ms"}
    assert report["backend"]["samples"] >= 1 and report["backend"]["windows"] >= 0
    # and its work in the node's image thread, before and after the pose (ms per frame)
    assert report["backend"]["before_pose_ms"] >= 0 and report["backend"]["after_pose_ms"] > 0
    # the node's own split of its latency: the image's wait for the image thread, and the frame's work
    lat = report["node_latency"]
    assert set(lat) == {"median_ms", "wait_median_ms", "work_median_ms"}
    assert lat["median_ms"] > 0 and lat["work_median_ms"] > 0 and lat["wait_median_ms"] >= 0
    path = report["path_at_length"]
    assert path["poses"] == 300 and path["received"] >= 1 and path["publish_ms"] > 0 and path["append_us"] > 0
    assert path["message_bytes"] > 300 * 60  # a PoseStamped is > 60 bytes serialised


def _result(median: float, p95: float, work: float | None = None):
    from kp2d_ros.ros.bench import NodeBenchResult

    return NodeBenchResult(frames=10, received=10, drop_rate=0.0, publish_rate_hz=2.0, node_rate_hz=3.0,
                           latency_ms_median=median, latency_ms_p95=p95, latency_ms_mean=median,
                           latency_ms_max=p95, rss_mb_start=1.0, rss_mb_max=1.0, rss_mb_end=1.0, image_width=8,
                           image_height=8, encoding="mono8", wall_s=1.0,
                           node_latency={} if work is None else {"work_median_ms": work})


def test_paired_difference_is_b_minus_a_round_by_round():
    from kp2d_ros.errors import DataError
    from kp2d_ros.ros.bench import paired_difference, summarize_rounds

    a = [_result(100, 150), _result(130, 170), _result(90, 120)]
    b = [_result(104, 160), _result(125, 180), _result(99, 121)]
    d = paired_difference(a, b)
    assert d["median_ms_per_round"] == [4, -5, 9] and d["p95_ms_per_round"] == [10, 10, 1]
    assert d["median_ms"] == 4 and d["p95_ms"] == 10 and d["b_slower_rounds"] == 2 and d["rounds"] == 3
    # the pairing matters: the rounds' medians differ by less than the spread between rounds
    s = summarize_rounds(a)
    assert s["latency_ms_median"] == 100 and s["latency_ms_p95"] == 150 and len(s["runs"]) == 3
    assert d["work_ms"] is None and s["work_ms_median"] is None  # the nodes did not report their work
    # the nodes' own work per frame (latency less the image's wait), B - A round by round
    a = [_result(100, 150, 60), _result(130, 170, 70), _result(90, 120, 65)]
    b = [_result(104, 160, 61), _result(125, 180, 69.5), _result(99, 121, 66)]
    d = paired_difference(a, b)
    assert d["work_ms_per_round"] == pytest.approx([1, -0.5, 1]) and d["work_ms"] == pytest.approx(1)
    assert d["b_slower_work_rounds"] == 2 and summarize_rounds(a)["work_ms_median"] == 65
    with pytest.raises(DataError):
        paired_difference(a, b[:2])
    with pytest.raises(DataError):
        summarize_rounds([])


def test_bench_node_against_runs_both_configurations_in_alternating_rounds(tmp_path):
    seq = data_path("vo", "tum_fr2_desk_20f")
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_DOMAIN_ID=str(100 + (os.getpid() + 59) % 100),
               FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"))
    kp2d = str(Path(sys.executable).with_name("kp2d"))
    base = [kp2d, "bench-node", str(seq), "--frames", "4", "--unique", "3", "--warmup", "1",
            "--set", "frontend.type=orb", "frontend.num_features=300", "--path-poses", "0"]
    # --against compares at one publishing rate: refused without --rate, before any node starts
    p = subprocess.run(base + ["--against", "backend.window=0"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--rate" in p.stderr
    out = tmp_path / "ab.json"
    p = subprocess.run(base + ["--rate", "5", "--against", "backend.window=0", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert p.stderr.index("configuration a") < p.stderr.index("configuration b")
    report = json.loads(out.read_text())
    assert report["rounds"] == 1 and report["rate_hz"] == 5
    assert report["a"]["set"] == {"frontend.type": "orb", "frontend.num_features": 300}
    assert report["b"]["set"] == {**report["a"]["set"], "backend.window": 0}
    for label in "ab":
        (run,) = report[label]["runs"]
        assert run["frames"] == 4 and report[label]["latency_ms_median"] == run["latency_ms_median"] > 0
    assert report["a"]["runs"][0]["backend"] and not report["b"]["runs"][0]["backend"]  # window 0: no backend
    diff = report["difference"]
    assert diff["median_ms"] == pytest.approx(report["b"]["latency_ms_median"] - report["a"]["latency_ms_median"])
    assert diff["work_ms"] == pytest.approx(report["b"]["work_ms_median"] - report["a"]["work_ms_median"])
    assert "path_at_length" not in report
