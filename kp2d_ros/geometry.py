"""Two-view geometry: point normalisation, essential matrix and pose recovery, SE(3) helpers, scale.

Conventions: a relative pose (R, t) maps camera-0 coordinates to camera-1 coordinates,
``x1 = R x0 + t``; absolute poses are 4x4 ``T_world_cam`` (camera-to-world).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import minimize_scalar

from kp2d_ros.config import GeometryConfig
from kp2d_ros.errors import ConfigError
from kp2d_ros.types import Camera, TwoViewGeometry

_METHODS = {
    "magsac": cv2.USAC_MAGSAC,
    "ransac": cv2.RANSAC,
    "prosac": cv2.USAC_PROSAC,
    "lmeds": cv2.LMEDS,
}


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------
# Fixed-point iterations of cv2.undistortPoints: its default 5 leave up to 7e-4 (0.2 px at f = 300)
# near the border of a strong rational_polynomial lens, 20 converge to < 1e-9 (about 1 ms per
# 2000 points).
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT, 20, 0.0)


def normalize_points(pts: np.ndarray, camera: Camera) -> np.ndarray:
    """Undistorted normalised image coordinates (x/z, y/z) of pixel points.

    Parameters
    ----------
    pts : (N, 2) pixel coordinates.
    camera : intrinsics and distortion (``equidistant``: OpenCV's fisheye model, else
        plumb_bob / rational_polynomial).

    Returns
    -------
    (N, 2) float64.
    """
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    if pts.shape[0] == 0:
        return pts.copy()
    if not camera.has_distortion:
        K = camera.K
        return np.stack([(pts[:, 0] - K[0, 2]) / K[0, 0], (pts[:, 1] - K[1, 2]) / K[1, 1]], axis=1)
    if camera.model == "equidistant":
        return cv2.fisheye.undistortPoints(pts.reshape(-1, 1, 2), camera.K, camera.dist[:4]).reshape(-1, 2)
    K = camera.K
    if K[0, 1] == 0 and np.all(camera.dist[2:4] == 0) and np.all(camera.dist[5:] == 0):
        # radial only (k1 k2 k3: the backend's self-calibrated lens): the radius solved directly
        xd = np.stack([(pts[:, 0] - K[0, 2]) / K[0, 0], (pts[:, 1] - K[1, 2]) / K[1, 1]], axis=1)
        k = camera.dist[[0, 1, 4]] if len(camera.dist) > 4 else np.append(camera.dist[:2], 0.0)
        out = _undistort_radial(xd, k)
        if out is not None:
            return out
    return cv2.undistortPoints(pts.reshape(-1, 1, 2), camera.K, camera.dist, criteria=UNDISTORT_CRITERIA).reshape(-1, 2)


def _undistort_radial(xd: np.ndarray, k: np.ndarray, iterations: int = 10) -> np.ndarray | None:
    """(N, 2) distorted normalised points of a radial-only lens ``x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6)`` ->
    (N, 2) undistorted, the radius solved directly: a k1-only lens (the backend's self-calibrated one on a rectified
    camera) in closed form (:func:`_radius_k1`), others by Newton's method from ``r = r_d``. Both give the root
    cv2.undistortPoints' fixed-point iteration converges to (equal to 1e-15 for the self-calibrated k1); Newton's
    takes 3-4 steps instead of 20. None where no root is found to 1e-13 or the lens folds back (``d r_d / d r <= 0``:
    beyond a barrel lens's largest radius): the caller falls back to OpenCV."""
    k1, k2, k3 = (float(v) for v in k)
    rd = np.hypot(xd[:, 0], xd[:, 1])
    r = _radius_k1(rd, k1) if k2 == 0.0 and k3 == 0.0 else _radius_newton(rd, k1, k2, k3, iterations)
    if r is None:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(rd > 0, r / rd, 1.0)
    return xd * ratio[:, None]


def _radius_newton(rd: np.ndarray, k1: float, k2: float, k3: float, iterations: int) -> np.ndarray | None:
    """(N,) undistorted radii of distorted radii ``rd`` by Newton's method (see :func:`_undistort_radial`)."""
    r = rd.copy()
    for _ in range(iterations):
        r2 = r * r
        g = r * (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) - rd
        if np.abs(g).max() <= 1e-13:
            return r
        dg = 1.0 + r2 * (3.0 * k1 + r2 * (5.0 * k2 + r2 * 7.0 * k3))
        if np.any(dg <= 0):
            return None
        r = r - g / dg
    return None


def _radius_k1(rd: np.ndarray, k1: float) -> np.ndarray | None:
    """(N,) undistorted radii r of distorted radii ``rd`` through ``r_d = r (1 + k1 r^2)`` (a k1-only lens: the
    backend's self-calibrated one on a rectified camera), in closed form: with ``a = sqrt(3 |k1|)`` and
    ``s = 1.5 a r_d``, ``r = (2 / a) sinh(asinh(s) / 3)`` for k1 > 0 and ``(2 / a) sin(asin(s) / 3)`` for k1 < 0 (the
    triple-angle identities; the root on the monotone branch, exact to rounding however small k1 is). None where a
    barrel lens folds back (s > 1: beyond its largest radius), as Newton's method."""
    if k1 == 0.0:
        return rd.copy()
    a = np.sqrt(3.0 * abs(k1))
    s = 1.5 * a * rd
    if k1 > 0:
        return (2.0 / a) * np.sinh(np.arcsinh(s) / 3.0)
    if s.size and s.max() > 1.0:
        return None
    return (2.0 / a) * np.sin(np.arcsin(s) / 3.0)


def undistort_pixels(pts: np.ndarray, camera: Camera) -> np.ndarray:
    """(N, 2) pixel points -> (N, 2) float64 pixels of the ideal (distortion-free) pinhole camera K."""
    n = normalize_points(pts, camera)
    K = camera.K
    return np.stack([n[:, 0] * K[0, 0] + K[0, 2], n[:, 1] * K[1, 1] + K[1, 2]], axis=1)


def bearings(normalised: np.ndarray) -> np.ndarray:
    """(N, 2) normalised coordinates -> (N, 3) unit ray directions."""
    b = np.concatenate([normalised, np.ones((normalised.shape[0], 1))], axis=1)
    return b / np.linalg.norm(b, axis=1, keepdims=True)


def patch_warps(points: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Local linear maps from image 0 to image 1 at 3-D points seen by both (the zoom, rotation and shear a
    small patch undergoes), for a patch on the plane through each point facing camera 0.

    Parameters
    ----------
    points : (N, 3) points in camera-0 coordinates (z > 0). R, t : pose 0 -> 1 (``X1 = R X0 + t``), in the
        points' unit. K : (3, 3) pinhole intrinsics of both images (distortion's change over a patch is ignored).

    Returns
    -------
    (N, 2, 2) float64 Jacobians d(pixel 1) / d(pixel 0); NaN where a point is not in front of both cameras.
    """
    X = np.asarray(points, np.float64).reshape(-1, 3)
    Y = X @ R.T + t
    z0, z1 = X[:, 2], Y[:, 2]
    fx, fy = K[0, 0], K[1, 1]
    dX = np.zeros((len(X), 3, 2))  # d(X0) / d(pixel 0) on the fronto-parallel plane at depth z0
    dX[:, 0, 0], dX[:, 1, 1] = z0 / fx, z0 / fy
    dpi = np.zeros((len(X), 2, 3))  # d(pixel 1) / d(X1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dpi[:, 0, 0], dpi[:, 0, 2] = fx / z1, -fx * Y[:, 0] / z1 ** 2
        dpi[:, 1, 1], dpi[:, 1, 2] = fy / z1, -fy * Y[:, 1] / z1 ** 2
    J = np.einsum("nij,jk,nkl->nil", dpi, R, dX)
    J[(z0 <= 0) | (z1 <= 0)] = np.nan
    return J


def focal_length(camera: Camera) -> float:
    """Mean focal length in pixels (converts pixel thresholds to normalised units)."""
    return 0.5 * float(camera.K[0, 0] + camera.K[1, 1])


# --------------------------------------------------------------------------------------------
# SE(3)
# --------------------------------------------------------------------------------------------
def se3(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a (3, 3) rotation and a (3,) translation."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, np.float64).ravel()
    return T


def invert_se3(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform."""
    R, t = T[:3, :3], T[:3, 3]
    return se3(R.T, -R.T @ t)


def orthonormalize_se3(T: np.ndarray) -> np.ndarray:
    """``T`` (4, 4) with its rotation block replaced by the nearest rotation matrix (SVD; the translation kept).

    Chains of products drift off SO(3) by rounding, and :func:`invert_se3` (which uses the transpose) then is
    no inverse. Where a pose is corrected by ``new @ inv(old) @ pose`` again and again (the backend's windows
    landing on newer keyframes), that error doubles with each correction: re-project there."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    return se3(R, np.asarray(T[:3, 3], float))


def compose_relative(T_world_cam0: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Camera-1 pose from camera-0 pose and the relative motion ``x1 = R x0 + t`` (metric t).

    Returns
    -------
    (4, 4) T_world_cam1 = T_world_cam0 @ inv([R | t]).
    """
    return T_world_cam0 @ invert_se3(se3(R, t))


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees."""
    c = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(c)))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees between two vectors; NaN when either is zero."""
    a, b = np.ravel(a), np.ravel(b)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if not norm > 0:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(a @ b / norm, -1.0, 1.0))))


