"""Trajectory metrics: timestamp association, Umeyama SE(3)/Sim(3) alignment, ATE and RPE.

Monocular VO recovers the trajectory up to scale, so it is scored after a Sim(3) alignment
(``correct_scale=True``), as ``evo_ape --align --correct_scale`` does. Poses are 4x4
``T_world_cam`` (camera-to-world).

* ATE: RMSE of ||p_gt_i - (s R p_est_i + t)|| over the associated frames.
* RPE (per frame, delta = 1 associated frame): E_i = (G_i^-1 G_i+1)^-1 (A_i^-1 A_i+1) with A the
  aligned estimate; rotation error = angle of E_i in degrees, translation error = ||t(E_i)|| in
  metres (the estimate's steps scaled by the Sim(3) scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kp2d_ros.data.trajectory_io import read_tum, write_tum  # noqa: F401  (re-exported)
from kp2d_ros.types import Trajectory

__all__ = [
    "Alignment", "ATEResult", "RPEResult", "TrajectoryMetrics", "associate", "umeyama", "align",
    "apply_alignment", "ate", "rpe", "evaluate", "path_length", "read_tum", "write_tum",
]


@dataclass
class Alignment:
    """Similarity transform x_gt ≈ scale * rotation @ x_est + translation.

    Attributes
    ----------
    rotation : (3, 3), translation : (3,), scale : float (1.0 for SE(3)).
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float = 1.0

    def matrix(self) -> np.ndarray:
        """(4, 4) similarity matrix [sR t; 0 1]."""
        S = np.eye(4)
        S[:3, :3] = self.scale * self.rotation
        S[:3, 3] = self.translation
        return S


@dataclass
class ATEResult:
    """Absolute trajectory error after alignment.

    Attributes
    ----------
    rmse, mean, median, max : metres.
    errors : (N,) per-frame translation errors (m).
    alignment : the SE(3)/Sim(3) applied to the estimate.
    """

    rmse: float
    mean: float
    median: float
    max: float
    errors: np.ndarray
    alignment: Alignment


@dataclass
class RPEResult:
    """Relative pose error over consecutive associated frames.

    Attributes
    ----------
    rot_rmse_deg, trans_rmse_m : RMSE of the per-pair rotation (deg) / translation (m) errors.
    rot_errors_deg, trans_errors_m : (N-1,) per-pair errors.
    """

    rot_rmse_deg: float
    trans_rmse_m: float
    rot_errors_deg: np.ndarray
    trans_errors_m: np.ndarray


@dataclass
class TrajectoryMetrics:
    """Everything :func:`evaluate` computes.

    Attributes
    ----------
    ate, rpe : results (rpe None with fewer than two matched frames).
    matched : number of associated estimate/GT pairs.
    est_aligned : the associated estimate after alignment; gt : the associated ground truth.
    gt_path_length_m : path length of the associated ground truth.
    """

    ate: ATEResult
    rpe: RPEResult | None
    matched: int
    est_aligned: Trajectory
    gt: Trajectory
    gt_path_length_m: float


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else float("nan")


def path_length(traj: Trajectory) -> float:
    """Sum of the distances between consecutive positions."""
    p = np.asarray(traj.poses)[:, :3, 3]
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0


