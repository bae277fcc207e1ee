"""Homography sampler, augmentation, losses (incl. the IO-loss gradient path), trainer checkpoint/resume."""
import cv2
import numpy as np
import pytest
import torch

from kp2d_ros.config import AugmentationConfig, HomographyConfig, OptimConfig, TrainConfig
from kp2d_ros.errors import ConfigError, DataError, ModelError
from kp2d_ros.networks.io_net import IONet
from kp2d_ros.networks.keypoint_net import KeyPointNet, KeyPointNetOutput
from kp2d_ros.networks.weights import read_weights
from kp2d_ros.training import losses as L
from kp2d_ros.training.augment import photometric_augment
from kp2d_ros.training.dataset import PairSampler, list_images, make_pair
from kp2d_ros.training.homography import sample_homography, scale_homography, warp_image, warp_points
from kp2d_ros.training.trainer import Trainer, compute_losses


def texture(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return img


# ---------------------------------------------------------------------------------------- homography
def test_homography_identity_at_zero_amplitudes():
    cfg = HomographyConfig(patch_ratio=1.0, scaling_amplitude=0.0, max_angle=0.0, perspective_amplitude=0.0)
    H = sample_homography(320, 240, cfg, np.random.default_rng(0))
    assert np.allclose(H, np.eye(3), atol=1e-9)


def test_homography_target_corners_stay_inside_source():
    rng = np.random.default_rng(1)
    w, h = 160, 120
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    hs = [sample_homography(w, h, HomographyConfig(), rng) for _ in range(300)]
    for H in hs:
        back = warp_points(corners, np.linalg.inv(H))
        assert back.min() >= -1e-6 and back[:, 0].max() <= w - 1 + 1e-6 and back[:, 1].max() <= h - 1 + 1e-6
    assert max(np.abs(H - np.eye(3)).max() for H in hs) > 0.1  # not degenerate


def _angles_and_zooms(cfg, n=400):
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        A = sample_homography(160, 128, cfg, rng)[:2, :2]
        out.append((np.degrees(abs(np.arctan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1]))), np.sqrt(abs(np.linalg.det(A)))))
    return np.array(out).T


def test_allow_artifacts_draws_large_rotations_and_zoom_outs():
    paper = HomographyConfig()  # 0.7, 0.2, pi/4, 0.4
    a_strict, _ = _angles_and_zooms(paper)
    a_loose, _ = _angles_and_zooms(HomographyConfig(allow_artifacts=True))
    assert np.mean(a_strict > 30) < 0.1  # redrawing until the patch fits keeps the angles small
    assert 0.25 < np.mean(a_loose > 30) < 0.42  # uniform in +-45 deg: 1/3
    _, z_strict = _angles_and_zooms(HomographyConfig(scaling_amplitude=0.6))
    _, z_loose = _angles_and_zooms(HomographyConfig(scaling_amplitude=0.6, allow_artifacts=True))
    assert z_strict.min() > 0.9 and np.mean(z_loose < 0.9) > 0.01  # only the loose target zooms out (much)


def test_warp_points_matches_warp_image_and_torch():
    H = sample_homography(80, 64, HomographyConfig(), np.random.default_rng(2))
    img = np.zeros((64, 80), np.uint8)
    img[20, 30] = 255
    out = warp_image(img, H)
    p = warp_points(np.array([[30.0, 20.0]]), H)[0]
    peak = np.unravel_index(np.argmax(out), out.shape)
    assert abs(peak[1] - p[0]) <= 1.0 and abs(peak[0] - p[1]) <= 1.0
    t = warp_points(torch.tensor([[[30.0, 20.0]]], dtype=torch.float64), torch.tensor(H[None]))
    assert np.allclose(t.numpy()[0, 0], p)


def test_scale_homography_commutes_with_resizing():
    H = sample_homography(200, 100, HomographyConfig(), np.random.default_rng(3))
    Hs = scale_homography(H, (0.5, 0.5), (0.5, 0.5))
    x = np.array([[40.0, 30.0]])
    full = warp_points(x, H)
    small = warp_points((x + 0.5) * 0.5 - 0.5, Hs)
    assert np.allclose(small, (full + 0.5) * 0.5 - 0.5)