def travel_angle_deg(Ra: np.ndarray, ta: np.ndarray, Rb: np.ndarray, tb: np.ndarray) -> float:
    """Angle in degrees between the directions of travel (camera-centre displacements ``-R^T t``) of two relative
    poses; NaN when either translation is zero."""
    return angle_between_deg(-Ra.T @ np.ravel(ta), -Rb.T @ np.ravel(tb))


# --------------------------------------------------------------------------------------------
# Two-view
# --------------------------------------------------------------------------------------------
def rotation_compensated_parallax(n0: np.ndarray, n1: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Angle (radians) between each ray of view 1 and the rotated ray of view 0.

    Zero for every point under a pure rotation (and for points at infinity): the parallax that
    makes the translation observable.

    Parameters
    ----------
    n0, n1 : (N, 2) normalised coordinates. R : (3, 3) rotation view 0 -> view 1.

    Returns
    -------
    (N,) float64 radians.
    """
    return _parallax(bearings(n0), bearings(n1), R)


def _parallax(b0: np.ndarray, b1: np.ndarray, R: np.ndarray) -> np.ndarray:
    """:func:`rotation_compensated_parallax` of unit rays (N, 3)."""
    b0 = b0 @ R.T
    x0, y0, z0 = b0.T
    x1, y1, z1 = b1.T
    cx, cy, cz = y0 * z1 - z0 * y1, z0 * x1 - x0 * z1, x0 * y1 - y0 * x1  # np.cross's products, without its copies
    return np.arctan2(np.sqrt(cx * cx + cy * cy + cz * cz), x0 * x1 + y0 * y1 + z0 * z1)


def rotation_from_bearings(n0: np.ndarray, n1: np.ndarray) -> np.ndarray:
    """Least-squares rotation with ``b1 ~ R b0`` (Kabsch on unit rays), for pure rotations.

    Parameters
    ----------
    n0, n1 : (N, 2) normalised coordinates of inlier correspondences, N >= 2.

    Returns
    -------
    (3, 3) rotation view 0 -> view 1.
    """
    return _kabsch(bearings(n0), bearings(n1))


def _kabsch(b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """:func:`rotation_from_bearings` of unit rays (N, 3)."""
    U, _, Vt = np.linalg.svd(b1.T @ b0)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def pure_rotation_fit(n0: np.ndarray, n1: np.ndarray, f: float, rounds: int = 3, floor_px: float = 1.0
                      ) -> tuple[np.ndarray, float]:
    """The pure rotation that best explains the correspondences, and the parallax it leaves.

    A least-squares rotation (:func:`rotation_from_bearings`) is refitted on the correspondences within three
    times the median residual (at least ``floor_px``). The essential matrix of a pure rotation is degenerate: any
    translation fits, so its inliers can hold a few gross mismatches along its arbitrary epipolar lines. A plain
    least-squares fit then turns by them and leaves every point a spurious parallax: a SIFT replay of a 6 deg/frame
    turn in place on the synthetic street read 0.55-1.6 px, a translation, where the refitted rotation leaves 0.1 px.

    Parameters
    ----------
    n0, n1 : (N, 2) normalised coordinates, N >= 2. f : focal length (px) for the residuals.

    Returns
    -------
    ((3, 3) rotation view 0 -> view 1, median rotation-compensated parallax in px over all N)
    """
    keep = np.ones(len(n0), bool)
    b0, b1 = bearings(n0), bearings(n1)  # once: each round's rays are a subset of them
    for _ in range(max(rounds, 1)):
        R = _kabsch(b0[keep], b1[keep])
        residual = _parallax(b0, b1, R) * f
        median = float(np.median(residual))
        refit = residual < max(3.0 * median, floor_px)
        if refit.sum() < 3 or np.array_equal(refit, keep):
            break
        keep = refit
    return R, median


def triangulation_angles(points3d: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Angle (degrees) at each point between the rays to camera 0 and camera 1.

    Parameters
    ----------
    points3d : (P, 3) points in camera-0 coordinates. R, t : relative pose 0 -> 1.

    Returns
    -------
    (P,) float64 degrees; small angles mean poorly conditioned depth.
    """
    c1 = -R.T @ np.asarray(t, np.float64).ravel()  # camera-1 centre in camera-0 coordinates
    r0 = points3d
    r1 = points3d - c1[None, :]
    cos = np.sum(r0 * r1, axis=1) / np.maximum(np.linalg.norm(r0, axis=1) * np.linalg.norm(r1, axis=1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def skew_stack(v: np.ndarray) -> np.ndarray:
    """(K, 3, 3) cross-product matrices of (K, 3) vectors."""
    S = np.zeros((len(v), 3, 3))
    S[:, 0, 1], S[:, 0, 2], S[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    S[:, 1, 0], S[:, 2, 0], S[:, 2, 1] = v[:, 2], -v[:, 1], v[:, 0]
    return S


def skew(v: np.ndarray) -> np.ndarray:
    """(3, 3) cross-product matrix of a (3,) vector."""
    return skew_stack(np.asarray(v, np.float64).reshape(1, 3))[0]


class SampsonTerms:
    """Signed Sampson distances of fixed correspondences to any number of essential matrices.

    The homogeneous coordinates are laid out once, (3, N) each, so that every evaluation is three small matrix
    products: an iterative solver evaluates the same correspondences ~6 times per iteration (its Jacobian's
    perturbations), and laying them out again each time had cost as much as the products.

    Parameters
    ----------
    n0, n1 : (N, 2) normalised coordinates in views 0 and 1.
    """

    def __init__(self, n0: np.ndarray, n1: np.ndarray):
        self.x0 = np.ones((3, n0.shape[0]))
        self.x0[:2] = n0.T
        self.x1 = np.ones((3, n1.shape[0]))
        self.x1[:2] = n1.T

    def __call__(self, E: np.ndarray) -> np.ndarray:
        """(N,) distances for E (3, 3), (K, N) for a stack of K matrices (K, 3, 3)."""
        Ex0 = E @ self.x0  # ([K,] 3, N)
        Etx1 = np.swapaxes(E[..., :2], -1, -2) @ self.x1  # ([K,] 2, N): the first two rows of E^T x1
        num = np.einsum("...in,in->...n", Ex0, self.x1)
        Ex0 = Ex0[..., :2, :]
        den = np.sqrt(np.einsum("...in,...in->...n", Ex0, Ex0) + np.einsum("...in,...in->...n", Etx1, Etx1))
        return num / np.maximum(den, 1e-15)


def sampson_errors(E: np.ndarray, n0: np.ndarray, n1: np.ndarray) -> np.ndarray:
    """Signed Sampson distances (normalised units) of N correspondences to an essential matrix:
    (N,) for E (3, 3), (K, N) for a stack of K matrices (K, 3, 3), evaluated in one pass
    (:class:`SampsonTerms`, which also serves repeated evaluations)."""
    return SampsonTerms(n0, n1)(E)


def cauchy_cost(errors: np.ndarray, scale: float) -> float:
    """Cauchy robust cost ``sum log(1 + (e / scale)^2)``: what :func:`refine_pose` minimises."""
    return float(np.sum(np.log1p((errors / scale) ** 2)))


def refine_pose(R: np.ndarray, t: np.ndarray, n0: np.ndarray, n1: np.ndarray, scale: float,
                iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Refine (R, unit t) by robust least squares on the Sampson errors of the inliers.

    The minimal-sample estimate of the robust estimator is noisy; polishing it over all inliers
    brings the rotation error close to the noise floor.

    Parameters
    ----------
    R, t : initial pose (t unit norm). n0, n1 : (N, 2) normalised inlier coordinates.
    scale : residual scale of the robust (Cauchy) loss, in normalised units.
    iterations : maximum solver iterations.

    Returns
    -------
    R, t refined (t unit norm).
    """
    t = t / np.linalg.norm(t)
    # Two directions orthogonal to t span its tangent space on the unit sphere.
    basis = np.linalg.svd(t.reshape(1, 3))[2][1:].T  # (3, 2)

    def unpack(x):
        Rx = cv2.Rodrigues(x[:3])[0] @ R
        tx = t + basis @ x[3:]
        return Rx, tx / np.linalg.norm(tx)

    epipolar = SampsonTerms(n0, n1)

    def batch_residuals(X):  # (K, 5) parameter vectors -> (K, N) Sampson errors in one numpy pass
        return epipolar(np.stack([skew(tx) @ Rx for Rx, tx in map(unpack, X)]))

    def jacobian(x, r):  # forward differences (scipy's '2-point' steps), all five in one pass
        h = _FD_STEP * np.where(x >= 0, 1.0, -1.0) * np.maximum(1.0, np.abs(x))
        h = (x + h) - x
        return ((batch_residuals(x + np.diag(h)) - r) / h[:, None]).T  # (N, 5)

    # Levenberg-Marquardt on the Cauchy-weighted normal equations (IRLS). scipy's least_squares
    # minimises the same objective but spends ~0.5 ms of Python per iteration on 5 unknowns.
    x = _robust_levenberg_marquardt(
        np.zeros(5), lambda x: batch_residuals(x[None])[0], jacobian, lambda r: 1.0 / (1.0 + (r / scale) ** 2),
        lambda r: cauchy_cost(r, scale), lambda x, dx: x + dx,
        # stop when the step no longer matters: < 1e-7 rad / unit-baseline, or cost down < 1e-7 relative
        lambda c, c_new, dx: c - c_new <= 1e-7 * c or np.linalg.norm(dx) <= 1e-7, iterations)
    return unpack(x)


def _robust_levenberg_marquardt(state, residuals, jacobian, weights, cost, retract, converged, iterations: int):
    """Levenberg-Marquardt on robustly weighted normal equations (IRLS): ``residuals(state) -> r``,
    ``jacobian(state, r) -> J``, ``weights(r) -> w`` (the robust kernel's), ``cost(r)``, ``retract(state, dx)``
    (the update), ``converged(cost, new_cost, dx)`` after an accepted step. Returns the last accepted state."""
    r = residuals(state)
    c = cost(r)
    lam = 1e-3
    for _ in range(iterations):
        J = jacobian(state, r)
        w = weights(r)
        A = J.T @ (w[:, None] * J)
        g = J.T @ (w * r)
        try:
            dx = -np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-30), g)
        except np.linalg.LinAlgError:
            break
        new = retract(state, dx)
        r_new = residuals(new)
        c_new = cost(r_new)
        if c_new < c:
            done = converged(c, c_new, dx)
            state, r, c, lam = new, r_new, c_new, max(lam / 10, 1e-9)
            if done:
                break
        else:
            lam *= 10
            if lam > 1e8:
                break
    return state


_FD_STEP = float(np.sqrt(np.finfo(np.float64).eps))


def pose_from_known_depths(rays0: np.ndarray, rho0: np.ndarray, m1: np.ndarray, threshold: float,
                           min_inliers: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pose of view 1 on points of view 0 whose depths are known (PnP in OpenCV's RANSAC), as a hypothesis for the
    two-view estimate: it needs no motion model, so it holds where the last motion says little (after a gap).

    Parameters
    ----------
    rays0 : (M, 3) unit rays in view 0; rho0 : (M,) inverse distances along them (> 0);
    m1 : (M, 2) the points' normalised observations in view 1; threshold : the reprojection inlier threshold,
    normalised units; min_inliers : fewer PnP inliers (or fewer points) give None.

    Returns
    -------
    (R, t) with ``x1 = R x0 + t`` (t in the depths' units), or None.
    """
    if len(rho0) < max(6, min_inliers):
        return None
    X = np.ascontiguousarray(rays0 / rho0[:, None], np.float64)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(X, np.ascontiguousarray(m1, np.float64), np.eye(3), None,
                                                 iterationsCount=100, reprojectionError=float(threshold),
                                                 confidence=0.99)
    if not ok or inliers is None or len(inliers) < min_inliers:
        return None
    return cv2.Rodrigues(rvec)[0], tvec.ravel()


def refine_pose_with_structure(R: np.ndarray, t: np.ndarray, n0: np.ndarray, n1: np.ndarray, rays0: np.ndarray,
                               rho0: np.ndarray, rho_std: np.ndarray, m1: np.ndarray, scale: float,
                               iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Refine a scaled relative pose (R, t) against the epipolar geometry of all inliers and the points of the
    reference view whose depth it knows: motion-only bundle adjustment with epipolar terms for the points without a
    depth, as ORB-SLAM's and DSO's trackers pose a frame against their local map rather than against two views.

    A known point's inverse depth is uncertain (``rho_std``), which moves its projection along its epipolar line.
    Its reprojection residual is whitened by that covariance, ``noise^2 I + d d^T`` with ``d`` the projection's
    shift for one standard deviation of inverse depth, at the pose being evaluated: the errors-in-variables cost,
    whose minimum is not pulled short as a plain reprojection fit to noisy depths is (regression dilution).

    Parameters
    ----------
    R, t : initial pose 0 -> 1, ``t`` with its length (the trajectory's scale).
    n0, n1 : (N, 2) normalised inlier coordinates (Sampson terms).
    rays0 : (M, 3) unit rays of the known points in view 0; rho0, rho_std : (M,) their inverse distances along the
        rays and its standard deviations; m1 : (M, 2) their normalised observations in view 1.
    scale : the observations' noise and the robust (Cauchy) loss's scale, in normalised units.

    Returns
    -------
    R, t refined (``t`` with its length).
    """
    k = n0.shape[0]
    epipolar = SampsonTerms(n0, n1)
    rays_t, m1_t = np.ascontiguousarray(rays0.T), np.ascontiguousarray(m1.T)  # (3, M), (2, M)

    def residuals(Rs, ts):  # (K, 3, 3), (K, 3) -> (K, N + 2M)
        samp = epipolar(skew_stack(ts) @ Rs)
        Y = Rs @ rays_t + rho0 * ts[:, :, None]  # (K, 3, M) ~ the point in camera 1
        z = Y[:, 2:]
        z = np.where(np.abs(z) > 1e-12, z, 1e-12)
        r = Y[:, :2] / z - m1_t
        d = rho_std * (ts[:, :2, None] * z - Y[:, :2] * ts[:, 2:, None]) / z ** 2  # d(proj)/d(rho), (K, 2, M)
        dn = np.sqrt(np.einsum("kim,kim->km", d, d))[:, None]
        u = d / np.maximum(dn, 1e-300)
        a = 1.0 - scale / np.sqrt(scale ** 2 + dn ** 2)
        r = r - a * np.einsum("kim,kim->km", u, r)[:, None] * u
        return np.concatenate([samp, np.swapaxes(r, 1, 2).reshape(len(Rs), -1)], axis=1)

    def cost(r):
        return cauchy_cost(r[:k], scale) + float(np.sum(np.log1p(np.sum(r[k:].reshape(-1, 2) ** 2, axis=1) / scale ** 2)))

    def step(Rx, tx, dx):  # a left perturbation: rotate the whole pose about camera 1's centre, then translate
        dR = cv2.Rodrigues(dx[:3])[0]
        return dR @ Rx, dR @ tx + dx[3:]

    def weights(r):
        w = 1.0 / (1.0 + (r / scale) ** 2)
        rep = r[k:].reshape(-1, 2)  # a point's two residuals share its weight (the norm of its error)
        w[k:] = np.repeat(1.0 / (1.0 + np.sum(rep ** 2, axis=1) / scale ** 2), 2)
        return w

    def jacobian(pose, r):  # forward differences, the six perturbations in one pass
        Rx, tx = pose
        steps = np.r_[np.full(3, _FD_STEP), np.full(3, _FD_STEP * max(1.0, float(np.linalg.norm(tx))))]
        moved = [step(Rx, tx, dx) for dx in np.diag(steps)]
        return ((residuals(np.stack([m[0] for m in moved]), np.stack([m[1] for m in moved])) - r) / steps[:, None]).T

    return _robust_levenberg_marquardt(
        (R.copy(), t.copy()), lambda pose: residuals(pose[0][None], pose[1][None])[0], jacobian, weights, cost,
        lambda pose, dx: step(*pose, dx),
        # IRLS converges linearly: stop when the cost falls by less than 1e-4 of itself (the step is then
        # ~1e-5 rad and ~1e-3 of the translation's length)
        lambda c, c_new, dx: c - c_new <= 1e-4 * c, iterations)


def _same_basin(Ra: np.ndarray, ta: np.ndarray, Rb: np.ndarray, tb: np.ndarray,
                max_rotation_deg: float = 0.25, max_direction_deg: float = 2.0) -> bool:
    """Two motions close enough that polishing one would end where the other is (no need to compare)."""
    cos_t = abs(float(ta @ tb)) / max(float(np.linalg.norm(ta) * np.linalg.norm(tb)), 1e-12)
    return rotation_angle_deg(Ra.T @ Rb) < max_rotation_deg and np.degrees(np.arccos(min(cos_t, 1.0))) < max_direction_deg


# A cheirality vote on this many evenly spaced correspondences decides among the essential matrix's four poses when
# its winner leads the runner-up by a quarter of them (8 standard deviations of a vote's sampling error); else every
# correspondence votes. recoverPose triangulates every correspondence under all four poses: ~4 ms per 1000 points,
# a third of the pose stage (KITTI 07).
VOTE_POINTS = 256


@dataclass
class RecoveredPose:
    """The pose :func:`recover_pose` picks among an essential matrix's four.

    Attributes
    ----------
    R : (3, 3) rotation view 0 -> view 1. t : (3,) unit translation.
    in_front : (N,) bool, the voting correspondences in front of both cameras under (R, t) and nearer than the
        distance threshold (OpenCV's mask; None unless ``points`` was asked for).
    points : (4, N) homogeneous triangulation under (R, t) of the voting correspondences, zero columns elsewhere
        (None unless ``points`` was asked for).
    """

    R: np.ndarray
    t: np.ndarray
    in_front: np.ndarray | None = None
    points: np.ndarray | None = None


def recover_pose(E: np.ndarray, n0: np.ndarray, n1: np.ndarray, distance_threshold: float,
                 mask: np.ndarray | None = None, points: bool = False) -> RecoveredPose:
    """``cv2.recoverPose`` on normalised coordinates, its cheirality vote on a sample of the correspondences.

    The pose is one of ``cv2.decomposeEssentialMat(E)``'s four, the one in front of which the most correspondences
    (of ``mask``) triangulate nearer than ``distance_threshold``. OpenCV counts them all; here :data:`VOTE_POINTS`
    evenly spaced ones vote first and, when their vote is decisive, only the winner's pose triangulates every
    correspondence (with ``points``). Otherwise, or with few correspondences, ``cv2.recoverPose`` itself runs. The
    returned (R, t) are the same floats as OpenCV's whenever the votes agree (the decomposition's).

    Parameters
    ----------
    E : (3, 3) essential matrix. n0, n1 : (N, 2) normalised coordinates.
    distance_threshold : OpenCV's ``distanceThresh`` (in baselines): farther points do not vote.
    mask : (N,) bool, the correspondences that vote (all when None).
    points : also return which voting correspondences are in front under the winner, and their triangulation.

    Returns
    -------
    RecoveredPose.
    """
    n = len(n0)
    vote = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    idx = np.flatnonzero(vote)
    if idx.size > 2 * VOTE_POINTS:
        sample = idx[np.linspace(0, idx.size - 1, VOTE_POINTS).round().astype(np.int64)]
        R1, R2, t1 = cv2.decomposeEssentialMat(E)
        poses = [(R1, t1), (R2, t1), (R1, -t1), (R2, -t1)]
        counts = [int(_in_front(R, t, n0[sample], n1[sample], distance_threshold)[0].sum()) for R, t in poses]
        order = np.argsort(counts, kind="stable")[::-1]
        if counts[order[0]] - counts[order[1]] >= VOTE_POINTS // 4:
            R, t = poses[int(order[0])]
            if not points:
                return RecoveredPose(R, t.ravel())
            front, Q = _in_front(R, t, n0[idx], n1[idx], distance_threshold)
            chiral = np.zeros(n, bool)
            chiral[idx[front]] = True
            X = np.zeros((4, n))
            X[:, idx] = Q
            return RecoveredPose(R, t.ravel(), chiral, X)
    # Keyword arguments select the overload with distanceThresh (positional ones are ambiguous).
    _, R, t, pose_mask, X = cv2.recoverPose(E, n0, n1, np.eye(3), distanceThresh=distance_threshold,
                                            mask=vote.astype(np.uint8).reshape(-1, 1))
    if not points:
        return RecoveredPose(R, t.ravel())
    return RecoveredPose(R, t.ravel(), pose_mask.ravel().astype(bool) & vote, X)


def _in_front(R: np.ndarray, t: np.ndarray, n0: np.ndarray, n1: np.ndarray, distance_threshold: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV recoverPose's cheirality test of one pose: (M,) points in front of both cameras and nearer than
    ``distance_threshold``, and their (4, M) homogeneous triangulation (``cv2.triangulatePoints``, as OpenCV)."""
    P = np.hstack([R, t.reshape(3, 1)])
    Q = cv2.triangulatePoints(np.eye(3, 4), P, np.ascontiguousarray(n0.T), np.ascontiguousarray(n1.T))
    with np.errstate(divide="ignore", invalid="ignore"):
        front = Q[2] * Q[3] > 0
        X = Q[:3] / Q[3]
        front &= X[2] < distance_threshold
        z1 = P[2, :3] @ X + P[2, 3]
        front &= (z1 > 0) & (z1 < distance_threshold)
    return front, Q


def essential_inliers(n0: np.ndarray, n1: np.ndarray, f: float, cfg: GeometryConfig, method: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """(E (3, 3), inliers (M,) bool) of the robust essential matrix between normalised points ``n0``, ``n1``
    (OpenCV USAC with ``cfg.method`` or ``method``, the threshold ``cfg.ransac_threshold_px`` converted with the
    focal length ``f``), or None when the estimator finds none."""
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=_METHODS[method or cfg.method], prob=cfg.confidence,
                                   threshold=cfg.ransac_threshold_px / f, maxIters=cfg.max_iters)
    if E is None or E.shape[0] < 3 or mask is None:
        return None
    return E[:3], mask.ravel().astype(bool)


# How many times the two lenses' median shift d of a pair's points (px, both views) the configured lens's pure-rotation
# fit may lie below the self-calibrated lens's and still be run (``estimate_relative_pose``). Moving each ray by d_i
# moves each residual of a rotation by at most d_i. The fits are refitted least squares, not exact minima, so this is
# a margin, not a bound: over KITTI 07, TUM, the street and the robot moves the self-calibrated lens's fit exceeded
# the configured lens's by at most 0.76 d, and skipping beyond 2 d changed no decision (stop 65,
# scripts/lens_gate_check.py). The skipped fit costs ~0.5 ms before the pose.
LENS_PARALLAX_MARGIN = 2.0


def _lens_shift_px(n0: np.ndarray, n1: np.ndarray, c0: np.ndarray, c1: np.ndarray, f: float) -> float:
    """Median over correspondences of how far two lenses put them apart (px, the two views' shifts added): (N, 2)
    normalised points ``n0``, ``n1`` through one lens and ``c0``, ``c1`` through the other."""
    return float(np.median(np.hypot(*(n0 - c0).T) + np.hypot(*(n1 - c1).T))) * f


def estimate_relative_pose(pts0: np.ndarray, pts1: np.ndarray, camera: Camera, cfg: GeometryConfig,
                           ordered: bool = False,
                           priors: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                           configured: Camera | None = None,
                           normalized: tuple[np.ndarray, np.ndarray] | None = None,
                           configured_normalized: tuple[np.ndarray, np.ndarray] | None = None
                           ) -> TwoViewGeometry | None:
    """Relative pose of view 1 w.r.t. view 0 from matched pixel points.

    Steps: undistort and normalise the points, robust essential matrix (OpenCV USAC, threshold
    converted from pixels with the focal length), robust least-squares polishing of (R, t) on the
    inliers' Sampson errors, cheirality check (:func:`recover_pose`, OpenCV's ``recoverPose`` test) using a large
    ``distanceThresh`` (the 4-argument overload rejects every point farther than 50 baselines,
    which picks wrong poses on small baselines), triangulation of the inliers.
    ``inliers`` marks the epipolar inliers (far points included); ``points3d`` holds those that
    pass the cheirality test, in front of both cameras and nearer than ``cfg.distance_threshold``.
    When the translation is unobservable (median rotation-compensated parallax below
    ``cfg.rotation_only_parallax_px``) the rotation is re-estimated from the rays alone and the
    result carries ``t = 0`` and no points.

    Parameters
    ----------
    pts0, pts1 : (M, 2) matched pixel coordinates in view 0 and view 1.
    camera : intrinsics/distortion shared by both views.
    cfg : robust estimator settings.
    ordered : the matches are sorted best first; with ``cfg.method == "prosac"`` the PROSAC
        sampler uses that order (otherwise MAGSAC/RANSAC/LMedS as configured).
    priors : (R, t) hypotheses, e.g. the previous frame pair's motion, or the pose of view 1 on view 0's known
        depths. Each is polished like the robust estimator's model and wins when its robust cost over all
        correspondences is lower than that of the model so far. Forward motion with yaw has a valley of
        near-equivalent (R, t) (the rotation / translation ambiguity); on KITTI 07 the estimator's model
        sometimes settles 0.8 deg / 38 deg away from a pose with lower cost and more inliers, which the previous
        motion recovers.
    configured : the camera as configured, when ``camera`` adds the backend's self-calibrated distortion to it.
        A pure rotation through either lens is a rotation, and the lens that leaves it less parallax gives its
        rotation: a window's k1 is an estimate, and one confidently wrong (the learned frontend's windows on a
        ground-only view of the synthetic street, +0.09 on a pinhole camera) leaves a turn on the spot ~1 px of
        false parallax, which the essential matrix takes for a translation; one a little wrong scales the turn's
        rotation (docs/results.md: A robot on patrol). The configured lens's fit runs only where it can show a
        pure rotation: where ``camera``'s leaves less parallax than ``rotation_only_parallax_px`` plus
        ``LENS_PARALLAX_MARGIN`` times the median shift between the two lenses.
    normalized : ``(normalize_points(pts0, camera), normalize_points(pts1, camera))`` when the caller has them
        already (undistorting through a lens is iterative).
    configured_normalized : the same through ``configured``, when the caller has them.

    Returns
    -------
    TwoViewGeometry (t unit norm, or zero for a pure rotation), or None when fewer than
    ``cfg.min_inliers`` correspondences survive.
    """
    pts0 = np.asarray(pts0, np.float64).reshape(-1, 2)
    pts1 = np.asarray(pts1, np.float64).reshape(-1, 2)
    if pts0.shape != pts1.shape:
        raise ConfigError(f"estimate_relative_pose: point arrays differ in shape {pts0.shape} vs {pts1.shape}")
    m = pts0.shape[0]
    if m < max(5, cfg.min_inliers):
        return None
    n0, n1 = normalized if normalized is not None else (normalize_points(pts0, camera), normalize_points(pts1, camera))
    f = focal_length(camera)
    method = cfg.method
    if method == "prosac" and not ordered:
        method = "magsac"
    found = essential_inliers(n0, n1, f, cfg, method)
    if found is None:
        return None
    E, inl = found
    if inl.sum() < cfg.min_inliers:
        return None
    # Polish the minimal-sample model over all inliers, then re-select the inliers.
    thr = cfg.ransac_threshold_px / f
    first = recover_pose(E, n0[inl], n1[inl], cfg.distance_threshold)
    R0, t0 = first.R, first.t

    def polish(R_h, t_h, inl_h, rounds, iterations=20):
        """(R, t, inliers, Sampson errors of all correspondences; None when no round ran)."""
        e = None
        for _ in range(rounds):
            if inl_h.sum() < 5:
                break
            R_h, t_h = refine_pose(R_h, t_h, n0[inl_h], n1[inl_h], thr, iterations)
            e = sampson_errors(skew(t_h) @ R_h, n0, n1)
            inl_h = np.abs(e) < thr
        return R_h, t_h, inl_h, e

    R0, t0, inl, e0 = polish(R0, t0, inl, cfg.refine_rounds)
    for Rp, tp in priors if cfg.refine_rounds > 0 else ():
        Rp, tp = np.asarray(Rp, np.float64), np.asarray(tp, np.float64).ravel()
        if not np.linalg.norm(tp) > 0:
            continue
        tp = tp / np.linalg.norm(tp)
        if not _same_basin(R0, t0, Rp, tp):
            # A prior only has to show which basin it is in: a short polish (its cost is then, if anything,
            # too high, which favours the model it competes with), then the full polish when it wins.
            inl_p = np.abs(sampson_errors(skew(tp) @ Rp, n0, n1)) < 3 * thr
            Rp, tp, inl_p, ep = polish(Rp, tp, inl_p, 1, iterations=8)
            e0 = sampson_errors(skew(t0) @ R0, n0, n1) if e0 is None else e0
            ep = sampson_errors(skew(tp) @ Rp, n0, n1) if ep is None else ep
            if cauchy_cost(ep, thr) < cauchy_cost(e0, thr):
                R0, t0, inl, e0 = polish(Rp, tp, inl_p, cfg.refine_rounds)
    E = skew(t0) @ R0
    if inl.sum() < cfg.min_inliers:
        return None
    chosen = recover_pose(E, n0, n1, cfg.distance_threshold, inl, points=True)
    R, t, chiral, X = chosen.R, chosen.t, chosen.in_front, chosen.points

    # Translation observability: parallax left after the best pure rotation (model selection; the
    # essential matrix of a pure rotation is degenerate and its R may be the twisted solution).
    i0, i1 = n0[inl], n1[inl]
    R_rot, parallax_px = pure_rotation_fit(i0, i1, f)
    if configured is not None:  # the lens that explains the pair better as a pure rotation decides, and turns it
        if configured_normalized is not None:
            c0, c1 = configured_normalized[0][inl], configured_normalized[1][inl]
        else:
            c0, c1 = normalize_points(pts0[inl], configured), normalize_points(pts1[inl], configured)
        fc = focal_length(configured)
        reach = LENS_PARALLAX_MARGIN * _lens_shift_px(i0, i1, c0, c1, fc)
        if parallax_px < cfg.rotation_only_parallax_px + reach:
            R_cfg, parallax_cfg = pure_rotation_fit(c0, c1, fc)
            if parallax_cfg < parallax_px:
                R_rot, parallax_px = R_cfg, parallax_cfg
    if parallax_px < cfg.rotation_only_parallax_px:
        R = R_rot
        return TwoViewGeometry(R=R, t=np.zeros(3), inliers=inl, points3d=np.zeros((0, 3)),
                               point_match_idx=np.zeros(0, np.int64))
    if chiral.sum() < cfg.min_inliers:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        X = X[:3] / X[3:4]
    idx = np.flatnonzero(chiral)
    P = X[:, idx].T
    finite = np.all(np.isfinite(P), axis=1) & (P[:, 2] > 0)
    return TwoViewGeometry(R=R, t=t / np.linalg.norm(t), inliers=inl, points3d=P[finite],
                           point_match_idx=idx[finite].astype(np.int64))


# --------------------------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleVote:
    """Outcome of :func:`vote_log_scale`.

    Attributes
    ----------
    log_scale : log of the scale: the median of all votes when they form one cluster around the most
        probable scale (that median lies within the robust spread of the votes near it), else the median of
        the votes within three of their standard deviations of the most probable scale.
    consistent : (P,) bool, the votes the estimate rests on: all of them (one cluster), or those near the
        most probable scale; the others are outliers (mismatches on repeated structure, moving objects).
    """

    log_scale: float
    consistent: np.ndarray


# the share of votes beyond three standard deviations that :func:`vote_log_scale` still takes for one cluster's tails:
# a second cluster of 37 % (a facade matched to the wrong copy after a gap) moves the median of all votes by less
# than the consistent votes' spread, so that test alone took it for tails and its points for consistent (stop 53)
ONE_CLUSTER_TAILS = 0.2


def vote_log_scale(log_ratios: np.ndarray, log_stds: np.ndarray, prior_log: float, prior_std: float,
                   outlier_prob: float = 0.05) -> ScaleVote:
    """The scale that most of the point votes *and* the speed prior agree on.

    Each vote (a point's log depth ratio) is either consistent with the scale, Gaussian with its own
    ``log_stds``, or an outlier (probability ``outlier_prob``, uniform); the scale has a Gaussian prior in
    its logarithm (``prior_log``, ``prior_std``; ``inf`` for none). The most probable scale among the votes
    (and the prior's) picks the consistent votes (within three standard deviations). A median of all votes
    takes a value between two clusters: after a gap in the frames, repeated structure (a facade's windows)
    can match a whole region to the wrong copy with a consistent but wrong depth, and such a cluster can be
    as large as the correct one; the prior then decides, and the consistent votes' median is the estimate.
    With one cluster the median of all votes is kept (cutting its tails at three standard deviations would
    bias it: KITTI 07 SIFT ATE 0.490 -> 0.496 m).

    Parameters
    ----------
    log_ratios, log_stds : (P,) votes and their standard deviations (> 0).
    prior_log, prior_std : the prior's mean and standard deviation.
    """
    lr = np.asarray(log_ratios, np.float64)
    sd = np.maximum(np.asarray(log_stds, np.float64), 1e-9)
    candidates = np.r_[lr, prior_log] if np.isfinite(prior_std) else lr
    log_eps = np.log(outlier_prob)
    score = np.empty(candidates.size)
    for i0 in range(0, candidates.size, 256):  # (candidates x votes) in blocks
        z = (lr[None, :] - candidates[i0:i0 + 256, None]) / sd[None, :]
        score[i0:i0 + 256] = np.sum(np.logaddexp(np.log1p(-outlier_prob) - 0.5 * z ** 2, log_eps), axis=1)
    if np.isfinite(prior_std):
        score -= 0.5 * ((candidates - prior_log) / max(prior_std, 1e-9)) ** 2
    best = float(candidates[int(np.argmax(score))])
    consistent = np.abs(lr - best) <= 3.0 * sd
    if not consistent.any():
        return ScaleVote(best, consistent)
    inside = lr[consistent]
    m_in, m_all = float(np.median(inside)), float(np.median(lr))
    spread = 1.4826 * float(np.median(np.abs(inside - m_in)))
    if abs(m_all - m_in) <= spread and consistent.mean() >= 1.0 - ONE_CLUSTER_TAILS:
        return ScaleVote(m_all, np.ones(lr.size, bool))  # one cluster, its tails included: the median of all votes
    return ScaleVote(m_in, consistent)


def inverse_depths(n0: np.ndarray, n1: np.ndarray, R: np.ndarray, t: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Signed inverse distances of matched points along their rays in both views (unit baseline).

    Linear in the parallax, so points at (or, by noise, beyond) infinity get inverse depths near
    zero instead of being dropped: no truncation bias when they vote for the scale.

    Parameters
    ----------
    n0, n1 : (N, 2) normalised coordinates. R, t : relative pose 0 -> 1 (t unit norm).

    Returns
    -------
    rho0, rho1 : (N,) inverse distances from camera 0 / camera 1 along the observed rays.
    sin0, sin1 : (N,) sine of the angle between the other view's ray and the baseline; the
        standard deviation of rho is ``angular_noise / sin``.
    """
    b0, b1 = bearings(n0), bearings(n1)
    c0 = -R.T @ t  # camera-1 centre in camera-0 coordinates
    b1_in0 = b1 @ R  # rows: R^T b1
    u = np.cross(b1_in0, c0[None, :])
    rho0 = np.sum(np.cross(b1_in0, b0) * u, axis=1) / np.maximum(np.sum(u * u, axis=1), 1e-18)
    b0_in1 = b0 @ R.T  # rows: R b0
    v = np.cross(b0_in1, t[None, :])  # camera-0 centre is t in camera-1 coordinates
    rho1 = np.sum(np.cross(b0_in1, b1) * v, axis=1) / np.maximum(np.sum(v * v, axis=1), 1e-18)
    return rho0, rho1, np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)


def scale_from_inverse_depths(rho_ref: np.ndarray, sigma_ref: np.ndarray, rho_new: np.ndarray,
                              sigma_new: np.ndarray, init: float, noise: float = 1.0,
                              search: float = 4.0) -> float | None:
    """Scale ``s`` with ``rho_new ~ s * rho_ref`` for the same points seen along the same rays.

    Both inverse depths are noisy, so the fit is errors-in-variables: it minimises
    ``sum cauchy((rho_new - s rho_ref)^2 / (sigma_new^2 + s^2 sigma_ref^2))`` over ``s`` (a plain
    regression of one on the other would shrink the scale). Far points, with inverse depths near
    zero and large relative noise, count little; outliers not at all.

    Parameters
    ----------
    rho_ref, sigma_ref : (P,) inverse depths known in trajectory units and their std deviations.
    rho_new, sigma_new : (P,) inverse depths of the new pair (unit baseline) and std deviations.
    init : fallback start (the previous scale) when too few points are well conditioned.
    noise : Cauchy scale of the normalised residuals (the angular noise the sigmas are per unit of).
    search : the minimum is searched within [start / search, start * search].

    Returns
    -------
    s > 0, or None without usable points.
    """
    ok = np.isfinite(rho_ref) & np.isfinite(rho_new) & (sigma_ref > 0) & (sigma_new > 0) \
        & np.isfinite(sigma_ref) & np.isfinite(sigma_new)
    if not np.any(ok):
        return None
    a, sa, b, sb = rho_ref[ok], sigma_ref[ok], rho_new[ok], sigma_new[ok]
    # Start from the median ratio of the well-conditioned points (robust to a poor ``init``).
    good = (a > 3 * sa * noise) & (b > 3 * sb * noise)
    start = float(np.median(b[good] / a[good])) if good.sum() >= 5 else float(init)
    if not start > 0:
        return None

    def cost(log_s: float) -> float:
        s = np.exp(log_s)
        r2 = (b - s * a) ** 2 / (sb ** 2 + s ** 2 * sa ** 2)
        return float(np.sum(np.log1p(r2 / noise ** 2)))

    res = minimize_scalar(cost, bounds=(np.log(start / search), np.log(start * search)), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


# --------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------
# Pose covariances are 6x6 over [dp (3), dtheta (3)]: a position offset and a small-angle rotation,
# both in the axes of the frame the pose is expressed in (T = (exp(dtheta) R, p + dp)).
def _noise_variance(residuals: np.ndarray, n_params: int, min_noise: float) -> float:
    """Residual variance per measurement (unbiased), floored at ``min_noise ** 2``."""
    dof = max(residuals.size - n_params, 1)
    return max(float(np.sum(residuals ** 2)) / dof, min_noise ** 2)


def two_view_covariance(R: np.ndarray, t: np.ndarray, n0: np.ndarray, n1: np.ndarray,
                        min_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of a relative pose (R, unit t) from its inliers' Sampson errors (Gauss-Newton).

    Parametrised like :func:`refine_pose`: ``R(w) = exp(w) R`` (w in camera-1 axes) and
    ``t(b) = normalise(t + B b)`` with B (3, 2) spanning the plane orthogonal to t. The residual
    noise is estimated from the Sampson errors themselves (floored at ``min_noise``, normalised
    units), so fewer inliers, a worse spread of them, or larger residuals give a larger covariance.

    Returns
    -------
    cov : (5, 5) covariance of (w, b); B : (3, 2) the tangent basis of t.
    """
    t = t / np.linalg.norm(t)
    B = np.linalg.svd(t.reshape(1, 3))[2][1:].T
    h = 1e-6
    X = np.vstack([np.zeros(5), h * np.eye(5)])
    E = []
    for x in X:
        tx = t + B @ x[3:]
        E.append(skew(tx / np.linalg.norm(tx)) @ cv2.Rodrigues(x[:3])[0] @ R)
    e = sampson_errors(np.stack(E), n0, n1)  # (6, N)
    J = ((e[1:] - e[0]) / h).T  # (N, 5)
    info = J.T @ J / _noise_variance(e[0], 5, min_noise)
    return np.linalg.pinv(info), B


def rotation_covariance(R: np.ndarray, n0: np.ndarray, n1: np.ndarray, min_noise: float) -> np.ndarray:
    """(3, 3) covariance of ``w`` in ``R(w) = exp(w) R`` (camera-1 axes) for a pure rotation, from the
    reprojection residuals ``n1 - proj(R b0)`` of the inliers (noise floored at ``min_noise``)."""
    b0 = np.concatenate([n0, np.ones((n0.shape[0], 1))], axis=1)
    h = 1e-6

    def residuals(w):
        p = b0 @ (cv2.Rodrigues(w)[0] @ R).T
        return (p[:, :2] / p[:, 2:] - n1).ravel()

    r0 = residuals(np.zeros(3))
    J = np.stack([(residuals(h * np.eye(3)[i]) - r0) / h for i in range(3)], axis=1)  # (2N, 3)
    return np.linalg.pinv(J.T @ J / _noise_variance(r0, 3, min_noise))


def relative_motion_covariance(R: np.ndarray, t: np.ndarray, scale: float, cov_rt: np.ndarray,
                               basis: np.ndarray, scale_sigma: float) -> np.ndarray:
    """(6, 6) covariance of ``T_ref_cur = inv([R | scale t])`` (reference axes) from the two-view
    covariance of (R, unit t) (:func:`two_view_covariance`) and the std of ``scale``."""
    J = np.zeros((6, 6))
    J[:3, :3] = -scale * R.T @ skew(t)
    J[:3, 3:5] = -scale * R.T @ basis
    J[:3, 5] = -R.T @ t
    J[3:, :3] = -R.T
    C = np.zeros((6, 6))
    C[:5, :5] = cov_rt
    C[5, 5] = scale_sigma ** 2
    return J @ C @ J.T


def compose_covariance(T_world_ref: np.ndarray, cov_ref: np.ndarray, T_ref_cur: np.ndarray,
                       cov_rel: np.ndarray) -> np.ndarray:
    """Covariance of ``T_world_cur = T_world_ref @ T_ref_cur`` (world axes), the two independent.

    ``cov_ref``: (6, 6) of T_world_ref in world axes; ``cov_rel``: (6, 6) of T_ref_cur in reference
    axes. The reference's rotation uncertainty moves the current position by its lever arm.
    """
    R = T_world_ref[:3, :3]
    A = np.eye(6)
    A[:3, 3:] = -skew(R @ T_ref_cur[:3, 3])
    Bm = np.zeros((6, 6))
    Bm[:3, :3] = Bm[3:, 3:] = R
    out = A @ cov_ref @ A.T + Bm @ cov_rel @ Bm.T
    return 0.5 * (out + out.T)