def associate(est: Trajectory, gt: Trajectory, max_diff: float = 0.01,
              offset: float = 0.0) -> tuple[Trajectory, Trajectory]:
    """Pair poses of ``est`` and ``gt`` by time stamp.

    Each stamp of the shorter trajectory is paired with the nearest stamp of the longer one
    (``gt`` stamps shifted by ``offset``) when they differ by at most ``max_diff`` seconds; every
    stamp is used at most once (the closer candidate wins).

    Returns
    -------
    (est_matched, gt_matched) : trajectories of equal length M, in time order of the estimate.
    """
    t_est = np.asarray(est.stamps, dtype=np.float64)
    t_gt = np.asarray(gt.stamps, dtype=np.float64) + offset
    swap = t_est.shape[0] > t_gt.shape[0]
    short, long_ = (t_gt, t_est) if swap else (t_est, t_gt)
    pairs = []
    if short.size and long_.size:
        order = np.argsort(long_, kind="stable")
        sorted_long = long_[order]
        hi = np.clip(np.searchsorted(sorted_long, short), 0, sorted_long.size - 1)
        lo = np.clip(hi - 1, 0, sorted_long.size - 1)
        near = np.where(np.abs(sorted_long[lo] - short) <= np.abs(sorted_long[hi] - short), lo, hi)
        diff = np.abs(sorted_long[near] - short)
        used: dict[int, tuple[float, int]] = {}
        for i in np.flatnonzero(diff <= max_diff):
            j = int(order[near[i]])
            if j not in used or diff[i] < used[j][0]:
                used[j] = (float(diff[i]), int(i))
        pairs = [(i, j) for j, (_, i) in used.items()]
    if swap:
        pairs = [(j, i) for i, j in pairs]  # -> (est index, gt index)
    pairs.sort()
    ie = np.array([p[0] for p in pairs], dtype=np.int64)
    ig = np.array([p[1] for p in pairs], dtype=np.int64)
    return (Trajectory(stamps=np.asarray(est.stamps, dtype=np.float64)[ie], poses=np.asarray(est.poses)[ie]),
            Trajectory(stamps=np.asarray(gt.stamps, dtype=np.float64)[ig], poses=np.asarray(gt.poses)[ig]))


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Alignment:
    """Least-squares similarity (Umeyama 1991) with dst ≈ s R src + t.

    Parameters
    ----------
    src, dst : (N, 3) corresponding points, N >= 3 non-collinear for a unique rotation.
    with_scale : estimate s (Sim(3)); otherwise s = 1 (SE(3)).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 2:
        raise ValueError(f"umeyama: need two (N, 3) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    n = src.shape[0]
    cov = xd.T @ xs / n
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_s = np.mean(np.sum(xs * xs, axis=1))
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_d - s * R @ mu_s
    return Alignment(rotation=R, translation=t, scale=s)


def apply_alignment(traj: Trajectory, alignment: Alignment) -> Trajectory:
    """Poses of ``traj`` mapped by the similarity: R_i -> R R_i, p_i -> s R p_i + t."""
    poses = np.array(traj.poses, dtype=np.float64, copy=True)
    poses[:, :3, :3] = alignment.rotation @ poses[:, :3, :3]
    poses[:, :3, 3] = alignment.scale * poses[:, :3, 3] @ alignment.rotation.T + alignment.translation
    return Trajectory(stamps=np.asarray(traj.stamps, dtype=np.float64).copy(), poses=poses)


def align(est: Trajectory, gt: Trajectory, correct_scale: bool = True) -> Alignment:
    """Umeyama alignment of the (already associated) estimate's positions onto the GT's."""
    return umeyama(np.asarray(est.poses)[:, :3, 3], np.asarray(gt.poses)[:, :3, 3], with_scale=correct_scale)


def ate(est: Trajectory, gt: Trajectory, correct_scale: bool = True, alignment: Alignment | None = None) -> ATEResult:
    """Absolute trajectory error of associated trajectories (same length), aligned first."""
    if alignment is None:
        alignment = align(est, gt, correct_scale)
    aligned = apply_alignment(est, alignment)
    err = np.linalg.norm(aligned.poses[:, :3, 3] - np.asarray(gt.poses)[:, :3, 3], axis=1)
    return ATEResult(rmse=_rmse(err), mean=float(err.mean()), median=float(np.median(err)), max=float(err.max()),
                     errors=err, alignment=alignment)


def _relative(poses: np.ndarray) -> np.ndarray:
    """(N-1, 4, 4) steps T_i^-1 T_i+1."""
    return np.linalg.inv(poses[:-1]) @ poses[1:]


def rpe(est: Trajectory, gt: Trajectory, alignment: Alignment | None = None) -> RPEResult:
    """Per-frame relative pose error of associated trajectories (same length >= 2).

    ``alignment`` (e.g. the Sim(3) of :func:`ate`) is applied to the estimate first; only its
    scale changes the result.
    """
    e = np.asarray(est.poses if alignment is None else apply_alignment(est, alignment).poses)
    g = np.asarray(gt.poses)
    E = np.linalg.inv(_relative(g)) @ _relative(e)
    trans = np.linalg.norm(E[:, :3, 3], axis=1)
    rot = np.degrees(Rotation.from_matrix(E[:, :3, :3]).magnitude()) if len(E) else np.zeros(0)
    return RPEResult(rot_rmse_deg=_rmse(rot), trans_rmse_m=_rmse(trans), rot_errors_deg=rot, trans_errors_m=trans)


def evaluate(est: Trajectory, gt: Trajectory, *, max_diff: float = 0.01,
             correct_scale: bool = True) -> TrajectoryMetrics:
    """Associate, align (Sim(3) by default) and compute ATE and per-frame RPE.

    Raises
    ------
    ValueError
        fewer than 3 associated poses.
    """
    est_m, gt_m = associate(est, gt, max_diff=max_diff)
    if len(est_m) < 3:
        raise ValueError(f"only {len(est_m)} estimated poses have ground truth within {max_diff} s; need 3")
    a = ate(est_m, gt_m, correct_scale=correct_scale)
    r = rpe(est_m, gt_m, alignment=a.alignment)
    return TrajectoryMetrics(ate=a, rpe=r, matched=len(est_m), est_aligned=apply_alignment(est_m, a.alignment),
                             gt=gt_m, gt_path_length_m=path_length(gt_m))
