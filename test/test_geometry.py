"""Two-view geometry on synthetic scenes with known relative pose."""
import cv2
import numpy as np
import pytest

from kp2d_ros.config import GeometryConfig
from kp2d_ros.geometry import (bearings, compose_relative, estimate_relative_pose, inverse_depths, invert_se3,
                               normalize_points, pose_from_known_depths, pure_rotation_fit, recover_pose,
                               rotation_angle_deg, rotation_compensated_parallax, scale_from_inverse_depths, se3,
                               travel_angle_deg, triangulation_angles, undistort_pixels, vote_log_scale)
import kp2d_ros.geometry as geometry
from kp2d_ros.types import Camera

CAM = Camera.from_intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
DIST = np.array([-0.28, 0.07, 0.0002, 0.00002, 0.0])  # EuRoC-like radial-tangential


def rot(rx, ry, rz):
    return cv2.Rodrigues(np.radians([rx, ry, rz]))[0]


def project(X, camera, R=np.eye(3), t=np.zeros(3)):
    """Pixels of world points X (N, 3) seen by a camera with x_cam = R X + t."""
    px, _ = cv2.projectPoints(X, cv2.Rodrigues(R)[0], t.astype(np.float64), camera.K, camera.dist)
    return px.reshape(-1, 2)


def scene(rng, n=300, near=5.0, far=20.0):
    z = rng.uniform(near, far, n)
    return np.c_[rng.uniform(-0.5, 0.5, n) * z, rng.uniform(-0.35, 0.35, n) * z, z]


def two_views(rng, R, t, camera=CAM, noise=0.3, n=300, near=5.0, far=20.0, outliers=0.0):
    X = scene(rng, n, near, far)
    p0 = project(X, camera) + rng.normal(0, noise, (n, 2))
    p1 = project(X, camera, R, t) + rng.normal(0, noise, (n, 2))
    k = int(outliers * n)
    p1[:k] = rng.uniform([0, 0], [camera.width, camera.height], (k, 2))
    return p0, p1


def angle_between(a, b):
    c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def rot_err(Ra, Rb):
    return rotation_angle_deg(Ra.T @ Rb)


