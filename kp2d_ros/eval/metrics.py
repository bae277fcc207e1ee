"""Trajectory metrics: timestamp association, Umeyama SE(3)/Sim(3) alignment, ATE and RPE.

Monocular VO recovers the trajectory up to scale, so it is scored after a Sim(3) alignment
(``correct_scale=True``), as ``evo_ape --align --correct_scale`` does. Poses are 4x4
``T_world_cam`` (camera-to-world).

* ATE: RMSE of ||p_gt_i - (s R p_est_i + t)|| over the associated frames.
* RPE (per frame, delta = 1 associated frame): E_i = (G_i^-1 G_i+1)^-1 (A_i^-1 A_i+1) with A the
  aligned estimate; rotation error = angle of E_i in degrees, translation error = ||t(E_i)|| in
  metres (the estimate's steps scaled by the Sim(3) scale).

Metric evaluation (no scale fitted, for odometry that claims metres):

* ATE after an SE(3) alignment (``ate_se3``) and the Sim(3) scale (1.0 means the estimate is metric);
* KITTI-style drift over sub-trajectories of ``segment_m`` metres of ground-truth path: every associated
  frame i starts one, ending at the frame j whose path distance from i is nearest to ``segment_m`` (within
  10%, as ``evo_rpe --delta L --delta_unit m --all_pairs`` with pairs from the reference). Each is aligned at
  its first pose and the error E = (G_i^-1 G_j)^-1 (P_i^-1 P_j) is taken at its last:
  ``drift_pct`` = mean of 100 ||t(E)|| / length, ``drift_deg_per_m`` = mean of angle(E) / length, with the
  length the segment's ground-truth path length. The estimate is used as it is (no scale): a scale-free
  monocular run shows its scale error here.

:func:`evaluate` computes all of it and :func:`metrics_report` turns it into the report keys that
``kp2d replay`` (and any evaluation of a saved trajectory) writes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kp2d_ros.data.trajectory_io import read_tum, write_tum  # noqa: F401  (re-exported)
from kp2d_ros.types import Trajectory

__all__ = [
    "Alignment", "ATEResult", "RPEResult", "TrajectoryMetrics", "associate", "umeyama", "align",
    "apply_alignment", "ate", "rpe", "evaluate", "path_length", "read_tum", "write_tum", "DriftResult",
    "segment_pairs", "choose_segment_length", "drift", "metrics_report", "is_metric", "METRIC_KEYS",
    "SEGMENT_LENGTHS_M", "METRIC_SCALE_TOL",
]

SEGMENT_LENGTHS_M = (100.0, 50.0, 25.0, 10.0)  # drift segment lengths, longest first
MIN_SEGMENTS = 5  # a shorter length is taken when the path gives fewer segments
SEGMENT_REL_TOL = 0.1  # a segment's path length may differ from segment_m by 10% (evo's rel_delta_tol)
METRIC_SCALE_TOL = 0.05  # |sim3_scale - 1| at most this: the estimate counts as metric (plot un-rescaled)

# the ground-truth keys of a report, in order (all None without ground truth)
METRIC_KEYS = ("path_length_m", "ate_rmse_m", "rpe_rot_deg", "rpe_trans_m", "ate_se3_m", "sim3_scale",
               "drift_pct", "drift_deg_per_m", "segment_m")


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
class DriftResult:
    """KITTI-style drift over sub-trajectories of one length (see the module docstring).

    Attributes
    ----------
    segment_m : nominal segment length (m of ground-truth path).
    trans_pct : mean translational error relative to the segment length, %.
    rot_deg_per_m : mean rotational error per metre of segment, deg/m.
    pairs : (K, 2) first/last associated frame index of each segment.
    lengths_m, trans_errors_m, rot_errors_deg : (K,) per segment.
    """

    segment_m: float
    trans_pct: float
    rot_deg_per_m: float
    pairs: np.ndarray
    lengths_m: np.ndarray
    trans_errors_m: np.ndarray
    rot_errors_deg: np.ndarray

    @property
    def num_segments(self) -> int:
        return int(len(self.pairs))


@dataclass
class TrajectoryMetrics:
    """Everything :func:`evaluate` computes.

    Attributes
    ----------
    ate, rpe : results (rpe None with fewer than two matched frames).
    matched : number of associated estimate/GT pairs.
    est_aligned : the associated estimate after alignment; gt : the associated ground truth.
    gt_path_length_m : path length of the associated ground truth.
    ate_se3 : ATE after an SE(3) alignment (no scale); est_aligned_se3 : the estimate under it.
    drift : KITTI-style drift of the un-rescaled estimate, None when the path gives no segment.
    """

    ate: ATEResult
    rpe: RPEResult | None
    matched: int
    est_aligned: Trajectory
    gt: Trajectory
    gt_path_length_m: float
    ate_se3: ATEResult | None = None
    est_aligned_se3: Trajectory | None = None
    drift: DriftResult | None = None

    @property
    def sim3_scale(self) -> float:
        """The scale that the Sim(3) alignment applies to the estimate (1.0: metric)."""
        return float(self.ate.alignment.scale)


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


def _path_distances(traj: Trajectory) -> np.ndarray:
    """(N,) accumulated path length at every pose."""
    p = np.asarray(traj.poses)[:, :3, 3]
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]) if len(p) else np.zeros(0)


def segment_pairs(gt: Trajectory, segment_m: float, rel_tol: float = SEGMENT_REL_TOL) -> np.ndarray:
    """(K, 2) frame pairs (i, j) whose ground-truth path length is nearest to ``segment_m`` from each start i,
    kept when it differs from ``segment_m`` by at most ``rel_tol * segment_m``."""
    d = _path_distances(gt)
    pairs = []
    for i in range(len(d) - 1):
        ahead = d[i + 1:] - d[i]
        k = int(np.argmin(np.abs(ahead - segment_m)))
        if abs(ahead[k] - segment_m) <= rel_tol * segment_m:
            pairs.append((i, i + 1 + k))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def choose_segment_length(gt: Trajectory, lengths=SEGMENT_LENGTHS_M, min_segments: int = MIN_SEGMENTS) -> float | None:
    """The longest of ``lengths`` (100 m where the path allows, else 50/25/10 m) that the ground-truth path
    covers (path length >= it) and that gives at least ``min_segments`` segments; None when none does."""
    total = path_length(gt)
    for length in sorted(lengths, reverse=True):
        if total >= length and len(segment_pairs(gt, length)) >= min_segments:
            return float(length)
    return None


def drift(est: Trajectory, gt: Trajectory, segment_m: float | None = None, scale: float = 1.0) -> DriftResult | None:
    """KITTI-style drift of associated trajectories (same length) over segments of ``segment_m``.

    Parameters
    ----------
    est, gt : associated estimate and ground truth (``T_world_cam``).
    segment_m : segment length; None chooses it with :func:`choose_segment_length`.
    scale : applied to the estimate's translations first (1.0: the estimate as it is, metric drift).

    Returns
    -------
    DriftResult, or None when no segment length fits the path.
    """
    if segment_m is None:
        segment_m = choose_segment_length(gt)
        if segment_m is None:
            return None
    pairs = segment_pairs(gt, segment_m)
    if len(pairs) == 0:
        return None
    e = np.array(est.poses, dtype=np.float64, copy=True)
    e[:, :3, 3] *= scale
    g = np.asarray(gt.poses, dtype=np.float64)
    i, j = pairs[:, 0], pairs[:, 1]
    E = np.linalg.inv(np.linalg.inv(g[i]) @ g[j]) @ (np.linalg.inv(e[i]) @ e[j])
    trans = np.linalg.norm(E[:, :3, 3], axis=1)
    rot = np.degrees(Rotation.from_matrix(E[:, :3, :3]).magnitude())
    d = _path_distances(gt)
    lengths = d[j] - d[i]
    return DriftResult(segment_m=float(segment_m), trans_pct=float(np.mean(100.0 * trans / lengths)),
                       rot_deg_per_m=float(np.mean(rot / lengths)), pairs=pairs, lengths_m=lengths,
                       trans_errors_m=trans, rot_errors_deg=rot)


def evaluate(est: Trajectory, gt: Trajectory, *, max_diff: float = 0.01,
             correct_scale: bool = True) -> TrajectoryMetrics:
    """Associate, align (Sim(3) by default) and compute ATE and per-frame RPE, plus the metric evaluation:
    ATE after SE(3) alignment and the drift of the un-rescaled estimate.

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
    a_se3 = ate(est_m, gt_m, correct_scale=False)
    return TrajectoryMetrics(ate=a, rpe=r, matched=len(est_m), est_aligned=apply_alignment(est_m, a.alignment),
                             gt=gt_m, gt_path_length_m=path_length(gt_m), ate_se3=a_se3,
                             est_aligned_se3=apply_alignment(est_m, a_se3.alignment), drift=drift(est_m, gt_m))


