"""kp2d export-onnx: the exported KeyPointNet gives the torch outputs under onnxruntime (1e-4)."""
import numpy as np
import pytest
import torch

from kp2d_ros.cli import main
from kp2d_ros.networks.keypoint_net import KeyPointNet
from kp2d_ros.networks.weights import save_network


@pytest.mark.parametrize("width_multiplier,resolution", [(0.25, (96, 64)), (0.5, (100, 60))])
def test_export_onnx_cli_matches_torch(tmp_path, width_multiplier, resolution):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = KeyPointNet(width_multiplier=width_multiplier).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model = save_network(net, tmp_path / "kp.pt")
    w, h = resolution
    out = tmp_path / "kp.onnx"
    assert main(["export-onnx", "--model", str(model), "--resolution", f"{w}x{h}", "--out", str(out)]) == 0
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        ref = net(x)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"] and list(sess.get_inputs()[0].shape) == [1, 3, h, w]
    got = sess.run(None, {"image": x.numpy()})
    for name, a, b in zip(("scores", "keypoints", "descriptors"), got, (ref.scores, ref.keypoints, ref.descriptors)):
        assert a.shape == tuple(b.shape), name
        assert np.abs(a - b.numpy()).max() < 1e-4, name