@pytest.mark.parametrize("method", ["magsac", "ransac"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_pose(method, seed):
    rng = np.random.default_rng(seed)
    R = rot(*rng.normal(0, 3, 3))
    t = np.array([0.2, -0.1, 1.0])
    p0, p1 = two_views(rng, R, t, noise=0.2, outliers=0.2)  # SIFT-like noise for the 0.5 px default
    g = estimate_relative_pose(p0, p1, CAM, GeometryConfig(method=method))
    assert g is not None
    assert rot_err(g.R, R) < 0.1
    assert angle_between(g.t, t) < 1.0
    assert np.linalg.norm(g.t) == pytest.approx(1.0)
    # outliers (the first 20 %) are rejected, most true matches kept
    assert g.inliers[:60].mean() < 0.1 and g.inliers[60:].mean() > 0.8
    # triangulated points: in front of camera 0, consistent with the true depth up to the scale |t|
    assert g.points3d.shape[0] == g.point_match_idx.shape[0] > 100
    assert np.all(g.points3d[:, 2] > 0)


def test_distorted_camera():
    cam = Camera.from_intrinsics(458.0, 457.0, 367.0, 248.0, 752, 480, dist=DIST)
    rng = np.random.default_rng(3)
    R, t = rot(1.0, -2.0, 0.5), np.array([-0.5, 0.1, 1.0])
    p0, p1 = two_views(rng, R, t, camera=cam, noise=0.2)
    g = estimate_relative_pose(p0, p1, cam, GeometryConfig())
    assert rot_err(g.R, R) < 0.1 and angle_between(g.t, t) < 1.0
    # ignoring the distortion is visibly worse: the undistortion step matters
    g_bad = estimate_relative_pose(p0, p1, Camera(cam.K, np.zeros(5), 752, 480), GeometryConfig())
    assert g_bad is None or rot_err(g_bad.R, R) > 0.2 or angle_between(g_bad.t, t) > 2.0


def test_normalize_and_undistort_round_trip():
    cam = Camera.from_intrinsics(458.0, 457.0, 367.0, 248.0, 752, 480, dist=DIST)
    rng = np.random.default_rng(4)
    X = scene(rng, 50)
    px = project(X, cam)
    n = normalize_points(px, cam)
    np.testing.assert_allclose(n, X[:, :2] / X[:, 2:], atol=1e-5)
    ideal = undistort_pixels(px, cam)
    np.testing.assert_allclose(ideal, project(X, Camera(cam.K, np.zeros(5), 752, 480)), atol=2e-3)


def test_small_baseline_needs_large_distance_threshold():
    """Points 75-200 baselines away: the 4-argument recoverPose (distanceThresh=50) picks t blindly."""
    R, t = rot(0.3, -0.5, 0.2), np.array([0.2, 0.02, 0.05])
    flipped = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        p0, p1 = two_views(rng, R, t, noise=0.1, near=15.0, far=40.0, n=500)
        g = estimate_relative_pose(p0, p1, CAM, GeometryConfig())
        assert g is not None
        assert rot_err(g.R, R) < 0.1 and angle_between(g.t, t) < 2.0
        # The 4-argument overload on an essential matrix of the same points: no point is nearer
        # than 50 baselines, none passes its cheirality test, and the sign of t is a coin toss.
        E, mask = cv2.findEssentialMat(p0, p1, CAM.K, cv2.USAC_MAGSAC, 0.999, 1.0, 10000)
        n_good, _, t4, _ = cv2.recoverPose(E, p0, p1, CAM.K, mask=mask.copy())
        assert n_good == 0
        flipped += angle_between(t4.ravel(), t) > 90.0
    assert flipped >= 1


def test_pure_rotation_flags_translation():
    rng = np.random.default_rng(5)
    R = rot(2.0, 4.0, -1.0)
    p0, p1 = two_views(rng, R, np.zeros(3), noise=0.3)
    g = estimate_relative_pose(p0, p1, CAM, GeometryConfig())
    assert g is not None
    assert rot_err(g.R, R) < 0.1
    assert not np.any(g.t) and g.points3d.shape == (0, 3)
    # with real translation the same call gives a unit t
    p0, p1 = two_views(rng, R, np.array([0.0, 0.0, 1.0]))
    assert np.linalg.norm(estimate_relative_pose(p0, p1, CAM, GeometryConfig()).t) == pytest.approx(1.0)


def test_a_pure_rotation_with_a_few_gross_mismatches_is_still_a_pure_rotation():
    """A 6 deg turn with 0.15 px noise and 3 % of the correspondences off by 30-80 px (what a degenerate essential
    matrix can take as inliers along its arbitrary epipolar lines): the least-squares rotation turns by them and
    leaves every point a spurious parallax above ``rotation_only_parallax_px``; the refitted one does not, and a
    real translation still leaves its parallax."""
    from kp2d_ros.geometry import normalize_points, rotation_compensated_parallax, rotation_from_bearings

    rng = np.random.default_rng(11)
    R = rot(0.5, 6.0, -0.3)
    p0, p1 = two_views(rng, R, np.zeros(3), noise=0.15, n=400)
    bad = rng.choice(len(p1), 12, replace=False)
    direction = rng.normal(size=(12, 2))
    p1[bad] += direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(30, 80, (12, 1))
    n0, n1 = normalize_points(p0, CAM), normalize_points(p1, CAM)
    f = CAM.K[0, 0]
    plain = np.median(rotation_compensated_parallax(n0, n1, rotation_from_bearings(n0, n1))) * f
    R_fit, parallax = pure_rotation_fit(n0, n1, f)
    assert plain > GeometryConfig().rotation_only_parallax_px > parallax, (plain, parallax)
    assert parallax < 0.3 and rot_err(R_fit, R) < 0.02
    p0, p1 = two_views(rng, R, np.array([0.3, 0.0, 1.0]), noise=0.3, n=400)
    n0, n1 = normalize_points(p0, CAM), normalize_points(p1, CAM)
    assert pure_rotation_fit(n0, n1, f)[1] > 5.0


def test_a_turn_seen_through_a_wrong_self_calibrated_lens_is_still_a_turn():
    """A 6 deg turn on the spot by a pinhole camera, undistorted with a self-calibrated k1 of +0.09 (what the
    learned frontend's windows estimated on a ground-only view of the synthetic street): the wrong lens leaves
    the best pure rotation ~1 px of parallax and the pair passes for a translation; with the configured camera
    beside it the turn stays a turn. A lens only a little wrong (+0.03) keeps the turn a turn but scales its rotation
    (0.9 % of it): the configured lens, which explains the pair better, gives the rotation then. A real translation
    is still one through either lens."""
    from dataclasses import replace

    rng = np.random.default_rng(12)
    R = rot(0.3, 6.0, 0.2)
    p0, p1 = two_views(rng, R, np.zeros(3), noise=0.15, n=400)
    wrong = replace(CAM, dist=np.array([0.09, 0.0, 0.0, 0.0, 0.0]))
    cfg = GeometryConfig()
    assert np.any(estimate_relative_pose(p0, p1, wrong, cfg).t)  # the wrong lens alone: a translation
    g = estimate_relative_pose(p0, p1, wrong, cfg, configured=CAM)
    assert not np.any(g.t) and rot_err(g.R, R) < 0.05
    slightly = replace(CAM, dist=np.array([0.03, 0.0, 0.0, 0.0, 0.0]))
    alone = estimate_relative_pose(p0, p1, slightly, cfg)
    assert not np.any(alone.t) and rot_err(alone.R, R) > 0.04
    g = estimate_relative_pose(p0, p1, slightly, cfg, configured=CAM)
    assert not np.any(g.t) and rot_err(g.R, R) < 0.01
    p0, p1 = two_views(rng, R, np.array([0.0, 0.0, 1.0]), noise=0.15, n=400)
    g = estimate_relative_pose(p0, p1, wrong, cfg, configured=CAM)
    assert np.linalg.norm(g.t) == pytest.approx(1.0)


def test_the_configured_lens_is_fitted_only_where_it_can_show_a_turn(monkeypatch):
    """The second pure-rotation fit (through the configured lens) runs where the self-calibrated lens's parallax is
    within reach of the threshold (the lenses' median shift, times LENS_PARALLAX_MARGIN), not on a pair that moved
    far: it costs ~0.5 ms per frame in the node before the pose goes out (issue 13). The turn stays a turn."""
    from dataclasses import replace

    import kp2d_ros.geometry as geometry

    calls = []
    fit = geometry.pure_rotation_fit
    monkeypatch.setattr(geometry, "pure_rotation_fit", lambda *a, **k: calls.append(1) or fit(*a, **k))
    rng = np.random.default_rng(12)
    R = rot(0.3, 6.0, 0.2)
    wrong = replace(CAM, dist=np.array([0.09, 0.0, 0.0, 0.0, 0.0]))
    cfg = GeometryConfig()
    p0, p1 = two_views(rng, R, np.zeros(3), noise=0.15, n=400)
    g = estimate_relative_pose(p0, p1, wrong, cfg, configured=CAM)
    assert not np.any(g.t) and len(calls) == 2
    calls.clear()
    p0, p1 = two_views(rng, R, np.array([0.3, 0.0, 1.0]), noise=0.15, n=400)
    g = estimate_relative_pose(p0, p1, wrong, cfg, configured=CAM)
    assert np.linalg.norm(g.t) == pytest.approx(1.0) and len(calls) == 1


def test_too_few_points_gives_none():
    rng = np.random.default_rng(6)
    p0, p1 = two_views(rng, rot(0, 1, 0), np.array([0, 0, 1.0]), n=10)
    assert estimate_relative_pose(p0, p1, CAM, GeometryConfig(min_inliers=15)) is None


def test_rotation_compensated_parallax_zero_for_rotation():
    rng = np.random.default_rng(8)
    R = rot(5, -3, 2)
    X = scene(rng, 30)
    n0 = X[:, :2] / X[:, 2:]
    Y = X @ R.T
    n1 = Y[:, :2] / Y[:, 2:]
    assert np.max(rotation_compensated_parallax(n0, n1, R)) < 1e-9
    Y = X @ R.T + np.array([1.0, 0, 0])
    assert np.min(rotation_compensated_parallax(n0, Y[:, :2] / Y[:, 2:], R)) > 1e-3


def test_se3_helpers():
    R, t = rot(10, 20, 30), np.array([1.0, 2.0, 3.0])
    T = se3(R, t)
    np.testing.assert_allclose(T @ invert_se3(T), np.eye(4), atol=1e-12)
    # camera 1 pose from camera 0 pose and x1 = R x0 + t
    T_w_c0 = se3(rot(0, 45, 0), np.array([5.0, 0, 0]))
    T_w_c1 = compose_relative(T_w_c0, R, t)
    X_c0 = np.array([0.3, -0.2, 4.0])
    X_w = T_w_c0[:3, :3] @ X_c0 + T_w_c0[:3, 3]
    X_c1 = R @ X_c0 + t
    np.testing.assert_allclose(T_w_c1[:3, :3] @ X_c1 + T_w_c1[:3, 3], X_w, atol=1e-12)


def test_triangulation_angles():
    X = np.array([[0.5, 0.0, 1.0 / np.tan(np.radians(10.0)) * 0.5]])  # symmetric between centres 0 and 1
    R, t = np.eye(3), np.array([-1.0, 0.0, 0.0])  # camera 1 centre at x = 1
    assert triangulation_angles(X, R, t)[0] == pytest.approx(20.0, abs=1e-6)


def test_scale_vote_takes_the_cluster_the_prior_supports():
    """Two consistent clusters of point votes (log depth ratios): the correct one, and a larger one 5x too
    small (a region matched to the wrong copy of a repeated structure). The median of all votes follows the
    larger one; the speed prior decides which cluster is the scale."""
    rng = np.random.default_rng(11)
    right, wrong = np.log(30.0) + rng.normal(0, 0.03, 20), np.log(6.0) + rng.normal(0, 0.03, 25)
    votes, stds = np.r_[right, wrong], np.full(45, 0.1)
    assert np.median(votes) < np.log(7.0)  # a plain median: the wrong cluster
    vote = vote_log_scale(votes, stds, prior_log=np.log(32.0), prior_std=0.11)
    assert np.exp(vote.log_scale) == pytest.approx(30.0, rel=0.02)
    np.testing.assert_array_equal(vote.consistent, np.r_[np.ones(20, bool), np.zeros(25, bool)])
    # without a prior the larger cluster wins; with the prior near it, too
    assert np.exp(vote_log_scale(votes, stds, 0.0, np.inf).log_scale) == pytest.approx(6.0, rel=0.02)
    assert np.exp(vote_log_scale(votes, stds, np.log(7.0), 0.11).log_scale) == pytest.approx(6.0, rel=0.02)


def test_scale_vote_of_one_cluster_is_the_median_of_all():
    rng = np.random.default_rng(12)
    votes = np.log(2.0) + rng.standard_t(3, 200) * 0.05  # heavy tails, no second cluster
    vote = vote_log_scale(votes, np.full(200, 0.03), prior_log=np.log(2.2), prior_std=0.05)
    assert vote.log_scale == np.median(votes) and vote.consistent.all()


def test_scale_vote_keeps_a_minority_cluster_out_of_the_majoritys_median():
    """Across a gap, a facade matched to the wrong copy: 37 % of the votes in a cluster at a third of the scale. The
    median of all votes then lies within the right cluster's spread (at its lower edge), which the one-cluster rule
    alone took for tails: every vote consistent, the wrong points extending tracks, the scale 3 % low (stop 53)."""
    rng = np.random.default_rng(13)
    votes = np.r_[np.log(3.0) + rng.normal(0, 0.04, 85), np.log(1.0) + rng.normal(0, 0.04, 51)]
    vote = vote_log_scale(votes, np.full(136, 0.15), prior_log=np.log(3.0), prior_std=0.09)
    np.testing.assert_array_equal(vote.consistent, np.r_[np.ones(85, bool), np.zeros(51, bool)])
    assert vote.log_scale == np.median(votes[:85])


def test_inverse_depths_exact_and_signed():
    rng = np.random.default_rng(10)
    R, t = rot(1.0, 3.0, -0.5), np.array([0.3, 0.0, 1.0])
    t = t / np.linalg.norm(t)
    X0 = scene(rng, 50)
    X1 = X0 @ R.T + t
    n0, n1 = X0[:, :2] / X0[:, 2:], X1[:, :2] / X1[:, 2:]
    rho0, rho1, sin0, sin1 = inverse_depths(n0, n1, R, t)
    np.testing.assert_allclose(rho0, 1 / np.linalg.norm(X0, axis=1), rtol=1e-9)
    np.testing.assert_allclose(rho1, 1 / np.linalg.norm(X1, axis=1), rtol=1e-9)
    assert np.all((sin0 > 0) & (sin0 <= 1) & (sin1 > 0) & (sin1 <= 1))
    # a point at infinity has inverse depth ~0 (not dropped, not huge)
    r0, _, _, _ = inverse_depths(n0[:1], (n0[:1] @ R[:2, :2].T + R[:2, 2]) / (n0[:1] @ R[2, :2] + R[2, 2])[:, None], R, t)
    assert abs(r0[0]) < 1e-9


def test_scale_from_inverse_depths_is_not_attenuated():
    """Both inverse depths noisy: the errors-in-variables fit finds the scale, plain regression shrinks it."""
    rng = np.random.default_rng(11)
    n = 2000
    rho = 1 / rng.uniform(2.0, 60.0, n)  # true inverse depths (reference units)
    sig_a = rng.uniform(0.5, 3.0, n) * 0.02
    sig_b = rng.uniform(0.5, 3.0, n) * 0.02
    s_true = 1.7
    a = rho + rng.normal(0, 1, n) * sig_a
    b = s_true * rho + rng.normal(0, 1, n) * sig_b
    b[:100] = rng.uniform(0, 1, 100)  # outliers
    s = scale_from_inverse_depths(a, sig_a, b, sig_b, init=1.0, noise=1.0)
    assert s == pytest.approx(s_true, rel=0.03)
    w = 1 / sig_b[100:] ** 2
    naive = np.sum(w * a[100:] * b[100:]) / np.sum(w * a[100:] ** 2)
    assert naive < 0.9 * s_true
    assert scale_from_inverse_depths(a[:0], sig_a[:0], b[:0], sig_b[:0], init=1.0) is None


def _wrong_essential(monkeypatch, R_bad, t_bad):
    """Make the robust estimator return a wrong model (all points inliers), as it sometimes does in
    the rotation/translation-ambiguity valley of forward motion."""
    import kp2d_ros.geometry as geometry

    E_bad = geometry.skew(t_bad / np.linalg.norm(t_bad)) @ R_bad
    monkeypatch.setattr(geometry.cv2, "findEssentialMat",
                        lambda n0, n1, *a, **k: (E_bad.copy(), np.ones((len(n0), 1), np.uint8)))


def test_motion_prior_recovers_from_a_wrong_robust_model(monkeypatch):
    rng = np.random.default_rng(5)
    R, t = rot(0.3, 2.0, 0.1), np.array([0.05, 0.0, 1.0])  # forward motion with yaw (a KITTI turn)
    p0, p1 = two_views(rng, R, t, noise=0.3, near=20.0, far=80.0)  # far scene: a flat cost valley
    _wrong_essential(monkeypatch, rot(0.3, 0.8, 0.1), np.array([-0.6, 0.0, 1.0]))
    cfg = GeometryConfig(ransac_threshold_px=1.0, refine_rounds=2)
    wrong = estimate_relative_pose(p0, p1, CAM, cfg)
    assert rot_err(wrong.R, R) > 0.5  # polishing stays in the wrong basin
    prior_R, prior_t = rot(0.2, 1.7, 0.0), np.array([0.1, 0.0, 1.0])  # e.g. the previous frame's motion
    fixed = estimate_relative_pose(p0, p1, CAM, cfg, priors=[(prior_R, prior_t)])
    assert rot_err(fixed.R, R) < 0.05 and angle_between(fixed.t, t) < 2.0
    assert fixed.inliers.sum() > wrong.inliers.sum()


def test_a_bad_motion_prior_is_not_chosen():
    rng = np.random.default_rng(6)
    R, t = rot(0.5, -1.0, 0.2), np.array([0.3, 0.1, 1.0])
    p0, p1 = two_views(rng, R, t, noise=0.3, outliers=0.2)
    cfg = GeometryConfig(ransac_threshold_px=1.0)
    plain = estimate_relative_pose(p0, p1, CAM, cfg)
    with_bad = estimate_relative_pose(p0, p1, CAM, cfg, priors=[(rot(10, -20, 5), np.array([1.0, 0.0, 0.0]))])
    np.testing.assert_allclose(with_bad.R, plain.R, atol=1e-9)
    np.testing.assert_allclose(with_bad.t, plain.t, atol=1e-9)


@pytest.mark.parametrize("order", ["bad_first", "good_first"])
def test_the_prior_that_fits_best_wins_whatever_the_order(monkeypatch, order):
    """Two hypotheses, as the pipeline gives them (the last motion, the pose on the reference's known depths): the
    one in the right basin wins over the estimator's wrong model and over the other, in either order."""
    rng = np.random.default_rng(5)
    R, t = rot(0.3, 2.0, 0.1), np.array([0.05, 0.0, 1.0])
    p0, p1 = two_views(rng, R, t, noise=0.3, near=20.0, far=80.0)
    _wrong_essential(monkeypatch, rot(0.3, 0.8, 0.1), np.array([-0.6, 0.0, 1.0]))
    good, bad = (rot(0.2, 1.7, 0.0), np.array([0.1, 0.0, 1.0])), (rot(3, -10, 2), np.array([1.0, 0.0, 0.2]))
    priors = [bad, good] if order == "bad_first" else [good, bad]
    geom = estimate_relative_pose(p0, p1, CAM, GeometryConfig(ransac_threshold_px=1.0, refine_rounds=2), priors=priors)
    assert rot_err(geom.R, R) < 0.05 and angle_between(geom.t, t) < 2.0


def test_pose_from_known_depths_takes_the_pose_from_the_depths_despite_outliers():
    """PnP on view 0's known depths: the pose of view 1 with its translation's length, 30 % of the observations
    wrong; None with too few points."""
    rng = np.random.default_rng(3)
    R, t = rot(1.0, 14.0, -0.5), np.array([0.4, 0.05, -3.0])  # 14 degrees and 3 m: a gap in a curve
    X = scene(rng, 300)
    n0 = X[:, :2] / X[:, 2:]
    X1 = X @ R.T + t
    m1 = X1[:, :2] / X1[:, 2:] + rng.normal(0, 0.3 / 500.0, (300, 2))
    m1[:90] = rng.uniform(-0.6, 0.6, (90, 2))
    rays = bearings(n0)
    pose = pose_from_known_depths(rays, 1.0 / np.linalg.norm(X, axis=1), m1, 3.0 / 500.0, 8)
    assert pose is not None
    assert rot_err(pose[0], R) < 0.05
    assert np.linalg.norm(pose[1] - t) < 0.01 * np.linalg.norm(t)
    assert pose_from_known_depths(rays[:5], np.ones(5), m1[:5], 3.0 / 500.0, 8) is None


# --------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------
def test_two_view_covariance_matches_the_spread_of_the_estimates():
    """Monte-Carlo: the predicted covariance of (R, unit t) has the spread of refined estimates over
    noise draws (each diagonal term within a factor 2), and grows when there are fewer points."""
    from kp2d_ros.geometry import normalize_points, refine_pose, two_view_covariance

    rng = np.random.default_rng(3)
    R, t = rot(0.5, 2.0, -0.3), np.array([0.2, -0.05, 1.0])
    t /= np.linalg.norm(t)
    X = scene(rng, 200)
    q0, q1 = project(X, CAM), project(X, CAM, R, t)
    errs, covs = [], []
    for _ in range(60):
        n0 = normalize_points(q0 + rng.normal(0, 0.5, q0.shape), CAM)
        n1 = normalize_points(q1 + rng.normal(0, 0.5, q1.shape), CAM)
        Re, te = refine_pose(R, t, n0, n1, 1.0 / 500.0)
        cov, B = two_view_covariance(Re, te, n0, n1, 0.01 / 500.0)
        covs.append(cov)
        errs.append(np.r_[cv2.Rodrigues(Re @ R.T)[0].ravel(), B.T @ (te - t)])
    predicted = np.mean(covs, axis=0)
    ratio = np.var(np.array(errs), axis=0) / np.diag(predicted)
    assert np.all(ratio > 0.5) and np.all(ratio < 2.0), ratio
    n0, n1 = normalize_points(q0, CAM), normalize_points(q1, CAM)
    few, _ = two_view_covariance(R, t, n0[:30], n1[:30], 0.5 / 500.0)
    many, _ = two_view_covariance(R, t, n0, n1, 0.5 / 500.0)
    assert np.all(np.diag(few) > 2.0 * np.diag(many))  # noise-free points: the floor sets the scale


def test_compose_covariance_matches_sampled_compositions():
    from kp2d_ros.geometry import compose_covariance, se3

    rng = np.random.default_rng(4)
    T_ref = se3(rot(5, 40, -10), [3.0, 1.0, 7.0])
    T_rel = se3(rot(1, -3, 2), [0.5, -0.2, 4.0])
    A, Bm = rng.normal(size=(6, 6)) * 0.02, rng.normal(size=(6, 6)) * 0.02
    cov_ref, cov_rel = A @ A.T, Bm @ Bm.T

    def perturb(T, d):
        return se3(cv2.Rodrigues(d[3:])[0] @ T[:3, :3], T[:3, 3] + d[:3])

    T0 = T_ref @ T_rel
    d = []
    for a, b in zip(rng.multivariate_normal(np.zeros(6), cov_ref, 4000), rng.multivariate_normal(np.zeros(6), cov_rel, 4000)):
        T = perturb(T_ref, a) @ perturb(T_rel, b)
        d.append(np.r_[T[:3, 3] - T0[:3, 3], cv2.Rodrigues(T[:3, :3] @ T0[:3, :3].T)[0].ravel()])
    predicted = compose_covariance(T_ref, cov_ref, T_rel, cov_rel)
    s = np.sqrt(np.outer(np.diag(predicted), np.diag(predicted)))
    np.testing.assert_allclose(np.cov(np.array(d).T) / s, predicted / s, atol=0.08)


def test_relative_motion_covariance_matches_sampled_motions():
    """inv([R | s t]) of sampled (R, t, s) around the estimate spreads as relative_motion_covariance says."""
    from kp2d_ros.geometry import relative_motion_covariance, se3

    rng = np.random.default_rng(5)
    R, t, s = rot(2, -5, 1), np.array([0.1, 0.0, 1.0]) / np.sqrt(1.01), 2.5
    B = np.linalg.svd(t.reshape(1, 3))[2][1:].T
    A = rng.normal(size=(5, 5)) * 0.01
    cov_rt = A @ A.T
    predicted = relative_motion_covariance(R, t, s, cov_rt, B, 0.1)
    T0 = invert_se3(se3(R, s * t))
    d = []
    for x, ds in zip(rng.multivariate_normal(np.zeros(5), cov_rt, 4000), rng.normal(0, 0.1, 4000)):
        tx = t + B @ x[3:]
        T = invert_se3(se3(cv2.Rodrigues(x[:3])[0] @ R, (s + ds) * tx / np.linalg.norm(tx)))
        d.append(np.r_[T[:3, 3] - T0[:3, 3], cv2.Rodrigues(T[:3, :3] @ T0[:3, :3].T)[0].ravel()])
    sd = np.sqrt(np.outer(np.diag(predicted), np.diag(predicted)))
    np.testing.assert_allclose(np.cov(np.array(d).T) / sd, predicted / sd, atol=0.08)


def test_patch_warps_are_the_jacobians_of_the_plane_mapping():
    """patch_warps against finite differences of the mapping pixel 0 -> pixel 1 through the plane facing camera
    0 at each point; a forward motion magnifies by z0 / z1; points behind a camera get NaN."""
    from kp2d_ros.geometry import patch_warps

    K = np.array([[500.0, 0, 320], [0, 480.0, 240], [0, 0, 1]])
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-3, 3, (20, 2)), rng.uniform(4, 20, 20)]
    a = np.radians(4.0)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.array([0.2, -0.05, -0.8])
    J = patch_warps(X, R, t, K)

    def pix(P):
        return (P[:, :2] / P[:, 2:]) * [K[0, 0], K[1, 1]] + K[:2, 2]

    def through_plane(u):  # pixel 0 -> point on the plane z = z0 -> pixel 1
        Z = X[:, 2:]
        P = np.c_[(u[:, 0:1] - K[0, 2]) / K[0, 0] * Z, (u[:, 1:2] - K[1, 2]) / K[1, 1] * Z, Z]
        return pix(P @ R.T + t)

    u0, h = pix(X), 1e-4
    for k in range(2):
        d = np.zeros(2)
        d[k] = h
        np.testing.assert_allclose(J[:, :, k], (through_plane(u0 + d) - through_plane(u0 - d)) / (2 * h),
                                   rtol=1e-5, atol=1e-7)
    fwd = patch_warps(np.array([[1.0, 0.5, 10.0]]), np.eye(3), np.array([0, 0, -0.6]), K)[0]
    np.testing.assert_allclose(fwd, np.eye(2) * 10.0 / 9.4, rtol=1e-12)
    assert np.isnan(patch_warps(np.array([[0, 0, 0.5]]), np.eye(3), np.array([0, 0, -1.0]), K)).all()


