"""Metric scale for monocular VO: the ground plane, wheel odometry, and the filter that fuses them.

A monocular trajectory has one unknown scale (the first baseline is 1). Two things a ground robot or a
car knows fix it:

* the camera's height above the ground (``geometry.camera_height_m``): :func:`fit_ground_plane` finds the
  road/floor plane among a keyframe pair's triangulated points (RANSAC, gated on the normal's tilt from
  the expected "down" direction) and refits it in the images (the maximum-likelihood plane for pixel
  noise: the transfer error of the homography it induces), and the pair's translation length is
  ``camera_height_m / height`` of that plane in the pair's unit-baseline units;
* the distance its wheels travelled between two frames (:class:`WheelOdometry` buffers ``nav_msgs/Odometry``
  positions, ROS-free, and interpolates them at image stamps).

:class:`MetricScale` is the filter: a 1-D Kalman filter on the logarithm of the scale. The prediction is
the scale propagated through the shared structure (the pipeline's own estimate); each metric
measurement corrects it when it passes the gates (plane tilt, plane flip against the last accepted
plane, innovation against the prediction). No correction exceeds ``pipeline.max_scale_change``. Without
an accepted measurement the propagated scale is kept (``ScaleChoice.source == "propagated"``). Once
``ACQUIRE_COUNT`` recent measurements agree (ground planes: and, weighted by their sigmas, fix the scale within
``ACQUIRE_MAX_LOG_SIGMA``), the trajectory switches from VO units to metres, at their inverse-variance mean
(``ScaleChoice.metric``): the pipeline rescales its state by ``ScaleChoice.rescale`` (the positions so far
and the reference's depths), and ``PoseEstimate.scale_rescaled`` tells consumers that the poses they
already have are to be multiplied by it.

Everything here is numpy; no ROS, no pipeline state.
"""
from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.optimize import least_squares

from kp2d_ros.config import VOConfig
from kp2d_ros.geometry import angle_between_deg, bearings, focal_length, inverse_depths, normalize_points
from kp2d_ros.types import Camera

log = logging.getLogger(__name__)

RANSAC_ITERATIONS = 300
PROCESS_LOG_SIGMA = 0.01  # scale drift the filter assumes per keyframe pair, on top of the pair's own spread
# ... with the backend's window (``backend.metric_priors``), once metric, instead: the window's scale drift per keyframe
# pair (the pair's own spread is then not a drift: MetricScale.choose). KITTI 07 without a metric source (either
# frontend, the default window): the step lengths over 10-frame stretches stay within +-2 % of their mean over 160
# pairs, ~0.3 % per pair as a random walk.
WINDOW_PROCESS_LOG_SIGMA = 0.003
MAX_INCONSISTENT = 5  # measurements rejected in a row for disagreeing with the prediction before one is taken
ACQUIRE_COUNT = 3  # the trajectory turns metric once this many of the last ACQUIRE_WINDOW measurements agree ...
ACQUIRE_WINDOW = 30
ACQUIRE_SPREAD = math.log(1.15)  # ... within this (log) of their median (relative to the propagated scale) ...
# ... and, for ground planes, their inverse-variance mean has at most this log sigma (or ACQUIRE_WINDOW of them agree).
# Three planes of a good fit (6 %) reach it; those of a slow start (short baselines: 15-20 % each) must be more. Before,
# the median of the first three agreeing planes set the unit: on KITTI 07 those of frames 24-26 (sigmas 14-19 %),
# 11 % short, and the frames before and after the acquisition kept that error (docs/results.md, Metric scale).
ACQUIRE_MAX_LOG_SIGMA = 0.04
TRACK_NOISE_PX = 0.5  # noise of the ground corners tracked by Lucas-Kanade (forward-backward checked to 1 px)
MAX_REL_SIGMA = 0.05  # ground points used: inverse depth known within this fraction (a short baseline has none)
MIN_INLIER_FRACTION = 0.5  # of the candidate points (the ground region's) on the plane
IMAGE_GATE = 3.0  # image-space refit: a point is on the plane when its whitened transfer error is within this
IMAGE_ITERATIONS = 3  # image-space refit: (inliers, plane) alternations
HUBER_SCALE = 2.0  # image-space refit: whitened residual where the Huber loss turns linear
MIN_WHEEL_DISTANCE_M = 1e-3  # a wheel step shorter than this cannot scale a translation the views see
WHEEL_ABS_SIGMA_M = 0.005  # absolute resolution of a wheel-odometry distance


# --------------------------------------------------------------------------------------------
# Ground plane
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaneFit:
    """A plane ``normal . X = height`` in camera axes.

    Attributes
    ----------
    normal : (3,) unit normal pointing from the camera towards the plane.
    height : distance of the camera centre from the plane, in the points' units.
    inliers : (N,) bool over the points given to :func:`fit_ground_plane`.
    log_sigma : standard deviation of ``log(height)`` (residual spread over the inliers).
    tilt_deg : angle between ``normal`` and the expected down direction.
    """

    normal: np.ndarray
    height: float
    inliers: np.ndarray
    log_sigma: float
    tilt_deg: float


