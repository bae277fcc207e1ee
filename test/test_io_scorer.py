"""IO-Net at inference: the MatchScorer contract, pipeline wiring, and (with the shipped epipolar
IO-Net) filtering of a synthetic two-view scene with parallax."""
from pathlib import Path

import numpy as np
import pytest
import torch

from kp2d_ros.config import MatchingConfig, VOConfig
from kp2d_ros.errors import DataError, ModelError
from kp2d_ros.matching import filter_matches, match_features, match_features_torch
from kp2d_ros.networks.io_net import IONet
from kp2d_ros.networks.io_scorer import IOScorer, build_scorer
from kp2d_ros.networks.weights import save_network
from kp2d_ros.training.epipolar import EpipolarPairConfig, render_second_view, sample_scene, sampson_px
from kp2d_ros.types import Features, Matches

REPO = Path(__file__).resolve().parents[1]
EPIPOLAR = REPO / "models" / "io_net_epipolar.pt"


@pytest.fixture(scope="module")
def random_io_net():
    torch.manual_seed(0)
    return IONet(channels=16, num_blocks=1).eval()


def test_scorer_contract(random_io_net):
    scorer = IOScorer(random_io_net, device="cpu")
    rng = np.random.default_rng(0)
    kp0, kp1 = rng.uniform(0, 300, (40, 2)), rng.uniform(0, 300, (40, 2))
    p = scorer.score(kp0, kp1, rng.uniform(0, 2, 40), (320, 240))
    assert p.shape == (40,) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    # one set: a match's score depends on the others (instance normalisation), not on the order
    perm = rng.permutation(40)
    d = rng.uniform(0, 2, 40)
    np.testing.assert_allclose(scorer.score(kp0[perm], kp1[perm], d[perm], (320, 240)),
                               scorer.score(kp0, kp1, d, (320, 240))[perm], atol=1e-5)
    assert scorer.score(kp0[:1], kp1[:1], np.ones(1), (320, 240)).tolist() == [0.5]
    with pytest.raises(DataError):
        scorer.score(kp0, kp1[:3], np.ones(40), (320, 240))


def test_pipeline_builds_the_scorer_from_config(tmp_path, random_io_net):
    from kp2d_ros.pipeline import VOPipeline

    path = save_network(random_io_net, tmp_path / "io.pt")
    cfg = VOConfig()
    cfg.frontend.device = "cpu"
    cfg.matching.io_net = False
    assert VOPipeline(cfg).scorer is None
    cfg.matching.io_net, cfg.matching.io_net_path, cfg.matching.device = True, str(path), "cpu"
    assert isinstance(VOPipeline(cfg).scorer, IOScorer)
    cfg.frontend.type = "orb"  # IO-Net reads KeyPointNet descriptor distances: never with another frontend
    assert VOPipeline(cfg).scorer is None
    assert build_scorer(MatchingConfig(io_net=False)) is None
    with pytest.raises(ModelError):
        build_scorer(MatchingConfig(io_net=True, io_net_path=str(tmp_path / "missing.pt")))


def test_filter_orders_best_first_and_drops_below_threshold():
    m = Matches(np.arange(5), np.arange(5), np.full(5, 0.5, np.float32), np.zeros(5, np.float32))
    out = filter_matches(m, np.array([0.2, 0.9, 0.05, 0.6, 0.3]), 0.25)
    assert out.idx0.tolist() == [1, 3, 4]


def test_torch_matching_equals_numpy():
    rng = np.random.default_rng(1)
    d0 = rng.normal(size=(300, 256)).astype(np.float32)
    d1 = np.concatenate([d0[:200] + 0.3 * rng.normal(size=(200, 256)), rng.normal(size=(150, 256))]).astype(np.float32)
    unit = lambda d: d / np.linalg.norm(d, axis=1, keepdims=True)  # noqa: E731
    f0 = Features(np.zeros((300, 2), np.float32), unit(d0), np.ones(300, np.float32))
    f1 = Features(np.zeros((350, 2), np.float32), unit(d1), np.ones(350, np.float32))
    for cfg in (MatchingConfig(device="cpu"), MatchingConfig(device="cpu", ratio=0.9, max_distance=1.2)):
        a, b = match_features(f0, f1, cfg), match_features_torch(f0, f1, cfg, torch.device("cpu"))
        assert len(a) > 100
        assert a.idx0.tolist() == b.idx0.tolist() and a.idx1.tolist() == b.idx1.tolist()
        np.testing.assert_allclose(a.distances, b.distances, atol=1e-4)