# --------------------------------------------------------------------------------------------
# Radial-only lenses (the backend's self-calibrated k1): the radius solved in closed form or by Newton's method
# --------------------------------------------------------------------------------------------
def _radial(x: np.ndarray, d) -> np.ndarray:
    r2 = (x ** 2).sum(1)
    return x * (1 + d[0] * r2 + d[1] * r2 ** 2 + d[4] * r2 ** 3)[:, None]


_KITTI_PTS = np.random.default_rng(3).uniform([0, 0], [1226, 370], (500, 2))


@pytest.mark.parametrize("dist", [[0.0112, 0, 0, 0, 0], [-0.039, 0, 0, 0, 0], [1e-7, 0, 0, 0, 0], [-0.2, 0.05, 0, 0, 0.01]])
def test_a_radial_lens_is_undistorted_as_opencv_does(dist):
    """The self-calibrated k1 (KITTI 07: +0.011; TUM with SIFT: -0.039; a first window's 1e-7), solved in closed form,
    and a moderate barrel lens, by Newton's method: the same points as cv2.undistortPoints to 1e-12, and the forward
    model gives the input back."""
    from kp2d_ros.geometry import UNDISTORT_CRITERIA, normalize_points

    cam = Camera.from_intrinsics(707, 707, 601, 183, 1226, 370, dist=dist)
    ours = normalize_points(_KITTI_PTS, cam)
    ref = cv2.undistortPoints(_KITTI_PTS.reshape(-1, 1, 2), cam.K, cam.dist, criteria=UNDISTORT_CRITERIA).reshape(-1, 2)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    xd = (_KITTI_PTS - [601, 183]) / 707
    np.testing.assert_allclose(_radial(ours, dist), xd, atol=1e-12)