@dataclass(frozen=True)
class PlaneResult:
    """:func:`fit_ground_plane`'s answer: ``plane`` (None when rejected) and ``reason`` (why; "" when found)."""

    plane: PlaneFit | None
    reason: str = ""


def _inverse_variance_mean(values: list[tuple[float, float]]) -> tuple[float, float]:
    """The inverse-variance weighted mean of ``values`` ((value, sigma) pairs; sigmas floored at 1e-9) and its
    sigma; (nan, inf) for none."""
    if not values:
        return math.nan, math.inf
    w = np.array([1.0 / max(sig, 1e-9) ** 2 for _, sig in values])
    return float(np.dot(w, [v for v, _ in values]) / w.sum()), float(1.0 / math.sqrt(w.sum()))


@dataclass(frozen=True)
class TwoViewTracks:
    """The two-view measurements behind a :class:`GroundObservation`: what the image-space plane fit needs.

    Attributes
    ----------
    ref, cur : (N, 2) normalised image coordinates of the points in the reference and the current view.
    R, t : relative pose reference -> current (``x_cur = R x_ref + t``, ``|t| = 1``).
    noise : standard deviation of each image coordinate, in normalised units (pixels / focal length).
    """

    ref: np.ndarray
    cur: np.ndarray
    R: np.ndarray
    t: np.ndarray
    noise: float


@dataclass(frozen=True)
class GroundObservation:
    """Points of a keyframe pair that may lie on the ground, as the pair triangulated them.

    Attributes
    ----------
    rays : (N, 3) unit bearings in the reference camera's axes.
    inv_depth : (N,) inverse distances along them (unit baseline).
    inv_depth_sigma : (N,) their standard deviations.
    views : the image measurements they were triangulated from (None: only the 3-D points are known, and
        the plane is fitted in 3-D).
    """

    rays: np.ndarray
    inv_depth: np.ndarray
    inv_depth_sigma: np.ndarray
    views: TwoViewTracks | None = None

    @classmethod
    def from_points(cls, points: np.ndarray, rel_sigma: float | np.ndarray = 0.01) -> "GroundObservation":
        """From (N, 3) points with a relative distance error (tests, other triangulations)."""
        P = np.asarray(points, float).reshape(-1, 3)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.linalg.norm(P, axis=1)
            rho = 1.0 / d
            return cls(P / d[:, None], rho, np.abs(rho * rel_sigma) + 0.0 * rho)

    @classmethod
    def from_views(cls, views: TwoViewTracks) -> "GroundObservation":
        """Triangulate two-view correspondences (unit baseline), keeping them for the image-space fit."""
        with np.errstate(divide="ignore", invalid="ignore"):
            rho0, _, sin0, _ = inverse_depths(views.ref, views.cur, views.R, views.t)
            sigma = views.noise / sin0
        good = np.isfinite(rho0) & np.isfinite(sigma) & np.isfinite(views.ref).all(axis=1) & \
            np.isfinite(views.cur).all(axis=1)
        kept = TwoViewTracks(views.ref[good], views.cur[good], views.R, views.t, views.noise)
        return cls(bearings(views.ref[good]), rho0[good], sigma[good], kept)

    def __len__(self) -> int:
        return int(self.rays.shape[0])