def test_make_pair_homography_maps_source_to_target():
    no_aug = AugmentationConfig(brightness=0, contrast=0, saturation=0, hue=0, channel_shuffle_prob=0,
                                greyscale_prob=0, noise_prob=0, blur_prob=0)
    src, tgt, H = make_pair(texture(96, 128), 80, 64, HomographyConfig(), no_aug, np.random.default_rng(4))
    assert src.shape == tgt.shape == (64, 80, 3)
    # target = warp(source, H) inside the region the source covers
    recon = warp_image(src, H)
    mask = warp_image(np.full(src.shape[:2], 255, np.uint8), H) == 255
    mask = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    err = np.abs(recon.astype(float) - tgt.astype(float)).mean(axis=2)[mask]
    assert mask.sum() > 500 and err.mean() < 12


def _magnification(H: np.ndarray, w: int, h: int) -> float:
    """sqrt(|det|) of H's Jacobian at the image centre: how much the pair zooms there."""
    c, e = np.array([[(w - 1) / 2, (h - 1) / 2]]), 1e-3
    J = np.stack([(warp_points(c + [e, 0], H) - warp_points(c - [e, 0], H))[0],
                  (warp_points(c + [0, e], H) - warp_points(c - [0, e], H))[0]], 1) / (2 * e)
    return float(np.sqrt(abs(np.linalg.det(J))))


def test_small_motion_pairs_are_near_identity_in_their_share():
    no_aug = AugmentationConfig(brightness=0, contrast=0, saturation=0, hue=0, channel_shuffle_prob=0,
                                greyscale_prob=0, noise_prob=0, blur_prob=0)
    stage3 = HomographyConfig(scaling_amplitude=0.6, max_angle=np.pi / 2, allow_artifacts=True)
    rng, img = np.random.default_rng(7), texture(96, 128)

    def near_identity(cfg, n=200):
        """Per pair: within 15 % of one scale and 10 deg of no turn."""
        out = []
        for _ in range(n):
            H = make_pair(img, 80, 64, cfg, no_aug, rng)[2]
            angle = np.degrees(abs(np.arctan2(H[1, 0] - H[0, 1], H[0, 0] + H[1, 1])))
            out.append(abs(np.log(_magnification(H, 80, 64))) < np.log(1.15) and angle < 10)
        return np.array(out)

    assert near_identity(stage3).mean() < 0.06  # patch_ratio 0.7, turns up to 90 deg: ~2 % of the pairs
    assert 0.35 < near_identity(HomographyConfig(**{**vars(stage3), "small_motion_prob": 0.5})).mean() < 0.65
    assert near_identity(HomographyConfig(**{**vars(stage3), "small_motion_prob": 1.0})).all()


def test_jpeg_augmentation_compresses_and_is_off_by_default():
    img = texture()
    nothing = dict(brightness=0, contrast=0, saturation=0, hue=0, channel_shuffle_prob=0, greyscale_prob=0,
                   noise_prob=0, blur_prob=0)
    assert np.array_equal(photometric_augment(img, AugmentationConfig(**nothing), np.random.default_rng(0)), img)
    out = photometric_augment(img, AugmentationConfig(**nothing, jpeg_prob=1.0, jpeg_min_quality=20),
                              np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == img.shape
    diff = np.abs(out.astype(float) - img.astype(float))
    assert 0.5 < diff.mean() < 20  # compressed, not replaced
    red = np.zeros_like(img)
    red[..., 0] = 200
    out = photometric_augment(red, AugmentationConfig(**nothing, jpeg_prob=1.0), np.random.default_rng(1))
    assert out[..., 0].mean() > 150 and out[..., 2].mean() < 50  # RGB stays RGB through OpenCV's BGR codec


@pytest.mark.parametrize("name", ["train", "train_finetune", "train_finetune_320", "train_finetune_small_motion"])
def test_shipped_training_recipes_load_and_validate(name):
    from pathlib import Path

    from kp2d_ros.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / f"{name}.yaml", cls=TrainConfig)
    cfg.validate()
    small = name == "train_finetune_small_motion"
    assert (cfg.homography.small_motion_prob > 0) == small and (cfg.augmentation.jpeg_prob > 0) == small