def test_a_strong_radial_lens_converges_where_opencv_stops_short():
    """k1 0.25, k2 -0.8, k3 1.2: OpenCV's 20 fixed-point steps leave 1e-3 of the forward model's error at the
    corners; the Newton steps solve it to 1e-12."""
    from kp2d_ros.geometry import normalize_points

    dist = [0.25, -0.8, 0, 0, 1.2]
    cam = Camera.from_intrinsics(707, 707, 601, 183, 1226, 370, dist=dist)
    xd = (_KITTI_PTS - [601, 183]) / 707
    np.testing.assert_allclose(_radial(normalize_points(_KITTI_PTS, cam), dist), xd, atol=1e-12)


@pytest.mark.parametrize("dist", [[0.2312, -0.7849, -0.0033, -0.0001, 0.9172],  # TUM fr2's plumb_bob (tangential)
                                  [-0.6, 0, 0, 0, 0]])  # folds back inside the image: no monotone radius
def test_other_lenses_are_left_to_opencv(dist):
    from kp2d_ros.geometry import UNDISTORT_CRITERIA, _undistort_radial, normalize_points

    cam = Camera.from_intrinsics(707, 707, 601, 183, 1226, 370, dist=dist)
    ref = cv2.undistortPoints(_KITTI_PTS.reshape(-1, 1, 2), cam.K, cam.dist, criteria=UNDISTORT_CRITERIA).reshape(-1, 2)
    np.testing.assert_array_equal(normalize_points(_KITTI_PTS, cam), ref)
    if dist[2] == 0:
        assert _undistort_radial((_KITTI_PTS - [601, 183]) / 707, np.array([dist[0], dist[1], dist[4]])) is None