def _refit(points: np.ndarray, down: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane through ``points`` (total least squares): (normal towards the plane, height)."""
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    n = vt[-1]
    if np.dot(n, down) < 0:
        n = -n
    return n, float(np.dot(n, c))


def _fit_points(points: np.ndarray, cfg: VOConfig, down: np.ndarray | None = None,
                seed: int = 0) -> PlaneResult:
    """The ground plane among ``points`` (camera axes, any common unit), or why there is none.

    Candidates are finite points in front of the camera whose ray points at least 2 degrees below the
    horizon of the expected plane (``down``). RANSAC over plane hypotheses whose normal lies within
    ``geometry.ground_max_tilt_deg`` of ``down``; a point is an inlier when its distance to the plane is
    within ``geometry.ground_inlier_ratio`` of the camera height (the triangulation error of a point grows
    with its depth, so a relative threshold keeps near and far road alike). The best hypothesis is refitted
    by total least squares on its inliers, twice.

    Gates (each gives the ``reason``): at least ``geometry.ground_min_inliers`` candidates and inliers,
    inliers at least half of the candidates, the refitted normal's tilt within the limit.

    Parameters
    ----------
    points : (N, 3) triangulated points.
    down : (3,) expected direction of the ground from the camera (camera axes); default the optical +y.
    seed : RANSAC's random seed (deterministic results).
    """
    g = cfg.geometry
    down = np.array([0.0, 1.0, 0.0]) if down is None else np.asarray(down, float) / np.linalg.norm(down)
    pts = np.asarray(points, float).reshape(-1, 3)
    dist = np.linalg.norm(pts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = (pts @ down) / dist
    cand = np.isfinite(pts).all(axis=1) & (pts[:, 2] > 0) & (below > math.sin(math.radians(2.0)))
    P = pts[cand]
    n_cand = len(P)
    if n_cand < max(g.ground_min_inliers, 3):
        return PlaneResult(None, f"{n_cand} points below the horizon (need {g.ground_min_inliers})")
    rng = np.random.default_rng(seed)
    cos_tilt = math.cos(math.radians(g.ground_max_tilt_deg))
    best_n, best_count, best_inl = None, 0, None
    for _ in range(RANSAC_ITERATIONS):
        a, b, c = P[rng.choice(n_cand, 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        if np.dot(n, down) < 0:
            n = -n
        if np.dot(n, down) < cos_tilt:
            continue
        h = float(np.dot(n, a))
        if h <= 0:
            continue
        inl = np.abs(P @ n - h) <= g.ground_inlier_ratio * h
        count = int(inl.sum())
        if count > best_count:
            best_n, best_count, best_inl = n, count, inl
    if best_n is None:
        return PlaneResult(None, f"no plane within {g.ground_max_tilt_deg:g} deg of the expected ground normal")
    inl = best_inl
    n, h = best_n, 0.0
    for _ in range(2):
        if inl.sum() < 3:
            break
        n, h = _refit(P[inl], down)
        if h <= 0:
            return PlaneResult(None, "the fitted plane passes through or above the camera")
        inl = np.abs(P @ n - h) <= g.ground_inlier_ratio * h
    count = int(inl.sum())
    tilt = angle_between_deg(n, down)
    if count < g.ground_min_inliers:
        return PlaneResult(None, f"plane with {count} inliers (need {g.ground_min_inliers})")
    if count < MIN_INLIER_FRACTION * n_cand:
        return PlaneResult(None, f"plane with {count} of {n_cand} points below the horizon (need half)")
    if tilt > g.ground_max_tilt_deg:
        return PlaneResult(None, f"plane tilted {tilt:.1f} deg from the expected ground normal "
                                 f"(geometry.ground_max_tilt_deg {g.ground_max_tilt_deg:g})")
    r = P[inl] @ n - h
    h = float(h + np.median(r))  # robust offset
    mad = float(np.median(np.abs(r - np.median(r))))
    log_sigma = 1.2533 * 1.4826 * mad / math.sqrt(count) / h
    mask = np.zeros(len(pts), bool)
    mask[np.flatnonzero(cand)[inl]] = True
    return PlaneResult(PlaneFit(normal=n, height=h, inliers=mask, log_sigma=float(log_sigma), tilt_deg=tilt))


def _transfer_residuals(m: np.ndarray, views: TwoViewTracks) -> np.ndarray:
    """(N, 2) whitened transfer errors of the plane ``m . X = 1`` (``m = normal / height``, reference axes).

    The plane induces the homography ``H = R + t m^T`` from the reference view to the current one. Each
    point's error ``cur - pi(H ref)`` has the covariance ``noise^2 (I + J J^T)`` (``J``: the transfer's
    Jacobian in the reference point; both views equally noisy), by which it is whitened: the first-order
    maximum-likelihood (Sampson) error of the plane for pixel noise in both views.
    """
    H = views.R + np.outer(views.t, m)
    p = np.c_[views.ref, np.ones(len(views.ref))] @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p[:, :2] / p[:, 2:]
        J = (H[None, :2, :2] - q[:, :, None] * H[None, None, 2, :2]) / p[:, 2, None, None]
        S = np.eye(2)[None] + J @ J.transpose(0, 2, 1)
        r = views.cur - q
        a = np.sqrt(S[:, 0, 0])
        b = S[:, 0, 1] / a
        c = np.sqrt(S[:, 1, 1] - b * b)
        w0 = r[:, 0] / a
        w = np.c_[w0, (r[:, 1] - b * w0) / c] / views.noise
    return np.where(np.isfinite(w), w, 1e6)


def _rotated(views: TwoViewTracks, omega: np.ndarray) -> TwoViewTracks:
    """``views`` with the pair's rotation corrected by the rotation vector ``omega`` (applied after it)."""
    return TwoViewTracks(views.ref, views.cur, cv2.Rodrigues(np.asarray(omega, float).reshape(3, 1))[0] @ views.R,
                         views.t, views.noise)