@pytest.mark.parametrize("key, value", [("small_motion_prob", 1.5), ("small_motion_scale", -0.1)])
def test_small_motion_settings_are_validated(key, value):
    with pytest.raises(ConfigError, match=key):
        HomographyConfig(**{key: value}).validate()


@pytest.mark.parametrize("key, value", [("jpeg_prob", 2.0), ("jpeg_min_quality", 0), ("jpeg_min_quality", 100)])
def test_jpeg_settings_are_validated(key, value):
    with pytest.raises(ConfigError, match=key):
        AugmentationConfig(**{key: value}).validate()


def test_photometric_augment_changes_image_keeps_dtype():
    img = texture()
    out = photometric_augment(img, AugmentationConfig(), np.random.default_rng(5))
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError):
        list_images(tmp_path)


# ---------------------------------------------------------------------------------------- losses
def synthetic_output(h=32, w=40, seed=0, shuffle=False):
    """Dense output with perfectly placed keypoints and random unit descriptors."""
    g = torch.Generator().manual_seed(seed)
    hc, wc = h // 8, w // 8
    ys, xs = torch.meshgrid(torch.arange(hc) * 8 + 3.5, torch.arange(wc) * 8 + 3.5, indexing="ij")
    kps = torch.stack([xs, ys])[None].float()
    desc = torch.nn.functional.normalize(torch.randn(1, 256, 2 * hc, 2 * wc, generator=g), dim=1)
    if shuffle:
        flat = desc.reshape(1, 256, -1)
        desc = flat[:, :, torch.randperm(flat.shape[-1], generator=g)].reshape(desc.shape)
    scores = torch.rand(1, 1, hc, wc, generator=g)
    return KeyPointNetOutput(scores, kps, desc, (h, w), (h, w))


def test_losses_near_zero_for_identical_pairs_and_larger_when_shuffled():
    src = synthetic_output()
    same = synthetic_output()
    shuffled = synthetic_output(shuffle=True)
    H = torch.eye(3)[None]
    a = L.associate(src, same, H, border_px=0)
    assert float(L.location_loss(a, 4.0)) < 1e-5
    assert abs(float(L.score_loss(a, 4.0))) < 1e-5
    d_same = float(L.descriptor_loss(src, same, a, 0.2, 8.0))
    assert d_same < 1e-5
    a2 = L.associate(src, shuffled, H, border_px=0)
    assert float(L.descriptor_loss(src, shuffled, a2, 0.2, 8.0)) > 0.1
    # a shifted target increases the location loss
    moved = synthetic_output()
    moved.keypoints = moved.keypoints + 2.0
    assert float(L.location_loss(L.associate(src, moved, H, 0), 4.0)) > 2.0


def test_score_loss_prefers_high_scores_on_close_points():
    src, tgt = synthetic_output(), synthetic_output()
    tgt.keypoints = tgt.keypoints.clone()
    tgt.keypoints[0, 0, 0, :] += 3.0  # first row poorly repeated
    H = torch.eye(3)[None]
    good, bad = synthetic_output(), synthetic_output()
    good.scores = torch.ones_like(good.scores); good.scores[0, 0, 0, :] = 0.0
    bad.scores = torch.zeros_like(bad.scores); bad.scores[0, 0, 0, :] = 1.0
    tgt.scores = good.scores.clone()
    loss_good = float(L.score_loss(L.associate(good, tgt, H, 0), 4.0))
    tgt.scores = bad.scores.clone()
    loss_bad = float(L.score_loss(L.associate(bad, tgt, H, 0), 4.0))
    assert loss_good < loss_bad


