"""Sub-pixel refinement of matches (pyramidal LK, forward-backward checked): unit and pipeline level."""
from dataclasses import replace

import cv2
import numpy as np
import pytest

from kp2d_ros.config import FrontendConfig, RefineConfig, VOConfig
from kp2d_ros.data.synthetic import synthetic_sequence
from kp2d_ros.errors import ConfigError
from kp2d_ros.frontend import OpenCVFrontend
from kp2d_ros.geometry import rotation_angle_deg
from kp2d_ros.pipeline import VOPipeline
from kp2d_ros.refine import refine_matches


def texture(seed, size=(240, 320)):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, size).astype(np.float32), (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


def shifted(img, dx, dy):
    M = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
    return cv2.warpAffine(img, M, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def grid(w=320, h=240, step=20, margin=30):
    xs, ys = np.meshgrid(np.arange(margin, w - margin, step), np.arange(margin, h - margin, step))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)


def test_recovers_a_known_subpixel_shift_from_noisy_seeds():
    img0 = texture(0)
    d = np.array([0.37, -0.62], np.float32)
    img1 = shifted(img0, *d)
    kp0 = grid()
    rng = np.random.default_rng(1)
    seeds = kp0 + d + rng.uniform(-1.5, 1.5, kp0.shape).astype(np.float32)  # a detector's ~1 px error
    r = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk"))
    assert r.refined.mean() > 0.9
    err_seed = np.linalg.norm(seeds - (kp0 + d), axis=1)
    err = np.linalg.norm(r.keypoints[r.refined] - (kp0[r.refined] + d), axis=1)
    assert np.median(err_seed) > 0.8
    assert np.median(err) < 0.05 and err.max() < 0.2


def test_unrelated_image_fails_the_checks_and_keeps_the_seeds():
    img0, img1 = texture(0), texture(7)
    kp0 = grid()
    seeds = kp0 + 0.5
    r = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk"))
    assert r.refined.mean() < 0.2
    np.testing.assert_array_equal(r.keypoints[~r.refined], seeds[~r.refined])


def test_shift_bound_rejects_far_moves():
    img0 = texture(3)
    img1 = shifted(img0, 2.5, 0.0)
    kp0 = grid()
    seeds = kp0.copy()  # the seeds are 2.5 px from the truth
    loose = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk", max_shift_px=3.0))
    tight = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk", max_shift_px=1.0))
    assert loose.refined.mean() > 0.9 and not tight.refined.any()


def test_empty_input():
    img = texture(0)
    r = refine_matches(img, img, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), RefineConfig())
    assert r.keypoints.shape == (0, 2) and r.refined.shape == (0,)


@pytest.mark.parametrize("key, value", [("method", "sift"), ("window_px", 10), ("window_px", 1),
                                        ("max_fb_error_px", 0.0), ("levels", -1)])
def test_invalid_settings_raise(key, value):
    cfg = RefineConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"refine.{key}"):
        cfg.validate()


class CoarseFrontend:
    """SIFT with its keypoints snapped to the even pixel grid: a detector with a ~0.6 px error."""

    name = "coarse-sift"

    def __init__(self):
        self.sift = OpenCVFrontend(FrontendConfig(type="sift", num_features=1000))

    def detect(self, image):
        f = self.sift.detect(image)
        return replace(f, keypoints=(np.round(f.keypoints / 2) * 2).astype(np.float32))


def test_pipeline_refinement_removes_the_detector_error():
    """Synthetic street (known poses): refined matches agree with the keyframe to the tracker's precision
    and the relative rotations get more accurate."""
    seq = synthetic_sequence(6, seed=0, width=320, height=240)
    gt = seq.ground_truth.poses
    err = {}
    for method in ("none", "lk"):
        cfg = VOConfig()
        cfg.refine.method = method
        vo = VOPipeline(cfg, frontend=CoarseFrontend())
        ests = [vo.process(frame) for frame in seq]
        assert all(e.status.name in ("INITIALIZING", "TRACKING") for e in ests)
        rel = [np.linalg.inv(ests[i].T_world_cam[:3, :3]) @ ests[i + 1].T_world_cam[:3, :3] for i in range(5)]
        rel_gt = [np.linalg.inv(gt[i][:3, :3]) @ gt[i + 1][:3, :3] for i in range(5)]
        err[method] = np.mean([rotation_angle_deg(a.T @ b) for a, b in zip(rel, rel_gt)])
        if method == "lk":
            assert vo.ref.image is not None and vo.ref.image.shape == (240, 320)
            assert np.any(ests[-1].features.keypoints % 2 != 0)  # moved off the snapped grid
    assert err["lk"] < 0.5 * err["none"]