def _refit_in_image(obs: GroundObservation, plane: PlaneFit, down: np.ndarray, cfg: VOConfig
                    ) -> PlaneFit | str:
    """The plane that best explains the ground points' image motion (see :func:`fit_ground_plane`).

    Parameters: ``m = normal / height`` and a small correction ``omega`` of the pair's rotation (the
    essential matrix's rotation is not exact, and a rotation error moves every point by the same angle,
    which the plane alone would absorb by tilting and changing its height)."""
    v = obs.views
    rho = np.asarray(obs.inv_depth, float)
    sig = np.asarray(obs.inv_depth_sigma, float)
    x = np.r_[plane.normal / plane.height, 0.0, 0.0, 0.0]
    sel = plane.inliers.copy()
    below = obs.rays @ down > math.sin(math.radians(2.0))
    fit = None
    for i in range(IMAGE_ITERATIONS + 1):  # fit, then (select, fit) IMAGE_ITERATIONS times
        if i > 0:
            pred = obs.rays @ x[:3]  # the plane's inverse depth along each ray: free of the points' own noise
            with np.errstate(invalid="ignore"):
                known = below & np.isfinite(rho) & (rho > 0) & (pred > 0) & (sig <= MAX_REL_SIGMA * pred)
            sel = known & (np.sum(_transfer_residuals(x[:3], _rotated(v, x[3:])) ** 2, axis=1) <= IMAGE_GATE ** 2)
        if sel.sum() < 6:
            fit = None
            break
        sub = TwoViewTracks(v.ref[sel], v.cur[sel], v.R, v.t, v.noise)
        scale = np.r_[np.full(3, np.linalg.norm(x[:3])), np.full(3, 10.0 * v.noise)]
        fit = least_squares(lambda y: _transfer_residuals(y[:3], _rotated(sub, y[3:])).ravel(), x, loss="huber",
                            f_scale=HUBER_SCALE, x_scale=scale)
        x = fit.x
    count = int(sel.sum())
    if fit is None or count < cfg.geometry.ground_min_inliers:
        return f"image-space plane with {count} inliers (need {cfg.geometry.ground_min_inliers})"
    m = x[:3]
    norm = float(np.linalg.norm(m))
    if not (np.all(np.isfinite(x)) and norm > 0 and np.dot(m, down) > 0):
        return "the image-space plane passes through or above the camera"
    n, h = m / norm, 1.0 / norm
    # covariance from the Gauss-Newton Hessian (rotation marginalised), inflated by the residuals' spread
    # where they exceed the assumed noise
    spread = max(1.0, float(np.sum(fit.fun ** 2)) / max(len(fit.fun) - 6, 1))
    try:
        C = np.linalg.inv(fit.jac.T @ fit.jac)[:3, :3] * spread
    except np.linalg.LinAlgError:
        return "image-space plane: singular fit"
    g = -m / norm ** 2  # d log(h) / dm
    log_sigma = float(math.sqrt(max(float(g @ C @ g), 0.0)))
    return PlaneFit(normal=n, height=h, inliers=sel, log_sigma=log_sigma, tilt_deg=angle_between_deg(n, down))


def fit_ground_plane(obs: GroundObservation, cfg: VOConfig, down: np.ndarray | None = None,
                     seed: int = 0) -> PlaneResult:
    """The ground plane among a pair's triangulated points, or why there is none.

    Only points whose inverse depth is known within ``MAX_REL_SIGMA`` take part (a short baseline gives
    none: no plane rather than a poor one); :func:`_fit_points` finds the plane among them in 3-D (RANSAC,
    the gates). When the observation carries its two views (``obs.views``, the pipeline's does), that plane
    is refitted in the images: the plane ``(normal, height)``, with a small correction of the pair's rotation,
    minimises the points' whitened transfer error through the homography it induces
    (:func:`_transfer_residuals`, Huber loss), the maximum-likelihood plane for pixel noise. A 3-D fit weighs the points wrongly: a point's depth error grows with the square of its
    depth, so far points, which say little, dominate it. The inliers are then the points within
    ``IMAGE_GATE`` of the plane's transfer whose inverse depth the plane predicts within ``MAX_REL_SIGMA``
    (selected on the plane's prediction, not on the points' own noisy depth: no selection bias; farther
    points cannot tell the road from a car's bumper above it), alternated ``IMAGE_ITERATIONS`` times.
    """
    down = np.array([0.0, 1.0, 0.0]) if down is None else np.asarray(down, float) / np.linalg.norm(down)
    rho = np.asarray(obs.inv_depth, float).reshape(-1)
    sig = np.asarray(obs.inv_depth_sigma, float).reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = np.isfinite(rho) & np.isfinite(sig) & (rho > 0) & (sig <= MAX_REL_SIGMA * rho)
        points = np.asarray(obs.rays, float).reshape(-1, 3)[good] / rho[good, None]
    res = _fit_points(points, cfg, down, seed)
    if res.plane is None:
        return res
    mask = np.zeros(len(rho), bool)
    mask[np.flatnonzero(good)[res.plane.inliers]] = True
    plane = replace(res.plane, inliers=mask)
    if obs.views is None:
        return PlaneResult(plane)
    refined = _refit_in_image(obs, plane, down, cfg)
    if isinstance(refined, str):
        return PlaneResult(None, refined)
    if refined.tilt_deg > cfg.geometry.ground_max_tilt_deg:
        return PlaneResult(None, f"plane tilted {refined.tilt_deg:.1f} deg from the expected ground normal "
                                 f"(geometry.ground_max_tilt_deg {cfg.geometry.ground_max_tilt_deg:g})")
    return PlaneResult(refined)