def test_io_loss_gradients_reach_the_encoder():
    torch.manual_seed(0)
    net = KeyPointNet(width_multiplier=0.25)
    io = IONet(channels=16, num_blocks=1)
    img = torch.from_numpy(texture(64, 64)).permute(2, 0, 1)[None].float() / 255
    H = torch.eye(3)[None]
    src, tgt = net((img - 0.5) / 0.225), net((img.flip(-1) - 0.5) / 0.225)
    a = L.associate(src, tgt, H, border_px=4)
    loss, stats = L.io_loss(io, src, tgt, H, a, top_k=32, threshold_px=4.0)
    loss.backward()
    for layer in (net.conv1a[0], net.loc_b, net.desc_c):
        g = layer.weight.grad
        assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0, layer
    assert float(io.input_conv.weight.grad.abs().sum()) > 0
    assert 0 <= stats["io_accuracy"] <= 1
    assert net.score_b.weight.grad is None  # scores only select the points; they are not trained by IO


# ---------------------------------------------------------------------------------------- trainer
@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "images" / "sub"
    d.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(d / f"im{i}.png"), texture(80, 100, seed=i))
    return tmp_path / "images"


def tiny_config(**kw) -> TrainConfig:
    cfg = TrainConfig(resolution=[48, 40], batch_size=2, steps=4, log_every=1, checkpoint_every=100,
                      checkpoint_minutes=0.0, num_threads=1, device="cpu", **kw)
    cfg.keypoint_net.width_multiplier = 0.25
    cfg.io_net.channels = 16
    cfg.io_net.num_blocks = 1
    cfg.loss.io_top_k = 16
    cfg.validate()
    return cfg


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.keypoint_net.state_dict().items()}


def test_checkpoint_resume_loses_nothing(tmp_path, image_dir):
    straight = Trainer(tiny_config(), image_dir, tmp_path / "a")
    straight.train(4)
    first = Trainer(tiny_config(), image_dir, tmp_path / "b")
    first.train(2)
    first.save_checkpoint()
    resumed = Trainer(tiny_config(), image_dir, tmp_path / "b", resume=True)
    assert resumed.step == 2
    resumed.train(4)
    wa, wb = _weights(straight), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4]
    assert (tmp_path / "b" / "loss.png").is_file() and (tmp_path / "b" / "keypoint_net.pt").is_file()
    assert not list((tmp_path / "b").glob("*.tmp"))
    net = KeyPointNet.from_file(tmp_path / "b" / "keypoint_net.pt")
    assert net.metadata["step"] == 4


def test_loader_workers_prefetch_the_same_batches(tmp_path, image_dir):
    """num_workers > 0 draws the next batch during a step; the weights equal the serial run's."""
    serial = Trainer(tiny_config(), image_dir, tmp_path / "serial")
    serial.train(3)
    threaded = Trainer(tiny_config(num_workers=2), image_dir, tmp_path / "threaded")
    threaded.train(3)
    assert threaded._prefetched is not None and threaded._prefetched[0] == 3
    wa, wb = _weights(serial), _weights(threaded)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    resumed = Trainer(tiny_config(num_workers=2), image_dir, tmp_path / "serial", resume=False)
    first = resumed._batch(5)  # a batch out of order is drawn, not taken from a stale prefetch
    assert torch.equal(first["H"], serial.sampler.batch(2, 5)["H"])
    assert torch.equal(resumed._batch(2)["source"], serial.sampler.batch(2, 2)["source"])


def test_fine_tuning_starts_from_given_weights(tmp_path, image_dir):
    from kp2d_ros.networks.weights import save_network

    base = Trainer(tiny_config(), image_dir, tmp_path / "base")
    base.train(2)
    kp, io = save_network(base.keypoint_net, tmp_path / "kp.pt"), save_network(base.io_net, tmp_path / "io.pt")
    tuned = Trainer(tiny_config(init_keypoint_net=str(kp), init_io_net=str(io)), image_dir, tmp_path / "ft")
    assert tuned.step == 0
    wa, wb = _weights(base), _weights(tuned)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(a, b) for a, b in zip(base.io_net.state_dict().values(), tuned.io_net.state_dict().values()))
    fresh = Trainer(tiny_config(), image_dir, tmp_path / "fresh")
    assert not all(torch.equal(wa[k], v) for k, v in _weights(fresh).items() if v.is_floating_point())
    wide = tiny_config(init_keypoint_net=str(kp))
    wide.keypoint_net.width_multiplier = 0.5
    with pytest.raises(ModelError, match="does not fit KeyPointNet"):
        Trainer(wide, image_dir, tmp_path / "wide")