def test_sampson_distance_splits_a_vertical_disparity_between_the_views():
    """A sideways baseline (R = I, t = x) makes the epipolar lines rows: the Sampson distance of (x0, y0) <-> (x1, y1)
    is (y0 - y1) / sqrt(2), whatever x0 and x1. A stack of K matrices gives each matrix's row, in one pass."""
    rng = np.random.default_rng(11)
    n0 = rng.uniform(-0.6, 0.6, (50, 2))
    n1 = np.c_[rng.uniform(-0.6, 0.6, 50), n0[:, 1] + rng.normal(0, 0.01, 50)]
    E = geometry.skew(np.array([1.0, 0.0, 0.0]))
    assert np.allclose(geometry.sampson_errors(E, n0, n1), (n0[:, 1] - n1[:, 1]) / np.sqrt(2), atol=1e-15)
    stack = np.stack([E, -2.0 * E, geometry.skew(np.array([0.2, -0.1, 1.0])) @ rot(1.0, 2.0, 0.5)])
    terms = geometry.SampsonTerms(n0, n1)
    rows = terms(stack)
    assert rows.shape == (3, 50)
    for Ek, row in zip(stack, rows):
        assert np.allclose(row, terms(Ek), atol=1e-15)
    assert np.allclose(rows[1], -rows[0])  # signed; the scale of E drops out
    assert np.allclose(geometry.skew_stack(stack[:, 0]), [geometry.skew(v) for v in stack[:, 0]])