def synthetic_parallax_matches(seed=0, n_in=300, n_out=150):
    """Matches of a piecewise-planar scene under car-like motion: true correspondences (with 0.3 px
    noise) and random outliers, both with the same descriptor-distance distribution, so only the
    geometry separates them."""
    rng = np.random.default_rng(seed)
    cfg = EpipolarPairConfig(width=640, height=192)
    scene = sample_scene(cfg, rng)
    kp0 = rng.uniform([5, 5], [634, 186], (n_in + n_out, 2))
    kp1 = np.empty_like(kp0)
    for i, p in enumerate(kp0[:n_in]):
        H = scene.homography(int(scene.labels[int(p[1]), int(p[0])]))
        q = H @ np.array([p[0], p[1], 1.0])
        kp1[i] = q[:2] / q[2] + rng.normal(0, 0.3, 2)
    kp1[n_in:] = rng.uniform([0, 0], [639, 191], (n_out, 2))
    inside = np.all((kp1 >= 0) & (kp1 <= [639, 191]), axis=1)
    kp0, kp1 = kp0[inside], kp1[inside]
    dist = rng.uniform(0.6, 1.1, len(kp0)).astype(np.float32)
    truth = sampson_px(scene.F, kp0, kp1) < 1.0
    return kp0.astype(np.float32), kp1.astype(np.float32), dist, truth


def test_scene_generator_is_epipolar():
    kp0, kp1, _, truth = synthetic_parallax_matches()
    assert truth[:250].mean() > 0.95 and truth.mean() < 0.9
    rng = np.random.default_rng(0)
    view0 = rng.integers(0, 255, (192, 640, 3), dtype=np.uint8)
    view1 = render_second_view(view0, sample_scene(EpipolarPairConfig(), rng))
    assert view1.shape == view0.shape and view1.dtype == np.uint8


@pytest.mark.skipif(not EPIPOLAR.is_file(), reason="models/io_net_epipolar.pt not shipped in this checkout")
def test_epipolar_io_net_keeps_inliers_and_drops_outliers():
    scorer = IOScorer.from_file(EPIPOLAR, device="cpu")
    kept_in, kept_out = [], []
    for seed in range(5):
        kp0, kp1, dist, truth = synthetic_parallax_matches(seed)
        p = scorer.score(kp0, kp1, dist, (640, 192))
        assert p[truth].mean() > p[~truth].mean() + 0.2
        keep = p >= 0.5
        kept_in.append(keep[truth].mean())
        kept_out.append(keep[~truth].mean())
    assert np.mean(kept_in) > 0.8  # inliers survive
    assert np.mean(kept_out) < 0.3  # most outliers are dropped


def test_train_io_cli_smoke(tmp_path):
    """kp2d train-io end to end on two tiny images: cache written, weights loadable with provenance."""
    import cv2

    from kp2d_ros.cli import main
    from kp2d_ros.networks.keypoint_net import KeyPointNet

    rng = np.random.default_rng(0)
    data = tmp_path / "images"
    data.mkdir()
    for i in range(2):
        img = cv2.GaussianBlur(rng.uniform(0, 255, (120, 200, 3)).astype(np.float32), (0, 0), 2.0)
        cv2.imwrite(str(data / f"{i}.png"), cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8))
    torch.manual_seed(0)
    kp = save_network(KeyPointNet(width_multiplier=0.25).eval(), tmp_path / "kp.pt")
    out, cache = tmp_path / "io.pt", tmp_path / "cache.pt"
    args = ["train-io", "--data", str(data), "--model", str(kp), "--out", str(out), "--cache", str(cache),
            "--pairs", "4", "--val-pairs", "1", "--steps", "5", "--resolution", "96x48", "--num-features", "50",
            "--device", "cpu"]
    assert main(args) == 0 and cache.is_file()
    net = IONet.from_file(out)
    assert net.metadata["training"] == "epipolar" and net.metadata["steps"] == 5
    assert main(args) == 0  # second run reuses the cache


def test_matmul_inference_equals_the_module():
    torch.manual_seed(0)
    net = IONet(channels=32, num_blocks=2).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics so that the folding is tested
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    scorer = IOScorer(net, "cpu")
    pairs = torch.randn(5, 300)
    with torch.no_grad():
        torch.testing.assert_close(scorer.logits(pairs), net(pairs[None]).logits[0], atol=1e-4, rtol=1e-4)