def ground_roi(camera: Camera, down: np.ndarray, max_distance_heights: float = 12.0,
               half_width_heights: float = 1.2) -> np.ndarray:
    """(H, W) uint8 mask of the pixels whose rays would hit the expected ground (``down``, camera axes)
    within ``max_distance_heights`` camera heights ahead and ``half_width_heights`` to either side: the
    road or floor in front of a level camera."""
    W, H = camera.width, camera.height
    step = 4
    us, vs = np.meshgrid(np.arange(0, W, step, dtype=np.float64), np.arange(0, H, step, dtype=np.float64))
    n = normalize_points(np.c_[us.ravel(), vs.ravel()], camera)
    rays = np.c_[n, np.ones(len(n))]
    down = np.asarray(down, float) / np.linalg.norm(down)
    d = rays @ down  # > 0: the ray descends; the ground point is rays * 1 / d (unit height)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = rays / d[:, None]
        forward = ground - np.outer(ground @ down, down)  # horizontal offset from the camera
        lateral = np.abs(forward[:, 0])
        dist = np.linalg.norm(forward, axis=1)
    ok = (d > 0) & (dist <= max_distance_heights) & (lateral <= half_width_heights)
    small = ok.reshape(us.shape).astype(np.uint8) * 255
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST)


def track_ground_points(ref_image: np.ndarray, cur_image: np.ndarray, roi: np.ndarray, max_points: int = 400,
                        homography: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Corners in ``roi`` of the reference image tracked into the current one (pyramidal Lucas-Kanade,
    forward-backward checked to 1 px). The frontend's features are sparse on a textureless road; the
    ground plane needs points there. Returns (P, 2) float32 pixel positions in both images.

    ``homography``: a predicted (3, 3) pixel homography reference -> current (the ground plane's). The
    reference image is then warped by it first and each corner tracked from its predicted position in the
    warped image: the road's patches then look alike in both, where Lucas-Kanade's translational model
    otherwise under-estimates the large, zooming flows of the near road (on KITTI 07 the plane fitted to
    them came out 6-9 % too high)."""
    empty = np.zeros((0, 2), np.float32)
    if ref_image is None or cur_image is None or ref_image.shape != cur_image.shape or ref_image.shape != roi.shape:
        return empty, empty
    p0 = cv2.goodFeaturesToTrack(ref_image, max_points, 0.001, 7, mask=roi, blockSize=7)
    if p0 is None or len(p0) < 3:
        return empty, empty
    h, w = ref_image.shape
    lk = dict(winSize=(21, 21), maxLevel=4, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    source, start = ref_image, p0
    if homography is not None:
        source = cv2.warpPerspective(ref_image, homography, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        start = cv2.perspectiveTransform(p0.reshape(-1, 1, 2).astype(np.float64), homography).astype(np.float32)
        inside = np.isfinite(start).all(axis=(1, 2)) & (start[:, 0, 0] >= 0) & (start[:, 0, 0] <= w - 1) & \
            (start[:, 0, 1] >= 0) & (start[:, 0, 1] <= h - 1)
        p0, start = p0[inside], start[inside]
        if len(p0) < 3:
            return empty, empty
    p1, st, _ = cv2.calcOpticalFlowPyrLK(source, cur_image, start, start.copy(),
                                         flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
    pb, st_b, _ = cv2.calcOpticalFlowPyrLK(cur_image, source, p1, start.copy(),
                                           flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
    ok = (st.ravel() == 1) & (st_b.ravel() == 1) & (np.linalg.norm((pb - start).reshape(-1, 2), axis=1) < 1.0)
    q = p1.reshape(-1, 2)
    ok &= (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
    return p0.reshape(-1, 2)[ok].astype(np.float32), q[ok].astype(np.float32)


class GroundPoints:
    """The ground region's points of a keyframe pair, triangulated with the pair's motion.

    Corners in :func:`ground_roi` (cached per camera) are tracked from the reference image into the
    current one (:func:`track_ground_points`) and triangulated with the pair's (R, unit t); a plane is
    fitted to them in 3-D, and the corners are tracked again along the homography of that plane (the
    near road's zooming flows, which plain Lucas-Kanade under-estimates, become small shifts). The
    points are returned as rays and inverse depths in the reference camera's axes (unit baseline), with
    their standard deviations at ``TRACK_NOISE_PX`` of tracking noise (the tracker's, whatever the
    frontend's RANSAC threshold), and the two views' normalised points for the image-space plane fit.
    (With lens distortion the pixel homography is only approximate; it is a starting point for the tracker.)
    """

    def __init__(self, cfg: VOConfig, predict: bool = True):
        self.cfg = cfg
        self.predict = predict  # track again along the first tracks' plane (False: plain tracking, diagnostics)
        self._roi: tuple[tuple, np.ndarray] | None = None

    def __call__(self, ref_image: np.ndarray | None, cur_image: np.ndarray | None, camera: Camera, R: np.ndarray,
                 t: np.ndarray) -> GroundObservation:
        empty = GroundObservation(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        if ref_image is None or cur_image is None:
            return empty
        down = ground_direction(self.cfg)
        key = (camera.width, camera.height, tuple(camera.K.ravel()), tuple(camera.dist.ravel()), camera.model,
               tuple(down))
        if self._roi is None or self._roi[0] != key:
            self._roi = (key, ground_roi(camera, down))
        R, t = np.asarray(R, float), np.asarray(t, float)
        obs, homography = empty, None
        for _ in range(2):  # track; then again along the homography of the plane the first tracks show
            kp0, kp1 = track_ground_points(ref_image, cur_image, self._roi[1], homography=homography)
            if len(kp0) < 3:
                return obs
            n0, n1 = normalize_points(kp0, camera), normalize_points(kp1, camera)
            obs = GroundObservation.from_views(TwoViewTracks(n0, n1, R, t, TRACK_NOISE_PX / focal_length(camera)))
            if homography is not None or not self.predict:
                break
            first = fit_ground_plane(GroundObservation(obs.rays, obs.inv_depth, obs.inv_depth_sigma), self.cfg, down)
            if first.plane is None:
                break
            K = camera.K
            homography = K @ (R + np.outer(t, first.plane.normal / first.plane.height)) @ np.linalg.inv(K)
        return obs


def ground_direction(cfg: VOConfig) -> np.ndarray:
    """Expected direction of the ground in camera axes: the base's -z seen from the camera
    (``ros.camera_to_base``; REP-103 base: z up). The default extrinsic gives the optical +y."""
    x, y, z, w = cfg.ros.camera_to_base[3:7]
    # rotation matrix of the unit quaternion (x, y, z, w): R_base_cam
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return R.T @ np.array([0.0, 0.0, -1.0])


# --------------------------------------------------------------------------------------------
# Wheel odometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Travel:
    """Distance travelled between two stamps (``distance`` None when unknown, with the ``reason``)."""

    distance: float | None
    reason: str = ""


class WheelOdometry:
    """Positions from a wheel-odometry source, interpolated at image stamps (ROS-free).

    :meth:`add` takes (stamp, position); :meth:`travelled` gives the path length between two stamps:
    the polyline through the samples between them, with linearly interpolated ends. A sample not after
    the last one restarts the buffer (a source that jumped back in time), as does a position jump faster
    than ``max_speed_mps`` (an odometry reset). A stamp later than the last sample by more than
    ``max_age_s`` is stale: unknown.
    """

    def __init__(self, max_age_s: float = 0.5, max_speed_mps: float = 50.0, capacity: int = 2000):
        self.max_age_s = max_age_s
        self.max_speed_mps = max_speed_mps
        self.capacity = capacity
        self.stamps: list[float] = []
        self.positions: list[np.ndarray] = []
        self.cumulative: list[float] = []  # path length from the first sample
        self.restarts = 0

    def clear(self) -> None:
        self.stamps.clear()
        self.positions.clear()
        self.cumulative.clear()

    def add(self, stamp: float, position) -> str:
        """Store one sample; returns a warning ("" when none): a rejected or restarting sample."""
        p = np.asarray(position, float).reshape(3)
        if not (math.isfinite(stamp) and np.all(np.isfinite(p))):
            return "wheel odometry sample with a non-finite stamp or position ignored"
        warning = ""
        if self.stamps:
            dt = stamp - self.stamps[-1]
            if dt <= 0:
                self.clear()
                self.restarts += 1
                warning = f"wheel odometry jumped back {-dt:.3f} s in time: its history restarts"
            else:
                step = float(np.linalg.norm(p - self.positions[-1]))
                if step > self.max_speed_mps * dt:
                    self.clear()
                    self.restarts += 1
                    warning = (f"wheel odometry position jumped {step:.2f} m in {dt:.3f} s (a reset?): "
                               "its history restarts")
        self.cumulative.append(self.cumulative[-1] + float(np.linalg.norm(p - self.positions[-1]))
                               if self.stamps else 0.0)
        self.stamps.append(float(stamp))
        self.positions.append(p)
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.positions[0], self.cumulative[0]
        return warning

    def _length_at(self, t: float) -> float:
        i = bisect.bisect_right(self.stamps, t)
        if i == 0:
            return self.cumulative[0]
        if i == len(self.stamps):
            return self.cumulative[-1]
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        a = (t - t0) / (t1 - t0)
        return self.cumulative[i - 1] + a * (self.cumulative[i] - self.cumulative[i - 1])

    def travelled(self, t0: float, t1: float) -> Travel:
        """Path length between stamps ``t0 < t1`` (metres), or why it is unknown."""
        if not self.stamps:
            return Travel(None, "no wheel odometry received")
        if not (math.isfinite(t0) and math.isfinite(t1)) or t1 <= t0:
            return Travel(None, "image stamps not increasing")
        if t0 < self.stamps[0] - self.max_age_s:
            return Travel(None, "wheel odometry starts after the previous image")
        if t1 > self.stamps[-1] + self.max_age_s:
            return Travel(None, f"wheel odometry stale ({t1 - self.stamps[-1]:.2f} s old)")
        return Travel(max(0.0, self._length_at(t1) - self._length_at(t0)))


# --------------------------------------------------------------------------------------------
# The filter
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleChoice:
    """One pair's translation length and where it came from.

    Attributes
    ----------
    scale : length of the pair's unit translation (metres once ``metric``).
    log_sigma : standard deviation of ``log(scale)``.
    source : ``propagated`` (the shared structure or the speed prior: no metric measurement used),
        ``ground_plane``, ``wheel_odometry``, or both joined by ``+``.
    metric : the trajectory is in metres (a metric measurement was accepted at some pair).
    notes : why a configured metric source was not used at this pair ("" when it was).
    plane : the accepted ground plane (None when none).
    rescale : metres per trajectory unit found at the acquisition (the pair that turns the trajectory
        metric; 1.0 at every other pair): the caller rescales its state (positions, depths) by it, so that
        the whole trajectory is in metres, not only the steps after it.
    measured : (metres, log sigma) of the pair's length from the metric measurements it used alone (their
        inverse-variance mean in log; without the propagated scale), None when it used none: the backend's
        distance prior between the pair's keyframes.
    window_rescale : with the backend's window (``backend.metric_priors``), once metric: the factor by which the
        measurements corrected the window's scale (the part of the pair's correction that is not its own
        two-view spread); the pipeline scales the window behind the pair by it. 1.0 otherwise.
    """

    scale: float
    log_sigma: float
    source: str
    metric: bool
    notes: str = ""
    plane: PlaneFit | None = None
    rescale: float = 1.0
    measured: tuple[float, float] | None = None
    window_rescale: float = 1.0


class MetricScale:
    """Kalman filter on the log scale of the trajectory against metric measurements.

    State: whether the trajectory is metric, the variance of the reference keyframe's log scale, the last
    accepted plane normal and how many measurements in a row disagreed with the prediction. Only
    keyframe pairs (``commit``) change it; other frames get the same answer without it.
    """

    def __init__(self, cfg: VOConfig):
        self.cfg = cfg
        self._window_follows = cfg.backend.window > 0 and cfg.backend.metric_priors
        self.reset()

    def reset(self) -> None:
        self.metric = False
        self.log_var = 0.0
        self.last_normal: np.ndarray | None = None
        self.inconsistent = 0
        self.plane_rejections = 0
        self.plane_accepted = 0
        self.since_plane = 0  # keyframe pairs since the last accepted plane (the flip gate expires)
        self.last_notes = ""
        # before the first acquisition: (log(measured / propagated), its log sigma) of the last pairs' measurements
        self.pending: list[tuple[float, float]] = []
        self._warned: set[str] = set()

    @property
    def camera_height(self) -> float | None:
        """The configured camera height (metres), None when off or invalid."""
        h = self.cfg.geometry.camera_height_m
        if not (isinstance(h, (int, float)) and math.isfinite(h)) or h <= 0:
            if h != 0 and "height" not in self._warned:
                self._warned.add("height")
                log.warning("geometry.camera_height_m = %r is not a positive height: ground-plane scale off", h)
            return None
        return float(h)

    @property
    def active(self) -> bool:
        """A metric source is configured (the camera height; wheel distances arrive per frame)."""
        return self.camera_height is not None

    def _plane_measurement(self, points: GroundObservation | None) -> tuple[float, float, PlaneFit] | str:
        """(scale, log sigma, plane) from the ground plane, or why not."""
        H = self.camera_height
        if len(points) == 0:
            return "ground plane: no ground points tracked"
        res = fit_ground_plane(points, self.cfg, ground_direction(self.cfg))
        if res.plane is None:
            return f"ground plane rejected: {res.reason}"
        p = res.plane
        if self.last_normal is not None and self.since_plane < MAX_INCONSISTENT:
            change = angle_between_deg(p.normal, self.last_normal)
            if change > self.cfg.geometry.ground_max_normal_change_deg:
                return (f"ground plane rejected: normal flipped {change:.1f} deg since the last accepted plane "
                        f"(geometry.ground_max_normal_change_deg {self.cfg.geometry.ground_max_normal_change_deg:g})")
        log_sigma = math.hypot(p.log_sigma, self.cfg.geometry.ground_scale_sigma)
        return H / p.height, log_sigma, p

    def _wheel_measurement(self, distance: float | None) -> tuple[float, float] | str | None:
        if distance is None:
            return None
        if not math.isfinite(distance) or distance < 0:
            return f"wheel odometry: invalid distance {distance!r}"
        if distance < MIN_WHEEL_DISTANCE_M:
            return f"wheel odometry: {distance:.4f} m travelled while the views show a translation (zero-length step)"
        rel = self.cfg.geometry.odometry_scale_sigma
        return distance, math.hypot(rel, WHEEL_ABS_SIGMA_M / distance)

    def choose(self, propagated: float | None, log_sigma: float, points: GroundObservation | None = None,
               distance: float | None = None, commit: bool = True) -> ScaleChoice:
        """This pair's translation length.

        Parameters
        ----------
        propagated : the pipeline's length for the pair's unit translation (shared structure or speed
            prior; trajectory units), None for the first pair (unit baseline).
        log_sigma : its standard deviation of the log (0 for the first pair).
        points : the pair's triangulated points in the reference camera (unit baseline), for the ground
            plane; None without.
        distance : metres travelled between the reference and this frame (wheel odometry); None without.
        commit : a keyframe pair: update the filter's state.
        """
        max_log = math.log(self.cfg.pipeline.max_scale_change)
        prior = 1.0 if propagated is None or not (propagated > 0 and math.isfinite(propagated)) else propagated
        log_s = math.log(prior)
        pair_var = (log_sigma if math.isfinite(log_sigma) else max_log / 2) ** 2
        # With the backend's window following the corrections (the pipeline's _rescale_behind) the pair's log length
        # is two errors: the window's scale x, carried from pair to pair and drifting as the window's does, and the
        # pair's own n (its two-view spread), new at every pair. A measurement corrects both (joint: P); the window
        # takes x's correction (ScaleChoice.window_rescale), the pair both. Without a window every pair's spread is a
        # drift of the chain, and the state is the pair's scale.
        joint = self.metric and self._window_follows and propagated is not None
        P = np.diag([self.log_var + WINDOW_PROCESS_LOG_SIGMA ** 2, pair_var]) if joint else None
        shift = 0.0  # the correction of x (log)
        if joint:
            var = float(P.sum())
        else:
            var = self.log_var + pair_var
            if propagated is not None:
                var += PROCESS_LOG_SIGMA ** 2
        measurements: list[tuple[str, float, float]] = []
        notes: list[str] = []
        plane = None
        if self.active and points is not None:  # (the pipeline measures the plane at keyframe pairs only)
            m = self._plane_measurement(points)
            if isinstance(m, str):
                notes.append(m)
            else:
                plane = m[2]
                measurements.append(("ground_plane", m[0], m[1]))
        w = self._wheel_measurement(distance)
        if isinstance(w, str):
            notes.append(w)
        elif w is not None:
            measurements.append(("wheel_odometry", w[0], w[1]))
        metric, used, inconsistent, pending = self.metric, [], self.inconsistent, list(self.pending)
        accepted: list[tuple[float, float]] = []  # (log metres, sigma) of the used measurements
        rescale = 1.0
        for name, s_m, sig_m in measurements:
            if not metric:  # acquisition, at a keyframe pair, once ACQUIRE_COUNT recent measurements agree
                pending = (pending + [(math.log(s_m) - log_s, sig_m)])[-ACQUIRE_WINDOW:]
                med = float(np.median([v for v, _ in pending]))
                agree = [(v, sig) for v, sig in pending if abs(v - med) <= ACQUIRE_SPREAD]
                offset, spread = _inverse_variance_mean(agree)
                # the ground planes' sigmas are calibrated fits; a wheel distance's (its resolution over one short
                # step) is not, so wheels go metric on ACQUIRE_COUNT agreeing steps, as before
                unsure = name == "ground_plane" and spread > ACQUIRE_MAX_LOG_SIGMA and len(agree) < ACQUIRE_WINDOW
                if not commit or len(agree) < ACQUIRE_COUNT or unsure:
                    within = (f" fixing the scale within {100 * spread:.3g} % (need {100 * ACQUIRE_MAX_LOG_SIGMA:g} %)"
                              if name == "ground_plane" else "")
                    notes.append(f"{name}: {len(agree)} agreeing measurement(s){within}, need {ACQUIRE_COUNT} to go "
                                 f"metric")
                    continue
                log_s, var, metric, rescale = log_s + offset, spread ** 2, True, math.exp(offset)
                used.append(name)
                accepted.append((math.log(s_m), sig_m))
                continue
            e = math.log(s_m) - log_s
            gate = 3.0 * math.sqrt(var + sig_m ** 2)
            if abs(e) > gate and inconsistent < MAX_INCONSISTENT:
                notes.append(f"{name}: scale {s_m:.4g} disagrees with the propagated {math.exp(log_s):.4g} "
                             f"(x{math.exp(abs(e)):.2f}): not used")
                inconsistent += 1
                if name == "ground_plane":
                    plane = None
                continue
            if joint:
                K = P.sum(axis=1) / (var + sig_m ** 2)  # (x, n) gains of the measurement of x + n
                full = float(K.sum() * e)
                step = float(np.clip(full, -max_log, max_log))
                log_s += step
                shift += float(K[0] * e) * (step / full if full != 0.0 else 1.0)  # x's share of the (bounded) step
                P = P - np.outer(K, K) * (var + sig_m ** 2)
                var = float(P.sum())
            else:
                k = var / (var + sig_m ** 2)
                log_s += float(np.clip(k * e, -max_log, max_log))
                var = (1.0 - k) * var
            inconsistent = 0
            used.append(name)
            accepted.append((math.log(s_m), sig_m))
        scale = math.exp(log_s)
        if not (math.isfinite(scale) and scale > 0):  # never reached with finite inputs; never publish a NaN
            scale, used, notes = prior, [], notes + ["scale filter produced a non-finite scale: propagated kept"]
        measured = None
        if accepted and used:
            mean, sigma = _inverse_variance_mean(accepted)
            measured = (math.exp(mean), sigma)
        choice = ScaleChoice(scale=scale, log_sigma=math.sqrt(max(var, 0.0)),
                             source="+".join(used) if used else "propagated", metric=metric,
                             notes="; ".join(notes), plane=plane if "ground_plane" in used else None,
                             rescale=rescale, measured=measured, window_rescale=math.exp(shift))
        if commit:
            self.metric, self.inconsistent, self.pending = metric, inconsistent, pending
            self.log_var = float(P[0, 0]) if joint else var
            if choice.plane is not None:
                self.last_normal = choice.plane.normal
                self.plane_accepted += 1
                self.since_plane = 0
            elif self.active and points is not None:
                self.plane_rejections += 1
                self.since_plane += 1
            self.last_notes = choice.notes
        return choice