@pytest.mark.parametrize("wrong_depths", [0.0, 0.2])
def test_a_pose_refined_against_known_points_recovers_rotation_direction_and_length(wrong_depths):
    """Motion-only adjustment (``pipeline.structure_pose``): a pose off by 0.5 deg, 6 deg of direction and 15 % of
    length comes back to the truth from the epipolar terms of all inliers and the reprojections of the points whose
    depth the reference knows (5 % depth noise, declared); a fifth of those depths wrong (x2) does not move it."""
    from kp2d_ros.geometry import bearings, refine_pose_with_structure

    rng = np.random.default_rng(3)
    R_true, t_true = rot(0.4, -1.5, 0.2), np.array([0.1, -0.05, 0.8])
    X = scene(rng, 300)
    p0 = project(X, CAM) + rng.normal(0, 0.3, (300, 2))
    p1 = project(X, CAM, R_true, t_true) + rng.normal(0, 0.3, (300, 2))
    n0, n1 = normalize_points(p0, CAM), normalize_points(p1, CAM)
    known = np.arange(150)
    rho = np.exp(rng.normal(0, 0.05, known.size)) / np.linalg.norm(X[known], axis=1)
    rho[rng.random(known.size) < wrong_depths] *= 0.5
    R0 = rot(0.3, -0.3, 0.2) @ R_true
    t0 = 1.15 * cv2.Rodrigues(np.radians([0.0, 6.0, 0.0]))[0] @ t_true
    R, t = refine_pose_with_structure(R0, t0, n0, n1, bearings(n0[known]), rho, 0.05 * rho, n1[known], 1.0 / 500.0)
    assert rot_err(R, R_true) < 0.05
    assert angle_between(t, t_true) < 1.0
    assert abs(np.linalg.norm(t) / np.linalg.norm(t_true) - 1.0) < 0.02


