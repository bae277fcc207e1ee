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
from kp2d_ros.refine import exposure_ratio, refine_matches


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


def exposed(img, gain):
    return np.clip(np.rint(img.astype(np.float32) * gain), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gain", [0.5, 0.7, 1.8])
def test_tracks_across_an_auto_exposure_step(gain):
    """The current image at another brightness (auto-exposure; 1.8x saturates its brightest parts). Lucas-Kanade
    assumes constant brightness: without ``refine.exposure`` 1-24 % of the tracks passed their checks and those were
    0.6-1.5 px off (median). With it the ratio is measured at the matches and the images are brought to one
    brightness first: the known shift to < 0.07 px (median), as with equal brightness."""
    img0 = texture(0)
    d = np.array([0.37, -0.62], np.float32)
    img1 = exposed(shifted(img0, *d), gain)
    kp0 = grid()
    seeds = kp0 + d + np.random.default_rng(1).uniform(-1.5, 1.5, kp0.shape).astype(np.float32)
    assert exposure_ratio(img0, img1, kp0, seeds) == pytest.approx(gain, rel=0.02)
    r = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk"))
    assert r.exposure == pytest.approx(gain, rel=0.02)
    err = np.linalg.norm(r.keypoints[r.refined] - (kp0[r.refined] + d), axis=1)
    assert r.refined.mean() > 0.95 and np.median(err) < 0.07, (r.refined.mean(), np.median(err))
    off = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk", exposure=False))
    assert off.refined.mean() < 0.5 and off.exposure == 1.0


@pytest.mark.parametrize("gain", [1.02, 1.05, 0.95])
def test_small_exposure_changes_are_left_to_the_tracker_unless_asked(gain):
    """On this texture 2 % of brightness change doubles plain LK's error (median 0.04 -> 0.08 px) and 5 % gives
    0.18 px; with ``refine.exposure_min_change: 0`` every measured change is compensated (0.04 px). The default
    (20 %) leaves such changes alone, as a moving camera's vignetting and shadows make them on real images (KITTI
    07: 2-11 % per frame), and the tracks are plain LK's."""
    img0 = texture(0)
    d = np.array([0.37, -0.62], np.float32)
    img1 = exposed(shifted(img0, *d), gain)
    kp0 = grid()
    seeds = kp0 + d + np.random.default_rng(1).uniform(-1.5, 1.5, kp0.shape).astype(np.float32)
    errs = {}
    for name, cfg in (("all", RefineConfig(method="lk", exposure_min_change=0.0)),
                      ("off", RefineConfig(method="lk", exposure=False))):
        r = refine_matches(img0, img1, kp0, seeds, cfg)
        errs[name] = float(np.median(np.linalg.norm(r.keypoints[r.refined] - (kp0[r.refined] + d), axis=1)))
    assert errs["all"] < 0.05 and errs["off"] > 1.6 * errs["all"], errs
    default = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk"))
    off = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk", exposure=False))
    assert default.exposure == 1.0
    np.testing.assert_array_equal(default.keypoints, off.keypoints)


def test_no_measurable_exposure_change_leaves_the_images_as_they_are():
    """Equal brightness, the seeds ~1 px off: the windows' means differ by chance, but not beyond three standard
    errors, so even with ``exposure_min_change: 0`` nothing is rescaled and the tracks are plain LK's, bit for bit."""
    img0 = texture(2)
    d = np.float32([0.3, 0.2])
    img1 = shifted(img0, *d)
    kp0 = grid()
    seeds = kp0 + d + np.random.default_rng(3).uniform(-1.5, 1.5, kp0.shape).astype(np.float32)
    on = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk", exposure_min_change=0.0))
    off = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk", exposure=False))
    assert on.exposure == 1.0
    np.testing.assert_array_equal(on.keypoints, off.keypoints)


def test_exposure_ratio_ignores_black_and_saturated_windows_and_needs_enough_points():
    img0 = texture(4)
    kp = grid()
    img1 = exposed(img0, 1.5)
    img1[:, :160] = 255  # the left half saturated
    img0_dark = img0.copy()
    img0_dark[120:, :] = 0  # the bottom half black in the reference
    assert exposure_ratio(img0_dark, img1, kp, kp) == pytest.approx(1.5, rel=0.02)
    assert exposure_ratio(img0, exposed(img0, 0.6), kp[:10], kp[:10]) == 1.0  # 10 points: too few to say
    assert exposure_ratio(img0, img0, kp[:0], kp[:0]) == 1.0


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
                                        ("max_fb_error_px", 0.0), ("levels", -1), ("exposure_min_change", -0.1)])
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


