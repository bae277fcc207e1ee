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
        "publish_ms", "path_poses", "path_at_length", "backend"}


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
    assert set(report["backend"]) == {"windows", "lag_keyframes_median", "lag_keyframes_max", "samples"}
    assert report["backend"]["samples"] >= 1 and report["backend"]["windows"] >= 0
    path = report["path_at_length"]
    assert path["poses"] == 300 and path["received"] >= 1 and path["publish_ms"] > 0 and path["append_us"] > 0
    assert path["message_bytes"] > 300 * 60  # a PoseStamped is > 60 bytes serialised