def test_a_pose_refined_against_noisy_depths_is_not_pulled_short():
    """Depths with 30 % noise, declared, shorten the translation far less than a plain reprojection fit (the noise
    not declared) does: regression dilution, -6 % over these 20 scenes, against -1.8 % whitened."""
    from kp2d_ros.geometry import bearings, refine_pose_with_structure

    rng = np.random.default_rng(5)
    errors = {"declared": [], "plain": []}
    for _ in range(20):
        R_true, t_true = rot(0.2, 1.0, 0.1), np.array([0.05, 0.0, 1.0])
        X = scene(rng, 300)
        p0 = project(X, CAM) + rng.normal(0, 0.3, (300, 2))
        p1 = project(X, CAM, R_true, t_true) + rng.normal(0, 0.3, (300, 2))
        n0, n1 = normalize_points(p0, CAM), normalize_points(p1, CAM)
        rho_true = 1.0 / np.linalg.norm(X, axis=1)
        rho = rho_true * (1.0 + rng.normal(0, 0.3, 300))
        for name, std in (("declared", 0.3 * rho_true), ("plain", np.zeros(300))):
            R, t = refine_pose_with_structure(R_true, t_true, n0, n1, bearings(n0), rho, std, n1, 1.0 / 500.0)
            errors[name].append(np.linalg.norm(t) / np.linalg.norm(t_true) - 1.0)
            assert rot_err(R, R_true) < 0.1
    declared, plain = np.mean(errors["declared"]), np.mean(errors["plain"])
    assert plain < -0.04  # the dilution the test is about is there
    assert abs(declared) < 0.03 and abs(declared) < 0.4 * abs(plain)


