"""KeyPointNet / IO-Net shapes and invariants, weight files, model path resolution, KP2DFrontend."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kp2d_ros.config import FrontendConfig, KeyPointNetConfig
from kp2d_ros.errors import DataError, ModelError
from kp2d_ros.networks.io_net import IONet, io_net_input
from kp2d_ros.networks.keypoint_net import KeyPointNet, preprocess, select_top_k
from kp2d_ros.networks.kp2d_frontend import KP2DFrontend
from kp2d_ros.networks.weights import model_summary, package_roots, read_weights, resolve_model_path, save_network

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return KeyPointNet(width_multiplier=0.25).eval()


@pytest.mark.parametrize("h,w", [(64, 96), (120, 160), (61, 83), (33, 40)])
def test_keypoint_net_shapes(small_net, h, w):
    with torch.no_grad():
        out = small_net(torch.randn(2, 3, h, w))
    hc, wc = -(-h // 8), -(-w // 8)
    assert out.scores.shape == (2, 1, hc, wc)
    assert out.keypoints.shape == (2, 2, hc, wc)
    assert out.descriptors.shape == (2, 256, 2 * hc, 2 * wc)
    assert out.image_size == (h, w)
    assert float(out.scores.min()) >= 0 and float(out.scores.max()) <= 1
    # keypoints stay inside the unpadded image
    assert float(out.keypoints[:, 0].max()) <= w - 1 and float(out.keypoints[:, 1].max()) <= h - 1
    assert float(out.keypoints.min()) >= 0


def test_full_size_parameter_count():
    n = sum(p.numel() for p in KeyPointNet().parameters())
    small = sum(p.numel() for p in KeyPointNet(width_multiplier=0.5).parameters())
    assert 4e6 < n < 7e6  # ~5 M parameters, ~20 MB fp32
    assert small < n / 3


def test_cross_border_offsets_reach_beyond_the_cell():
    net = KeyPointNet(width_multiplier=0.25, cross_ratio=2.0).eval()
    with torch.no_grad():  # saturate the location head: tanh -> +-1
        net.loc_b.weight.zero_()
        net.loc_b.bias.fill_(10.0)
        out = net(torch.randn(1, 3, 64, 64))
    centres = net.cell_centres((8, 8), out.keypoints)
    shift = out.keypoints[0, :, 1:-1, 1:-1] - centres[0, :, 1:-1, 1:-1]  # interior cells (no clamping)
    # cross_ratio 2 -> offsets up to one full cell (8 px) from the centre: beyond the 3.5 px cell half-width
    assert torch.allclose(shift, torch.full_like(shift, 8.0), atol=1e-3)
    half = KeyPointNet(width_multiplier=0.25, cross_ratio=1.0).eval()
    half.load_state_dict(net.state_dict())
    with torch.no_grad():
        out2 = half(torch.randn(1, 3, 64, 64))
    shift2 = out2.keypoints[0, :, 1:-1, 1:-1] - centres[0, :, 1:-1, 1:-1]
    assert torch.allclose(shift2, torch.full_like(shift2, 4.0), atol=1e-3)


def test_descriptors_have_unit_norm(small_net):
    with torch.no_grad():
        out = small_net(torch.randn(1, 3, 48, 64))
        dense = out.descriptors.norm(dim=1)
        pts = torch.tensor([[[0.0, 0.0], [10.3, 20.7], [63.0, 47.0]]])
        sampled = out.sample_descriptors(pts)
    assert torch.allclose(dense, torch.ones_like(dense), atol=1e-4)
    assert sampled.shape == (1, 3, 256)
    assert torch.allclose(sampled.norm(dim=-1), torch.ones(1, 3), atol=1e-4)


def test_select_top_k_orders_and_filters(small_net):
    with torch.no_grad():
        out = small_net(torch.randn(2, 3, 64, 80))
    (kp, s, d), _ = select_top_k(out, 20, border_px=4)
    assert kp.shape == (20, 2) and s.shape == (20,) and d.shape == (20, 256)
    assert bool((s[:-1] >= s[1:]).all())
    assert float(kp.min()) >= 4 and float(kp[:, 0].max()) <= 80 - 1 - 4
    (kp2, _, _), _ = select_top_k(out, 50, nms_radius=20)
    assert len(kp2) < 50 and float(torch.pdist(kp2).min()) >= 20


def test_preprocess_grey_and_rgb():
    cfg = KeyPointNetConfig()
    grey = np.full((10, 12), 255, np.uint8)
    rgb = np.zeros((10, 12, 3), np.uint8)
    tg, tr = preprocess(grey, cfg), preprocess(rgb, cfg)
    assert tg.shape == tr.shape == (1, 3, 10, 12)
    assert torch.allclose(tg, torch.full_like(tg, (1 - cfg.input_mean) / cfg.input_std))


def test_io_net_shapes():
    net = IONet().eval()
    scale = torch.tensor([100.0, 99.0])  # (w - 1, h - 1) of a 101 x 100 image
    p0, p1 = torch.rand(2, 50, 2) * scale, torch.rand(2, 50, 2) * scale
    x = io_net_input(p0, p1, torch.rand(2, 50), (100, 101))
    assert x.shape == (2, 5, 50)
    assert float(x[:, :4].abs().max()) <= 1.0
    with torch.no_grad():
        out = net(x)
    assert out.logits.shape == (2, 50)
    assert float(out.probabilities.min()) >= 0 and float(out.probabilities.max()) <= 1


def test_weights_round_trip(tmp_path, small_net):
    path = save_network(small_net, tmp_path / "kp.pt", step=7)
    loaded = KeyPointNet.from_file(path)
    assert loaded.config == small_net.config and loaded.metadata["step"] == 7
    assert not loaded.training
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        a, b = small_net(x), loaded(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.descriptors, b.descriptors)
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "metadata"}
    io = save_network(IONet(), tmp_path / "io.pt")
    assert isinstance(IONet.from_file(io), IONet)


def test_weights_errors(tmp_path, small_net):
    with pytest.raises(ModelError, match="not found"):
        KeyPointNet.from_file(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError, match="cannot read"):
        KeyPointNet.from_file(bad)
    io = save_network(IONet(), tmp_path / "io.pt")
    with pytest.raises(ModelError, match="IONet"):
        KeyPointNet.from_file(io)
    # right network, wrong shapes
    path = save_network(small_net, tmp_path / "kp.pt")
    blob = torch.load(path, weights_only=True)
    blob["metadata"]["config"]["width_multiplier"] = 0.5
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(ModelError, match="do not match"):
        KeyPointNet.from_file(tmp_path / "mismatch.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a kp2d_ros weights file"):
        KeyPointNet.from_file(tmp_path / "other.pt")


def test_resolve_model_path_package_then_cwd(tmp_path, monkeypatch, small_net):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    save_network(small_net, tmp_path / "models" / "x.pt")
    assert resolve_model_path("models/x.pt") == tmp_path / "models" / "x.pt"  # only in the CWD
    # a path relative to the repo root resolves from any CWD
    assert resolve_model_path("kp2d_ros/config.py").name == "config.py"


def test_resolve_prefers_the_package_copy(tmp_path, monkeypatch):
    assert package_roots()[0] == ROOT  # a source checkout: its own models/ first
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    shutil.copy(ROOT / "models" / "README.md", tmp_path / "models" / "keypoint_net.pt")
    (tmp_path / "models" / "only_here.pt").write_bytes(b"x")
    assert resolve_model_path("models/keypoint_net.pt") == ROOT / "models" / "keypoint_net.pt"
    assert resolve_model_path("./models/keypoint_net.pt") == tmp_path / "models" / "keypoint_net.pt"
    assert resolve_model_path("models/only_here.pt") == tmp_path / "models" / "only_here.pt"


def test_frontend_detect(small_net):
    fe = KP2DFrontend(FrontendConfig(type="kp2d", num_features=30, half_precision=False, device="cpu"), model=small_net)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    f = fe.detect(img)
    assert fe.name == "kp2d"
    assert f.keypoints.shape == (30, 2) and f.keypoints.dtype == np.float32
    assert f.descriptors.shape == (30, 256) and f.descriptors.dtype == np.float32
    assert np.allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-4)
    assert f.scores.shape == (30,) and not f.binary
    # working resolution: keypoints come back in input pixels
    fe2 = KP2DFrontend(FrontendConfig(type="kp2d", num_features=30, resolution=[45, 35], half_precision=False,
                                      device="cpu"), model=small_net)
    f2 = fe2.detect(img[..., 0])
    assert f2.keypoints[:, 0].max() <= 89.5 and f2.keypoints[:, 1].max() <= 69.5
    assert f2.keypoints[:, 0].max() > 45  # scaled up from the 45 px working width
    with pytest.raises(DataError):
        fe.detect(img.astype(np.float32))


def test_onnx_export_matches_torch(tmp_path, small_net):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from kp2d_ros.networks.export import export_onnx

    path = export_onnx(small_net, tmp_path / "kp.onnx", width=64, height=48)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        ref = small_net(x)
    outs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    for got, want in zip(outs, (ref.scores, ref.keypoints, ref.descriptors)):
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() < 1e-4


def test_sparse_last_conv_equals_dense_conv_then_sampling():
    torch.manual_seed(0)
    features = torch.randn(2, 8, 12, 16)  # 1/4 of a 48x64 image
    conv = torch.nn.Conv2d(8, 32, 3, padding=1)
    from kp2d_ros.networks.keypoint_net import sample_conv_descriptors, sample_descriptors
    inner = torch.rand(2, 50, 2) * torch.tensor([64 - 5.0, 48 - 5.0]) + 2.0  # >= stride/2 from the border
    dense = sample_descriptors(conv(features), inner, (48, 64))
    sparse = sample_conv_descriptors(features, conv, inner, (48, 64))
    assert sparse.shape == (2, 50, 32)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    corner = torch.tensor([[[0.0, 0.0]]]).expand(2, 1, 2)  # the dense map mixes in its zero padding here
    assert not torch.allclose(sample_conv_descriptors(features, conv, corner, (48, 64)),
                              sample_descriptors(conv(features), corner, (48, 64)), atol=1e-3)


def test_model_summary_names_the_file_loaded(tmp_path, small_net):
    path = save_network(small_net, tmp_path / "kp.pt", step=123)
    line = model_summary(KeyPointNet.from_file(path))
    assert line == f"KeyPointNet {path} (step 123, width 0.25)"
    shipped = ROOT / "models" / "io_net_epipolar.pt"
    if shipped.is_file():
        meta = read_weights(shipped)[1]
        line = model_summary(IONet.from_file("models/io_net_epipolar.pt"))
        assert str(shipped) in line and f"steps {meta['steps']}" in line
        assert f"width {meta['config']['channels']}" in line
