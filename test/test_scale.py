"""Metric scale (kp2d_ros/scale.py): ground-plane fit, wheel-odometry buffer, the scale filter, and the
pipeline with a travelled distance per frame."""
import logging
import math

import cv2
import numpy as np
import pytest

from kp2d_ros.config import VOConfig, load_config
from kp2d_ros.errors import ConfigError
from kp2d_ros.geometry import se3
from kp2d_ros.pipeline import VOPipeline
from kp2d_ros.scale import (ACQUIRE_COUNT, WHEEL_ABS_SIGMA_M, WINDOW_PROCESS_LOG_SIGMA,
                            GroundObservation, MetricScale, TwoViewTracks, WheelOdometry,
                            fit_ground_plane, ground_direction, ground_roi, track_ground_points)
from kp2d_ros.types import Camera
from test_pipeline import PointWorldFrontend, default_config, driving_poses, frame, front_end_config

F = 700.0
CAM = Camera.from_intrinsics(F, F, 600.0, 185.0, 1200, 370)  # KITTI-like


def rot_x(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def two_view_points(X, R, t, noise_px, rng):
    """World points X (camera-0 axes) seen from camera 0 and camera 1 (x1 = R x0 + t, |t| = 1) with pixel
    noise in both views, triangulated as the pipeline does (unit baseline; the two views kept)."""
    X1 = X @ R.T + t
    ok = (X[:, 2] > 0.5) & (X1[:, 2] > 0.5)
    X, X1 = X[ok], X1[ok]
    n0 = X[:, :2] / X[:, 2:] + rng.normal(0, noise_px / F, (len(X), 2))
    n1 = X1[:, :2] / X1[:, 2:] + rng.normal(0, noise_px / F, (len(X), 2))
    return GroundObservation.from_views(TwoViewTracks(n0, n1, R, t, noise_px / F))


def road_scene(height, rng, n_ground=400, n_clutter=150, pitch_deg=0.0, cars_ahead=False):
    """Points on a flat road ``height`` below a camera pitched down by ``pitch_deg`` (camera-0 axes), plus
    clutter standing on it: the backs of cars ahead and parked cars / walls at the sides, from 0.3 m above
    the road up."""
    g = np.c_[rng.uniform(-3, 3, n_ground), np.full(n_ground, height), rng.uniform(5, 25, n_ground)]
    k = n_clutter // 2 if cars_ahead else 0
    ahead = np.c_[rng.uniform(-1.5, 1.5, k), rng.uniform(height - 1.5, height - 0.3, k), rng.uniform(10, 25, k)]
    side = np.c_[rng.choice([-1, 1], n_clutter - k) * rng.uniform(2, 4, n_clutter - k),
                 rng.uniform(height - 1.5, height - 0.3, n_clutter - k), rng.uniform(4, 25, n_clutter - k)]
    R = rot_x(-pitch_deg)  # level axes -> camera axes (a camera pitched down sees the road rise)
    return np.r_[g, ahead, side] @ R.T


def plane_fit_errors(pitch_deg, cars_ahead, three_d=False, scenes=10):
    """Relative height errors and predicted log-sigmas of the plane fit on ``scenes`` synthetic road scenes:
    one forward metre of baseline, 400 road points 5-25 m ahead, 0.5 px noise in both views, parked cars /
    walls at the sides (+ the backs of cars ahead). ``three_d``: the fit without the views (3-D points only)."""
    cfg = VOConfig()
    errors, sigmas = [], []
    for seed in range(scenes):
        rng = np.random.default_rng(seed)
        X = road_scene(1.65, rng, pitch_deg=pitch_deg, cars_ahead=cars_ahead)
        R = rot_x(0.2)
        t = -R @ np.array([0.0, 0.0, 1.0])  # one metre forward: heights come out in metres
        obs = two_view_points(X, R, t, 0.5, rng)
        if three_d:
            obs = GroundObservation(obs.rays, obs.inv_depth, obs.inv_depth_sigma)
        res = fit_ground_plane(obs, cfg, down=rot_x(-pitch_deg) @ [0.0, 1.0, 0.0])
        assert res.plane is not None, res.reason
        assert res.plane.tilt_deg < 2.0
        errors.append(res.plane.height / 1.65 - 1.0)
        sigmas.append(res.plane.log_sigma)
    return np.array(errors), np.array(sigmas)


@pytest.mark.parametrize("pitch_deg, cars_ahead", [(0.0, False), (3.0, False), (0.0, True)])
def test_plane_fit_recovers_the_height_within_1_percent_at_half_a_pixel(pitch_deg, cars_ahead):
    """The issue's 1 %: RMS height error over 10 scenes within 1 %, every scene within 1.5 %, and the fit's own
    log-sigma within a factor 2 of the error it makes. (The 3-D total-least-squares fit alone, which the
    image-space fit starts from, has RMS 0.95-1.37 % and a max of 2.6 % here: see the next test.)"""
    errors, sigmas = plane_fit_errors(pitch_deg, cars_ahead)
    rms = float(np.sqrt(np.mean(errors ** 2)))
    assert rms <= 0.01 and np.max(np.abs(errors)) <= 0.015, errors
    assert 0.5 <= float(np.mean(sigmas)) / rms <= 2.0, (sigmas, rms)


def test_the_image_space_fit_beats_the_3d_fit_it_starts_from():
    """Same scenes with cars ahead: the 3-D fit (no views) misses the 1 %, the image-space refit meets it."""
    e3, _ = plane_fit_errors(0.0, True, three_d=True)
    e2, _ = plane_fit_errors(0.0, True)
    assert np.sqrt(np.mean(e3 ** 2)) > 0.01 and np.sqrt(np.mean(e2 ** 2)) < np.sqrt(np.mean(e3 ** 2))


def test_plane_fit_rejects_a_scene_without_a_ground_plane():
    cfg = VOConfig()
    rng = np.random.default_rng(0)
    clutter = np.c_[rng.uniform(-4, 4, 400), rng.uniform(-2, 1.5, 400), rng.uniform(3, 20, 400)]
    res = fit_ground_plane(GroundObservation.from_points(clutter), cfg)
    assert res.plane is None and res.reason
    # a desk under a camera looking down 35 degrees: a real plane, but not a ground below a level camera
    desk = road_scene(0.8, rng, n_clutter=0, pitch_deg=35.0)
    res = fit_ground_plane(GroundObservation.from_points(desk), cfg)
    assert res.plane is None and "deg" in res.reason  # no plane within the tilt gate
    # nothing below the horizon
    above = np.c_[clutter[:, 0], -np.abs(clutter[:, 1]), clutter[:, 2]]
    assert fit_ground_plane(GroundObservation.from_points(above), cfg).plane is None
    assert fit_ground_plane(GroundObservation.from_points(np.zeros((0, 3))), cfg).plane is None
    assert fit_ground_plane(GroundObservation.from_points(np.full((30, 3), np.nan)), cfg).plane is None


def test_image_space_fit_rejects_clutter_and_survives_bad_points():
    """With the views: no plane in clutter, and NaN / infinite / degenerate correspondences are no crash and no NaN."""
    cfg = VOConfig()
    rng = np.random.default_rng(3)
    R, t = rot_x(0.2), -rot_x(0.2) @ np.array([0.0, 0.0, 1.0])
    clutter = np.c_[rng.uniform(-4, 4, 400), rng.uniform(-2, 1.5, 400), rng.uniform(3, 20, 400)]
    assert fit_ground_plane(two_view_points(clutter, R, t, 0.5, rng), cfg).plane is None
    road = road_scene(1.65, rng)
    obs = two_view_points(road, R, t, 0.5, rng)
    v = obs.views
    ref, cur = v.ref.copy(), v.cur.copy()
    ref[::7] = np.nan
    cur[1::9] = np.inf
    cur[2::11] = ref[2::11]  # no motion at all: a point at infinity
    res = fit_ground_plane(GroundObservation.from_views(TwoViewTracks(ref, cur, R, t, v.noise)), cfg)
    assert res.plane is not None and np.isfinite(res.plane.height) and np.all(np.isfinite(res.plane.normal))
    assert res.plane.height == pytest.approx(1.65, rel=0.03) and np.isfinite(res.plane.log_sigma)
    # a pure rotation (no baseline): nothing to triangulate, rejected
    still = GroundObservation.from_views(TwoViewTracks(v.ref, v.ref, np.eye(3), t, v.noise))
    assert fit_ground_plane(still, cfg).plane is None


def textured_road_after_one_metre():
    """A random texture as the road (camera 1.65 m above it) and the view after 1 m forward: (reference image,
    current image, the true pixel homography reference -> current)."""
    K = CAM.K
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur((rng.random((CAM.height, CAM.width)) * 255).astype(np.float32), (0, 0), 2.0)
    ref = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    t = np.array([0.0, 0.0, -1.0])
    H = K @ (np.eye(3) + np.outer(t, [0.0, 1 / 1.65, 0.0])) @ np.linalg.inv(K)
    return ref, cv2.warpPerspective(ref, H, (CAM.width, CAM.height), flags=cv2.INTER_LINEAR), H


def median_track_error(p0, p1, H):
    truth = cv2.perspectiveTransform(p0.reshape(-1, 1, 2).astype(np.float64), H).reshape(-1, 2)
    return float(np.median(np.linalg.norm(p1 - truth, axis=1)))


def test_tracking_along_the_predicted_plane_homography_removes_the_zoom_bias():
    """A textured road seen after 1 m forward motion: plain Lucas-Kanade misplaces the zooming near-road corners
    (its translational model), tracking from the reference warped by a predicted plane homography does not,
    even with the prediction's plane 5 % too high and tilted."""
    ref, cur, H = textured_road_after_one_metre()
    roi = ground_roi(CAM, ground_direction(VOConfig()))
    K, t = CAM.K, np.array([0.0, 0.0, -1.0])
    wrong = K @ (np.eye(3) + np.outer(t, [0.02, 1 / (1.05 * 1.65), 0.0])) @ np.linalg.inv(K)
    errors = {}
    for name, predicted in (("plain", None), ("predicted", wrong)):
        p0, p1 = track_ground_points(ref, cur, roi, homography=predicted)
        assert len(p0) > 100
        errors[name] = median_track_error(p0, p1, H)
    assert errors["predicted"] < 0.1 and errors["predicted"] < errors["plain"] / 3, errors


def test_ground_roi_is_the_road_ahead():
    roi = ground_roi(CAM, ground_direction(VOConfig()))
    assert roi.shape == (CAM.height, CAM.width)
    assert roi[:150].sum() == 0  # nothing above (or near) the horizon (cy = 185)
    assert roi[360, 600] and not roi[360, 5]  # the road in front, not the roadside


# --------------------------------------------------------------------------------------------
# The filter
# --------------------------------------------------------------------------------------------
def plane_points(height_units, rng, n=200, tilt_deg=0.0):
    g = np.c_[rng.uniform(-2, 2, n), np.full(n, height_units), rng.uniform(4, 20, n) * height_units / 1.65]
    return GroundObservation.from_points(g @ rot_x(tilt_deg).T)


def metric_cfg(height=1.65):
    cfg = VOConfig()
    cfg.geometry.camera_height_m = height
    return cfg


def test_filter_turns_metric_after_agreeing_planes_and_rescales():
    m = MetricScale(metric_cfg())
    rng = np.random.default_rng(0)
    # the trajectory's unit: 1 = 0.1 m (the plane lies 16.5 units below): propagated steps of 1 unit
    choices = [m.choose(1.0, 0.01, plane_points(16.5, rng)) for _ in range(ACQUIRE_COUNT)]
    assert [c.metric for c in choices] == [False] * (ACQUIRE_COUNT - 1) + [True]
    assert all(c.source == "propagated" and "agreeing" in c.notes for c in choices[:-1])
    last = choices[-1]
    assert last.source == "ground_plane" and last.rescale == pytest.approx(0.1, rel=0.01)
    assert last.scale == pytest.approx(0.1, rel=0.01)
    # then: metric steps, the plane keeps them there
    c = m.choose(0.1, 0.01, plane_points(16.5, rng))
    assert c.metric and c.rescale == 1.0 and c.scale == pytest.approx(0.1, rel=0.02)


def test_the_acquisition_waits_for_planes_that_fix_the_scale_and_weighs_them():
    """Uncertain ground planes (17 % each, as KITTI 07's at its slow start) turn the trajectory metric only once
    their inverse-variance mean is within ACQUIRE_MAX_LOG_SIGMA, and the unit is that mean: three of them (the old
    rule, their median) would have set it 10 % long here. Wheel distances still need ACQUIRE_COUNT agreeing steps."""
    cfg = metric_cfg()
    cfg.geometry.ground_scale_sigma = 0.17
    m = MetricScale(cfg)
    rng = np.random.default_rng(3)
    offsets = [0.1, 0.1, 0.1] + [-0.02, 0.0] * 20  # log(the plane's length / the true 0.1 m): the first three long
    choices = []
    for e in offsets:
        choices.append(m.choose(1.0, 0.01, plane_points(16.5 * math.exp(-e), rng)))
        if choices[-1].metric:
            break
    n = len(choices)
    assert ACQUIRE_COUNT < n < 30 and not any(c.metric for c in choices[:-1])
    assert "agreeing" in choices[0].notes
    assert choices[-1].rescale == pytest.approx(0.1 * math.exp(np.mean(offsets[:n])), rel=0.01)
    assert choices[-1].rescale < 0.1 * math.exp(0.05)  # the median of the first three: 0.1 * exp(0.1)
    # wheel distances (2 % each) need only ACQUIRE_COUNT
    m = MetricScale(metric_cfg())
    choices = [m.choose(1.0, 0.01, distance=0.1) for _ in range(ACQUIRE_COUNT)]
    assert [c.metric for c in choices] == [False] * (ACQUIRE_COUNT - 1) + [True]


@pytest.mark.parametrize("pair_sigma", [0.001, 0.2])
def test_with_the_window_a_correction_is_shared_between_the_window_and_the_pair(pair_sigma):
    """With the backend's window (which the pipeline scales by ``window_rescale``) a measurement's correction goes to
    the window's scale in proportion to how uncertain that is against the pair's own two-view spread: a pair whose
    length the structure fixes passes it on to the window; a pair whose length is uncertain takes it itself.
    Without a window nothing is passed on."""
    for window in (16, 0):
        cfg = metric_cfg()
        cfg.backend.window = window
        m = MetricScale(cfg)
        for _ in range(ACQUIRE_COUNT):  # metric: 1 unit = 0.1 m
            m.choose(1.0, 0.01, distance=0.1)
        P = m.log_var + WINDOW_PROCESS_LOG_SIGMA ** 2
        r = math.hypot(cfg.geometry.odometry_scale_sigma, WHEEL_ABS_SIGMA_M / 0.11) ** 2
        c = m.choose(0.1, pair_sigma, distance=0.11)  # the wheels: 10 % longer
        e = math.log(1.1)
        if window:
            assert c.window_rescale == pytest.approx(math.exp(P / (P + pair_sigma ** 2 + r) * e), rel=1e-9)
            assert c.scale == pytest.approx(0.1 * math.exp((P + pair_sigma ** 2) / (P + pair_sigma ** 2 + r) * e),
                                            rel=1e-9)
            if pair_sigma > 0.1:
                assert c.window_rescale < 1.003 and c.scale > 0.1 * 1.09
            else:
                assert c.window_rescale > 1.01
        else:
            assert c.window_rescale == 1.0


def test_filter_rejects_a_plane_that_flips_and_a_nonsense_plane_without_nan(caplog):
    m = MetricScale(metric_cfg())
    rng = np.random.default_rng(1)
    for _ in range(ACQUIRE_COUNT):
        m.choose(1.0, 0.01, plane_points(1.65, rng, tilt_deg=6.0))
    assert m.metric
    flipped = m.choose(1.0, 0.01, plane_points(1.65, rng, tilt_deg=-6.0))  # each within the tilt gate
    assert flipped.source == "propagated" and "flipped" in flipped.notes and flipped.scale == 1.0
    # alternating normals, random clutter, degenerate points: never a NaN, never an exception
    for i in range(20):
        pts = plane_points(1.65, rng, tilt_deg=6.0 if i % 2 else -6.0) if i % 3 else \
            GroundObservation.from_points(rng.normal(size=(50, 3)))
        if i == 7:
            pts = GroundObservation.from_points(np.full((40, 3), np.nan))
        c = m.choose(1.0, 0.01, pts)
        assert math.isfinite(c.scale) and c.scale > 0 and math.isfinite(c.log_sigma)


def test_filter_bounds_a_correction_by_max_scale_change():
    cfg = metric_cfg()
    cfg.pipeline.max_scale_change = 1.5
    m = MetricScale(cfg)
    rng = np.random.default_rng(2)
    for _ in range(ACQUIRE_COUNT):
        m.choose(1.0, 0.01, plane_points(1.65, rng))
    # the plane now says 10x shorter steps: rejected as inconsistent, then (after several) accepted, bounded
    scales = [m.choose(1.0, 0.01, plane_points(16.5, rng)).scale for _ in range(8)]
    assert scales[0] == 1.0
    assert min(scales) >= 1.0 / 1.5 - 1e-9


@pytest.mark.parametrize("height", [-1.65, 1e6, float("nan"), float("inf")])
def test_a_negative_or_absurd_height_is_refused_clearly(height):
    with pytest.raises(ConfigError, match="geometry.camera_height_m"):
        load_config(None, overrides={"geometry.camera_height_m": height})


def test_an_invalid_height_that_bypassed_validation_switches_the_plane_off_with_a_warning(caplog):
    cfg = metric_cfg(-1.0)
    m = MetricScale(cfg)
    with caplog.at_level(logging.WARNING, logger="kp2d_ros.scale"):
        c = m.choose(1.0, 0.01, plane_points(1.65, np.random.default_rng(0)))
    assert not m.active and c.scale == 1.0 and c.source == "propagated"
    assert "camera_height_m" in caplog.text


def test_wheel_distance_zero_negative_or_nan_is_a_note_not_a_nan():
    m = MetricScale(VOConfig())
    for d in (0.0, -0.5, float("nan"), float("inf")):
        c = m.choose(1.0, 0.01, None, distance=d)
        assert c.scale == 1.0 and c.source == "propagated" and c.notes and not c.metric


# --------------------------------------------------------------------------------------------
# Wheel odometry buffer
# --------------------------------------------------------------------------------------------
def test_wheel_odometry_interpolates_path_length_between_stamps():
    w = WheelOdometry(max_age_s=0.2)
    for k in range(101):  # 50 Hz, 2 m/s along a quarter circle of radius 5 m: path length counts, not chord
        t = k * 0.02
        a = 2.0 * t / 5.0
        assert w.add(t, [5 * math.sin(a), 5 * (1 - math.cos(a)), 0.0]) == ""
    d = w.travelled(0.105, 1.515).distance
    assert d == pytest.approx(2.0 * 1.41, rel=1e-3)
    assert w.travelled(1.9, 2.1).distance == pytest.approx(0.2, rel=0.05)  # within max_age past the last sample
    assert w.travelled(1.9, 2.5).distance is None  # stale: the source stopped
    assert "stale" in w.travelled(1.9, 2.5).reason
    assert w.travelled(1.0, 1.0).distance is None


def test_wheel_odometry_that_jumps_back_or_resets_restarts_with_a_warning():
    w = WheelOdometry()
    for k in range(10):
        w.add(k * 0.1, [k * 0.1, 0, 0])
    warning = w.add(0.5, [0.5, 0, 0])  # back in time (a replayed bag)
    assert "back" in warning and w.restarts == 1 and len(w.stamps) == 1
    warning = w.add(0.6, [100.0, 0, 0])  # position reset: 99.5 m in 0.1 s
    assert "jumped" in warning and w.restarts == 2
    assert w.add(0.7, [np.nan, 0, 0]) != "" and len(w.stamps) == 1
    assert w.travelled(0.0, 0.65).distance is None  # before the restart: unknown


# --------------------------------------------------------------------------------------------
# The pipeline with a travelled distance per frame (wheel odometry)
# --------------------------------------------------------------------------------------------
def _wheel_run(window: int | None):
    """A car at 0.5-1.5 m per 0.1 s (speed varying), wheel odometry at 50 Hz, the backend's window ``window``
    (deterministic). Returns (estimates, the published odometry's step lengths, true step lengths)."""
    n = 25
    gt = driving_poses(n, step=1.0, speed_change=0.5)
    stamps = np.arange(n) * 0.1
    centres = np.array([T[:3, 3] for T in gt])
    wheel = WheelOdometry()
    fine = np.arange(0.0, stamps[-1] + 0.02, 0.02)  # positions along the path at 50 Hz (piecewise linear)
    for t in fine:
        i = min(int(t / 0.1), n - 2)
        a = (t - stamps[i]) / 0.1
        wheel.add(t, centres[i] + a * (centres[i + 1] - centres[i]))
    vo = VOPipeline(default_config(window), frontend=PointWorldFrontend(gt, noise_px=0.5))
    out = []
    for i in range(n):
        d = None if i == 0 else wheel.travelled(stamps[i - 1], stamps[i]).distance
        out.append(vo.process(frame(i, stamp=stamps[i]), travelled_m=d))
    vo.close()
    est = np.array([e.T_odom_cam[:3, 3] for e in out])
    return out, np.linalg.norm(np.diff(est, axis=0), axis=1), np.linalg.norm(np.diff(centres, axis=0), axis=1)


def test_known_wheel_speeds_give_metric_scale_within_2_percent():
    """Wheel odometry makes the VO steps metres (the unit of the first baseline would otherwise be arbitrary):
    without the backend every step within 5 % and the scale within 2 %."""
    out, steps, gt_steps = _wheel_run(window=0)
    assert out[-1].scale_metric
    assert {e.scale_source for e in out[ACQUIRE_COUNT + 1:]} == {"wheel_odometry"}
    np.testing.assert_allclose(steps, gt_steps, rtol=0.05)  # every step metric, from the first one (rescaled)
    assert np.sum(steps) / np.sum(gt_steps) == pytest.approx(1.0, abs=0.02)  # the scale: within 2 %
    assert np.median(steps / gt_steps) == pytest.approx(1.0, abs=0.02)


def test_wheel_scale_with_the_default_backend():
    """The same car with the default window: every frame still takes the wheels' length, each keyframe pair's wheel
    distance is a prior in the window, and both the published odometry and the map pose keep the same claims
    (measured, Ceres and GTSAM: 2.0-2.3 % worst step, length within 0.3 %). Without the priors the window's
    corrections moved the map pose's steps by up to 10 % and its length by 2 %."""
    out, steps, gt_steps = _wheel_run(window=None)
    assert out[-1].scale_metric
    assert {e.scale_source for e in out[ACQUIRE_COUNT + 1:]} == {"wheel_odometry"}
    in_map = np.linalg.norm(np.diff([e.T_world_cam[:3, 3] for e in out], axis=0), axis=1)
    for published in (steps, in_map):
        np.testing.assert_allclose(published, gt_steps, rtol=0.05)
        assert np.sum(published) / np.sum(gt_steps) == pytest.approx(1.0, abs=0.02)


def test_wheel_odometry_that_stops_falls_back_to_the_propagated_scale():
    n = 16
    gt = driving_poses(n, step=1.0)
    cfg = VOConfig()
    # each window waited for: with the worker the steps vary with its timing (stop 39's CI: one step 7.9 % off;
    # with every window 3 frames late, kp2d_ros.backend.LaggedWorker, the map-frame steps jump where windows land,
    # the last 0.79x; the published odometry's do not: docs/limitations.md)
    cfg.backend.threaded = False
    vo = VOPipeline(cfg, frontend=PointWorldFrontend(gt, noise_px=0.3))
    out = []
    for i in range(n):
        d = 1.0 if 0 < i < 8 else None  # the wheel source stops after frame 7
        if i == 10:
            d = 0.0  # a zero-length step while the views translate
        out.append(vo.process(frame(i, stamp=0.1 * i), travelled_m=d))
    assert out[7].scale_metric and out[7].scale_source == "wheel_odometry"
    assert all(e.scale_source == "propagated" for e in out[8:])
    assert "zero-length" in out[10].scale_notes
    steps = np.linalg.norm(np.diff([e.T_world_cam[:3, 3] for e in out], axis=0), axis=1)
    assert np.all(np.isfinite(steps))
    np.testing.assert_allclose(steps[8:], 1.0, rtol=0.05)  # still metres: propagated from the metric structure


def test_without_a_metric_source_nothing_changes():
    """camera_height_m = 0 and no distances: the estimates are those of the plain pipeline (unit first baseline)."""
    gt = driving_poses(8, step=1.0, speed_change=0.3)
    vo = VOPipeline(VOConfig(), frontend=PointWorldFrontend(gt))
    out = [vo.process(frame(i)) for i in range(8)]
    assert np.linalg.norm(out[1].T_world_cam[:3, 3]) == pytest.approx(1.0)
    assert not any(e.scale_metric for e in out)
    assert [e.scale_source for e in out] == ["none"] + ["propagated"] * 7
    assert all(e.scale_rescaled == 1.0 for e in out)


def test_pose_estimate_scale_fields_on_a_poorly_seen_pair():
    gt = [se3(np.eye(3), [0, 0, 0.5 * i]) for i in range(4)]
    vo = VOPipeline(metric_cfg(), frontend=PointWorldFrontend(gt))
    out = [vo.process(frame(i)) for i in range(4)]  # point world: no images to track the ground in
    assert all(not e.scale_metric for e in out)
    assert "ground plane" in out[2].scale_notes


def test_replay_rescales_earlier_poses_and_writes_the_scale_summary():
    """kp2d replay: when the scale turns metric, the poses so far are rescaled (PoseEstimate.scale_rescaled),
    and scale.json's summary counts the sources and the reasons."""
    from kp2d_ros.eval.replay import replay

    n = 12
    gt = driving_poses(n, step=1.0)
    inner = VOPipeline(front_end_config(), frontend=PointWorldFrontend(gt, noise_px=0.2))  # the steps, not the window

    class WheelPipeline:  # what the node does: the travelled distance per frame
        def process(self, f):
            return inner.process(f, travelled_m=None if f.index == 0 else 0.5)

    class Seq:
        name, ground_truth = "point-world", None

        def __len__(self):
            return n

        def __iter__(self):
            return (frame(i, stamp=0.1 * i) for i in range(n))

    result = replay(Seq(), VOConfig(), progress=False, pipeline=WheelPipeline())
    steps = np.linalg.norm(np.diff(result.estimate.poses[:, :3, 3], axis=0), axis=1)
    np.testing.assert_allclose(steps, 0.5, rtol=0.03)  # every step in metres, also those before the acquisition
    s = result.scale
    assert s["metric"] and s["metric_from_frame"] == ACQUIRE_COUNT and s["rescale"] == pytest.approx(0.5, rel=0.03)
    assert s["sources"]["wheel_odometry"] == n - ACQUIRE_COUNT and s["sources"]["none"] == 1
    assert any("agreeing" in k for k in s["not_used"])


def test_kitti07_with_the_ground_plane_and_the_default_window_is_metric_and_keeps_its_shape():
    """Issue 12's targets with the default config (the learned frontend and the backend's window), deterministic:
    KITTI 07's 160 frames with the camera height are metric within 5 % and ``ate_se3_m`` <= 1.5 m; and the metric
    corrections do not bend the trajectory (Sim(3) ATE <= 0.2 m; 0.061 m without the height). Measured (stop 39,
    AVX2 CPU, fp32 network): scale 1.006, 0.21 m, Sim(3) 0.127 m. Before the window followed the filter's
    corrections: 1.062, 1.69 m, 0.260 m (docs/results.md, Metric scale)."""
    from conftest import REPO, data_path
    from kp2d_ros.data import open_sequence
    from kp2d_ros.eval.replay import replay

    path = data_path("vo", "kitti07_f0000-0159")
    cfg = load_config(REPO / "config" / "vo.yaml", overrides={"geometry.camera_height_m": 1.65, "backend.threaded": False})
    r = replay(open_sequence(path, camera=cfg.camera), cfg, progress=False).report()
    assert abs(r["sim3_scale"] - 1.0) <= 0.05 and r["ate_se3_m"] <= 1.5
    assert r["ate_rmse_m"] <= 0.2
