"""vo_node start-up and CameraInfo: an error in ``VONode.__init__`` is reported as itself, the model
file actually loaded is logged (the package's copy, not a stray ``models/`` folder in the CWD), and a
CameraInfo is read with its distortion model (refused when unknown) or from P for a rectified stream."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

REPO = Path(__file__).resolve().parents[1]
DOMAIN = 100 + (os.getpid() + 53) % 100
ENV = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(DOMAIN), PYTHONUNBUFFERED="1",
           PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


class LineReader:
    """Collects a process's stderr lines on a thread; ``wait_for`` a line containing a text."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((ln for ln in self.lines if text in ln), None)
            if hit is not None:
                return hit
            if proc.poll() is not None:
                self._thread.join(timeout=2)
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} in:\n{''.join(self.lines)}")


def run_vo_node(args: list[str], cwd: Path, prelude: str = "") -> subprocess.Popen:
    code = f"import sys; {prelude}from kp2d_ros.ros.node import main; sys.exit(main(sys.argv))"
    return subprocess.Popen([sys.executable, "-c", code, "--ros-args", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_init_error_is_not_hidden_in_process(monkeypatch):
    import kp2d_ros.pipeline
    from kp2d_ros.ros.node import VONode

    class NoTorch:
        def __init__(self, cfg):
            raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(kp2d_ros.pipeline, "VOPipeline", NoTorch)
    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=DOMAIN)
    try:
        with pytest.raises(ModuleNotFoundError, match="torch"):
            VONode(context=ctx)
    finally:
        rclpy.try_shutdown(context=ctx)  # destroys the half-built node: must not raise


def test_missing_torch_reported_by_vo_node(tmp_path):
    """``vo_node`` without torch: the ImportError is what the user sees, not '_cond'."""
    proc = run_vo_node(["-p", "frontend.type:=kp2d"], tmp_path, prelude="sys.modules['torch'] = None; ")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "torch" in err and ("ModuleNotFoundError" in err or "ImportError" in err), err
    assert "_cond" not in err and "AttributeError" not in err, err


def test_logs_the_package_model_not_a_stray_one(tmp_path):
    """A CWD with its own (broken) models/keypoint_net.pt: the node loads and logs the package's."""
    pytest.importorskip("torch")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "keypoint_net.pt").write_bytes(b"not a weights file")
    from kp2d_ros.networks.weights import read_weights

    meta = read_weights(REPO / "models" / "keypoint_net.pt")[1]
    proc = run_vo_node(["-p", "frontend.type:=kp2d", "-p", "frontend.model_path:=models/keypoint_net.pt"], tmp_path)
    reader = LineReader(proc.stderr)
    try:
        line = reader.wait_for("model: KeyPointNet", proc)
        reader.wait_for("vo_node up", proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert str(REPO / "models" / "keypoint_net.pt") in line, line
    assert f"step {meta['step']}" in line and f"width {meta['config']['width_multiplier']}" in line, line


# --------------------------------------------------------------------------------------------
# CameraInfo as the node reads it (callback called directly: no DDS traffic needed)
# --------------------------------------------------------------------------------------------
class NullPipeline:
    def reset(self):
        pass


def camera_info(model: str, d, p=None):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=640, height=480, distortion_model=model)
    msg.k = [300.0, 0.0, 320.0, 0.0, 300.0, 240.0, 0.0, 0.0, 1.0]
    msg.d = [float(v) for v in d]
    msg.p = [float(v) for v in (p if p is not None else [250.0, 0, 318.0, 0, 0, 250.0, 241.0, 0, 0, 0, 1.0, 0])]
    return msg


@pytest.fixture()
def make_node():
    from rclpy.parameter import Parameter

    from kp2d_ros.ros.node import VONode

    ctx = rclpy.Context()
    rclpy.init(args=[], context=ctx, domain_id=DOMAIN)
    nodes = []

    def make(**params):
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        nodes.append(VONode(pipeline=NullPipeline(), context=ctx, parameter_overrides=overrides))
        return nodes[-1]

    yield make
    for n in nodes:
        n.destroy_node()
    rclpy.try_shutdown(context=ctx)


def test_node_refuses_an_unknown_distortion_model(make_node):
    node = make_node()
    node._on_camera_info(camera_info("fov", [0.9]))
    assert node._camera_info is None and node.stats["camera_info_rejected"] == 1
    assert "unsupported distortion_model 'fov'" in node.last_warning
    node._on_camera_info(camera_info("equidistant", [-0.02, 0.01, -0.004, 0.001]))
    assert node._camera_info.model == "equidistant" and node._camera_info.has_distortion


def test_node_reads_a_rectified_stream_from_p(make_node):
    raw = make_node()
    raw._on_camera_info(camera_info("plumb_bob", [-0.28, 0.07, 0.0, 0.0, 0.0]))
    assert raw._camera_info.K[0, 0] == 300.0 and raw._camera_info.has_distortion
    rect = make_node(**{"camera.rectified": True})
    rect._on_camera_info(camera_info("plumb_bob", [-0.28, 0.07, 0.0, 0.0, 0.0]))
    assert rect._camera_info.K[0, 0] == 250.0 and rect._camera_info.K[1, 2] == 241.0
    assert not rect._camera_info.has_distortion