def zoomed(img, s, centre):
    """``img`` magnified by ``s`` about ``centre`` (the camera driving towards a wall): (image, affine map)."""
    A = np.array([[s, 0, centre[0] * (1 - s)], [0, s, centre[1] * (1 - s)]], np.float64)
    return cv2.warpAffine(img, A, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT), A


@pytest.mark.parametrize("s", [1.06, 1.12])
def test_prewarped_patches_track_a_zoom_that_translation_misjudges(s):
    """A patch that grows by 6-12 % between the frames: translation-only LK is off by a few tenths of a pixel,
    LK on the reference patch warped by the (known) zoom recovers the position to a few hundredths."""
    img0 = texture(5)
    img1, A = zoomed(img0, s, (160, 120))
    kp0 = grid(margin=40)
    truth = (kp0 @ A[:, :2].T + A[:, 2]).astype(np.float32)
    inside = ((truth > 25) & (truth < np.array([295, 215]))).all(1)
    kp0, truth = kp0[inside], truth[inside]
    rng = np.random.default_rng(2)
    seeds = truth + rng.uniform(-1.0, 1.0, truth.shape).astype(np.float32)
    cfg = RefineConfig(method="lk")
    plain = refine_matches(img0, img1, kp0, seeds, cfg)
    warped = refine_matches(img0, img1, kp0, seeds, cfg, np.tile(np.eye(2) * s, (len(kp0), 1, 1)))
    err_plain = np.linalg.norm(plain.keypoints - truth, axis=1)[plain.refined]
    err_warped = np.linalg.norm(warped.keypoints - truth, axis=1)[warped.refined]
    assert warped.refined.mean() > 0.9 and warped.refined.mean() >= plain.refined.mean()
    assert np.median(err_warped) < 0.05
    assert np.median(err_warped) < 0.5 * np.median(err_plain)
    np.testing.assert_array_equal(warped.keypoints[~warped.refined], seeds[~warped.refined])


def test_identity_warps_match_plain_tracking():
    """With identity maps the mosaic path tracks like the plain call (same checks, same positions)."""
    img0 = texture(0)
    d = np.array([0.37, -0.62], np.float32)
    img1 = shifted(img0, *d)
    kp0 = grid()
    seeds = kp0 + d + np.random.default_rng(1).uniform(-1.0, 1.0, kp0.shape).astype(np.float32)
    cfg = RefineConfig(method="lk")
    plain = refine_matches(img0, img1, kp0, seeds, cfg)
    mosaic = refine_matches(img0, img1, kp0, seeds, cfg, np.tile(np.eye(2), (len(kp0), 1, 1)))
    assert mosaic.refined.mean() > 0.9
    both = plain.refined & mosaic.refined
    assert both.mean() > 0.9
    np.testing.assert_allclose(mosaic.keypoints[both], plain.keypoints[both], atol=0.02)


def test_pipeline_predicts_the_patch_warps_from_the_motion():
    """Driving forward through the synthetic street, the pipeline predicts a map for most matches (constant
    velocity, the reference's depths), and they magnify: the patches grow as the camera approaches."""
    seq = synthetic_sequence(8, seed=0, width=320, height=240)
    cfg = VOConfig()
    cfg.backend.window = 0
    vo = VOPipeline(cfg, frontend=OpenCVFrontend(FrontendConfig(type="sift", num_features=1000)))
    seen = []
    original = vo._patch_warps

    def spy(idx0, kp0, frame, camera):
        w = original(idx0, kp0, frame, camera)
        if w is not None:
            seen.append(w)
        return w

    vo._patch_warps = spy
    for frame in seq:
        vo.process(frame)
    assert len(seen) >= 4
    w = seen[-1]
    moved = ~np.all(np.isclose(w, np.eye(2)), axis=(1, 2))
    assert moved.mean() > 0.5
    assert np.median(np.linalg.det(w[moved])) > 1.0  # driving forward: patches grow
    assert np.all(np.isfinite(w)) and np.all(np.linalg.det(w) > 0.5)


def test_singular_or_missing_warps_fall_back_to_plain_tracking():
    """Degenerate maps (zero, NaN) are treated as the identity: no exception, the matches still refine."""
    img0 = texture(0)
    d = np.array([0.37, -0.62], np.float32)
    img1 = shifted(img0, *d)
    kp0 = grid()
    seeds = kp0 + d + 0.5
    warps = np.tile(np.eye(2), (len(kp0), 1, 1))
    warps[::3] = 0.0
    warps[1::3] = np.nan
    r = refine_matches(img0, img1, kp0, seeds, RefineConfig(method="lk"), warps)
    assert r.refined.mean() > 0.9
    err = np.linalg.norm(r.keypoints[r.refined] - (kp0[r.refined] + d), axis=1)
    assert np.median(err) < 0.05