def test_weight_averages_follow_the_steps_and_survive_a_resume(tmp_path, image_dir):
    """optim.ema_decay: keypoint_net.pt holds avg_t = d * avg_(t-1) + (1 - d) * w_t from the start weights, the raw
    weights train as without it, and a resume continues the averages bit for bit."""
    d = 0.5
    plain = Trainer(tiny_config(), image_dir, tmp_path / "plain")
    plain.train(3)  # one trainer at a time: they share torch's global RNG (dropout)
    ema = Trainer(tiny_config(optim=OptimConfig(ema_decay=d)), image_dir, tmp_path / "ema")
    expected = {k: v.clone() for k, v in _weights(ema).items() if v.is_floating_point()}
    for _ in range(3):
        ema.train_step()
        for k, w in _weights(ema).items():
            if k in expected:
                expected[k] = d * expected[k] + (1 - d) * w
    wa, wb = _weights(plain), _weights(ema)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the averages do not touch the training
    ema.save_checkpoint()
    got, meta = read_weights(tmp_path / "ema" / "keypoint_net.pt")  # builds no network: draws nothing from the RNG
    assert meta["ema_decay"] == d
    assert all(torch.allclose(got[k], v, atol=1e-6) for k, v in expected.items())
    assert not all(torch.allclose(got[k], wb[k]) for k in expected)  # the averages, not the last weights
    ema.train(5)
    resumed = Trainer(tiny_config(optim=OptimConfig(ema_decay=d)), image_dir, tmp_path / "ema_resumed")
    resumed.train(3)
    resumed.save_checkpoint()
    resumed = Trainer(tiny_config(optim=OptimConfig(ema_decay=d)), image_dir, tmp_path / "ema_resumed", resume=True)
    resumed.train(5)
    a, b = ema.ema["keypoint_net"].state_dict(), resumed.ema["keypoint_net"].state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    with pytest.raises(ConfigError, match="ema_decay"):
        OptimConfig(ema_decay=1.0).validate()


def test_corrupt_or_missing_checkpoint_raises(tmp_path, image_dir):
    with pytest.raises(ModelError, match="no checkpoint"):
        Trainer(tiny_config(), image_dir, tmp_path / "empty", resume=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="cannot resume"):
        Trainer(tiny_config(), image_dir, tmp_path / "c", resume=True)


def test_cli_train_one_step(tmp_path, image_dir):
    from kp2d_ros.cli import main

    rc = main(["train", "--data", str(image_dir), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
               "--set", "resolution=[48,40]", "batch_size=1", "keypoint_net.width_multiplier=0.25",
               "io_net.channels=8", "loss.io_top_k=8", "num_threads=1", "device=cpu"])
    assert rc == 0
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_cli_train_stops_on_sigint_even_when_started_with_it_ignored(tmp_path, image_dir):
    """A shell starts background jobs with SIGINT ignored (``timeout -s INT kp2d train ... &`` in
    scripts/gpu_check.sh): the run still stops after the step in flight and keeps it in a checkpoint."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kp2d_ros.cli", "train", "--data", str(image_dir), "--out", str(run),
           "--steps", "100000", "--no-progress", "--set", "resolution=[48,40]", "batch_size=1",
           "keypoint_net.width_multiplier=0.25", "io_net.channels=8", "loss.io_top_k=8", "num_threads=1",
           "device=cpu", "log_every=1", "checkpoint_every=100000", "checkpoint_minutes=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "stopped at step" in err
    step = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert step >= 1 and rows[-1]["step"] == step


@pytest.mark.slow
def test_overfit_lowers_the_loss(image_dir):
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.keypoint_net.dropout = 0.0
    net, io = KeyPointNet(cfg.keypoint_net), IONet(cfg.io_net)
    sampler = PairSampler(list_images(image_dir), 64, 48, cfg.homography, cfg.augmentation, seed=0)
    batch = sampler.batch(2)
    opt = torch.optim.Adam(list(net.parameters()) + list(io.parameters()), lr=1e-3)
    losses = []
    for _ in range(40):
        total, _ = compute_losses(net, io, batch, cfg)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
