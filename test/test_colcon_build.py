"""``colcon build`` of a copy of the repository in a fresh workspace, as a ROS user builds it, then the
installed ``vo_node`` started from outside the tree: it must find its models through the share
directory (not a stray ``models/`` folder in its working directory).

Needs colcon (``colcon-core`` + ``colcon-ros`` from PyPI, in the ``test`` extra) importable by this
Python; skipped otherwise. The build takes a few seconds, the node's start-up (torch) most of the rest.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "kp2d_ros"
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "out", "runs", "build", "install", "log", "__pycache__",
                                     "*.egg-info", ".pytest_cache", "shared")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("colcon_core") is None or importlib.util.find_spec("colcon_ros") is None,
    reason="colcon-core / colcon-ros not installed (pip install colcon-core colcon-ros)")


def outside_env() -> dict[str, str]:
    """This environment without the source tree on PYTHONPATH (a ROS underlay there stays)."""
    env = dict(os.environ)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and not Path(p).resolve().is_relative_to(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(keep)
    return env


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    """<ws>/install after ``python -m colcon build`` of a copy of the repo in <ws>/src/kp2d_ros."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(REPO, ws / "src" / PACKAGE, ignore=COPY_IGNORE)
    p = subprocess.run([sys.executable, "-m", "colcon", "build"], cwd=ws, env=outside_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return ws / "install"


def test_install_tree(install):
    prefix = install / PACKAGE
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    share = prefix / "share" / PACKAGE
    for rel in ("package.xml", "launch/vo.launch.py", "config/vo.yaml", "config/vo.rviz", "config/fastdds_shm.xml"):
        assert (share / rel).is_file(), rel
    shipped = sorted(p.name for p in (REPO / "models").glob("*.pt"))
    assert shipped and sorted(p.name for p in (share / "models").glob("*.pt")) == shipped
    for exe in ("vo_node", "kp2d"):  # where ros2 run looks: lib/<package>/<executable>
        script = prefix / "lib" / PACKAGE / exe
        assert script.is_file() and os.access(script, os.X_OK), exe
        # the interpreter that ran colcon, so the scripts see its torch / rosbags (docs/ros2_install.md)
        assert script.read_text().splitlines()[0] == f"#!{sys.executable}", exe
    assert list(prefix.glob(f"lib/python3*/site-packages/{PACKAGE}/ros/node.py"))


def test_installed_vo_node_finds_models_in_share(install, tmp_path):
    pytest.importorskip("rclpy")
    pytest.importorskip("torch")
    (tmp_path / "models").mkdir()  # a stray, broken models/ folder where the node is started
    (tmp_path / "models" / "keypoint_net.pt").write_bytes(b"not a weights file")
    env = outside_env()
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(100 + (os.getpid() + 59) % 100),
               PYTHONUNBUFFERED="1")
    cmd = (f'. "{install}/setup.sh" && exec "{install}/{PACKAGE}/lib/{PACKAGE}/vo_node" --ros-args '
           '-p frontend.type:=kp2d -p frontend.model_path:=models/keypoint_net.pt')
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("vo_node up" in ln for ln in lines) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    log = "".join(lines)
    assert "vo_node up" in log, log
    (model_line,) = [ln for ln in lines if "model: KeyPointNet" in ln]
    assert f"{install}/{PACKAGE}/share/{PACKAGE}/models/keypoint_net.pt" in model_line, model_line
    assert str(tmp_path) not in model_line and str(REPO) not in model_line