def is_metric(m: TrajectoryMetrics, tol: float = METRIC_SCALE_TOL) -> bool:
    """True when the Sim(3) scale is within ``tol`` of 1 (the estimate is in metres)."""
    return bool(np.isfinite(m.sim3_scale) and abs(m.sim3_scale - 1.0) <= tol)


def metrics_report(m: TrajectoryMetrics | None) -> dict:
    """The ground-truth part of a report, exactly :data:`METRIC_KEYS` (all None when ``m`` is None):

    ``path_length_m`` ground-truth path length over the evaluated frames; ``ate_rmse_m`` ATE RMSE after
    Sim(3) alignment; ``rpe_rot_deg``/``rpe_trans_m`` per-frame RPE RMSE (translation after the Sim(3)
    scale); ``ate_se3_m`` ATE RMSE after SE(3) alignment (no scale); ``sim3_scale`` the Sim(3) scale
    (1.0 = metric); ``drift_pct``/``drift_deg_per_m`` KITTI-style drift of the un-rescaled estimate over
    ``segment_m`` metres (None when the path is too short for 5 segments of 10 m).

    ``segment_m`` is the longest of 100/50/25/10 m that the path covers and that gives at least 5 segments.
    """
    if m is None:
        return dict.fromkeys(METRIC_KEYS)
    d = m.drift
    return {
        "path_length_m": m.gt_path_length_m,
        "ate_rmse_m": m.ate.rmse,
        "rpe_rot_deg": None if m.rpe is None else m.rpe.rot_rmse_deg,
        "rpe_trans_m": None if m.rpe is None else m.rpe.trans_rmse_m,
        "ate_se3_m": None if m.ate_se3 is None else m.ate_se3.rmse,
        "sim3_scale": m.sim3_scale,
        "drift_pct": None if d is None else d.trans_pct,
        "drift_deg_per_m": None if d is None else d.rot_deg_per_m,
        "segment_m": None if d is None else d.segment_m,
    }