@pytest.mark.parametrize("n, far, masked", [(1500, 20.0, False), (1500, 20.0, True), (300, 20.0, False),
                                            (1500, 1e5, True)])
def test_recover_pose_is_opencvs(n, far, masked):
    """The sampled cheirality vote gives OpenCV's pose, mask and triangulation: many points (the sample decides, then
    the winner triangulates all), few points (OpenCV itself), points near infinity (an undecided vote: OpenCV)."""
    rng = np.random.default_rng(n + int(far))
    p0, p1 = two_views(rng, rot(1.0, -2.0, 0.5), np.array([0.3, 0.0, 1.0]), noise=0.5, n=n, near=3.0, far=far,
                       outliers=0.1)
    n0, n1 = normalize_points(p0, CAM), normalize_points(p1, CAM)
    E, inl = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.USAC_MAGSAC, threshold=1.0 / 500.0)
    mask = inl.ravel().astype(bool) if masked else None
    kw = {"mask": mask.astype(np.uint8).reshape(-1, 1)} if masked else {}
    _, R_cv, t_cv, mask_cv, X_cv = cv2.recoverPose(E[:3], n0, n1, np.eye(3), distanceThresh=1000.0, **kw)
    got = recover_pose(E[:3], n0, n1, 1000.0, mask, points=True)
    front_cv = mask_cv.ravel().astype(bool) & (mask if masked else True)
    assert np.array_equal(got.R, R_cv) and np.array_equal(got.t, t_cv.ravel())
    assert np.array_equal(got.in_front, front_cv)
    assert np.array_equal(got.points[:, got.in_front], X_cv[:, front_cv])
    pose_only = recover_pose(E[:3], n0, n1, 1000.0, mask)
    assert np.array_equal(pose_only.R, got.R) and np.array_equal(pose_only.t, got.t)
    assert pose_only.in_front is None and pose_only.points is None


def test_recover_pose_falls_back_to_opencv_when_the_sample_is_undecided(monkeypatch):
    """A vote whose winner leads by less than a quarter of the sample is left to OpenCV's vote of every point."""
    rng = np.random.default_rng(7)
    p0, p1 = two_views(rng, rot(0.5, 1.0, 0.0), np.array([0.0, 0.0, 1.0]), noise=0.3, n=1200)
    n0, n1 = normalize_points(p0, CAM), normalize_points(p1, CAM)
    E, _ = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.USAC_MAGSAC, threshold=1.0 / 500.0)
    called = []
    real = cv2.recoverPose
    monkeypatch.setattr(geometry.cv2, "recoverPose", lambda *a, **k: called.append(1) or real(*a, **k))
    recover_pose(E[:3], n0, n1, 1000.0)
    assert not called  # decisive: the sample's vote
    monkeypatch.setattr(geometry, "_in_front", lambda R, t, a, b, d: (np.ones(len(a), bool), None))  # a tie
    got = recover_pose(E[:3], n0, n1, 1000.0)
    assert called
    _, R_cv, t_cv, _, _ = real(E[:3], n0, n1, np.eye(3), distanceThresh=1000.0)
    assert np.array_equal(got.R, R_cv) and np.array_equal(got.t, t_cv.ravel())


def test_travel_angle_is_between_the_camera_centres_steps():
    """Relative poses (R, t) map view 0 into view 1 (x1 = R x0 + t): the centre steps by -R^T t. A turn with the same
    step is no change of travel; a sideways step is 90 deg; a zero translation has no direction (NaN)."""
    yaw = cv2.Rodrigues(np.radians([0.0, 20.0, 0.0]))[0]
    forward = np.array([0.0, 0.0, 1.0])
    assert travel_angle_deg(np.eye(3), -forward, yaw, -yaw @ forward) < 1e-6
    assert abs(travel_angle_deg(np.eye(3), -forward, np.eye(3), [-1.0, 0.0, 0.0]) - 90.0) < 1e-6
    assert abs(travel_angle_deg(np.eye(3), -forward, np.eye(3), forward) - 180.0) < 1e-6
    assert np.isnan(travel_angle_deg(np.eye(3), -forward, yaw, np.zeros(3)))
