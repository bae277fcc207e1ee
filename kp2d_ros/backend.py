"""Local bundle adjustment: a sliding window of keyframes and the landmarks they track.

The front end (:class:`kp2d_ros.pipeline.VOPipeline`) poses every frame against one keyframe and
triangulates each keyframe pair's inliers. Here those points become *landmarks*: a point keeps its
identity while consecutive keyframes match it, and collects one observation per keyframe. After each
new keyframe the last ``backend.window`` keyframes and the landmarks they observe are refined jointly
(GTSAM, Levenberg-Marquardt) on their reprojection errors, with a robust kernel (Cauchy or Huber):

    min  sum_{k, j}  rho( || pi(T_world_cam_k^-1 X_j) - x_kj ||^2 / sigma^2 )

over the poses ``T_world_cam_k`` of the window's newer keyframes and the landmark positions ``X_j``.
``pi`` projects to normalised coordinates (the front end undistorts every keypoint first, so every
camera model shares this residual) and ``sigma`` is ``backend.noise_px`` over the focal length.

Gauge: the ``backend.fixed_keyframes`` oldest keyframes of the window (at least two) are held; two
fixed poses pin the trajectory's position, orientation *and scale*, so the window cannot slide or
rescale what was already published. Observations that still reproject beyond
``backend.max_reprojection_px`` after the optimisation are removed from the map (a second,
outlier-free optimisation follows), and so are landmarks behind a camera.

Everything here is pure data in, data out (:func:`bundle_adjust` on a :class:`WindowProblem`
snapshot), so the optimisation can run on a worker thread (:class:`BackendWorker`) while the
front end goes on: :meth:`LocalMap.apply` moves keyframes created in the meantime with the
correction of the newest optimised one.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from kp2d_ros.config import BackendConfig
from kp2d_ros.geometry import invert_se3

log = logging.getLogger(__name__)

MIN_KEYFRAME_OBSERVATIONS = 10  # a free keyframe with fewer landmark observations stays out of the window


@dataclass
class Landmark:
    """A 3-D point tracked across keyframes.

    position : (3,) world coordinates (trajectory units).
    observations : keyframe id -> (2,) normalised image coordinates in that keyframe.
    """

    position: np.ndarray
    observations: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowProblem:
    """A snapshot of the window, independent of the live map (safe to optimise on another thread).

    keyframe_ids : (K,) oldest first. poses : (K, 4, 4) their ``T_world_cam``. num_fixed : how many of
    the oldest are held. landmark_ids : (L,). positions : (L, 3). obs_keyframe : (M,) index into
    ``keyframe_ids``; obs_landmark : (M,) index into ``landmark_ids``; obs_xy : (M, 2) normalised
    coordinates. sigma : the observation noise in normalised units. k1 : the residual radial distortion the
    observations are modelled with (``x_obs = x (1 + k1 |x|^2)``, x the projection), and its starting value when
    ``calibrate``: then the window estimates it too.
    """

    keyframe_ids: np.ndarray
    poses: np.ndarray
    num_fixed: int
    landmark_ids: np.ndarray
    positions: np.ndarray
    obs_keyframe: np.ndarray
    obs_landmark: np.ndarray
    obs_xy: np.ndarray
    sigma: float
    k1: float = 0.0
    calibrate: bool = False


@dataclass
class BAResult:
    """What one window optimisation did.

    optimised : False when the window was skipped; ``reason`` then says why.
    poses : keyframe id -> refined (4, 4) ``T_world_cam`` (the fixed ones included, unchanged).
    positions : landmark id -> refined (3,) position.
    rejected : (landmark id, keyframe id) observations culled as outliers.
    error_px_before, error_px_after : median reprojection error of the kept observations (pixels at
        the configured focal length).
    """

    optimised: bool
    reason: str = ""
    poses: dict[int, np.ndarray] = field(default_factory=dict)
    positions: dict[int, np.ndarray] = field(default_factory=dict)
    rejected: list[tuple[int, int]] = field(default_factory=list)
    num_keyframes: int = 0
    num_landmarks: int = 0
    num_observations: int = 0
    error_px_before: float = float("nan")
    error_px_after: float = float("nan")
    iterations: int = 0
    time_ms: float = 0.0
    k1: float | None = None  # the window's estimate of the residual radial distortion (self-calibration)


class LocalMap:
    """The poses of the window's keyframes and the landmarks they observe."""

    def __init__(self, cfg: BackendConfig, first_keyframe_id: int = 0):
        self.cfg = cfg
        self.poses: dict[int, np.ndarray] = {}
        self.landmarks: dict[int, Landmark] = {}
        self._next_kf = first_keyframe_id  # ids never repeat across maps: a late result cannot hit a new map
        self._next_lm = 0
        self.revision = 0  # bumped by every applied optimisation

    @property
    def next_keyframe_id(self) -> int:
        return self._next_kf

    # ------------------------------------------------------------------------------------
    def add_keyframe(self, T_world_cam: np.ndarray) -> int:
        kid = self._next_kf
        self._next_kf += 1
        self.poses[kid] = np.array(T_world_cam, float)
        self._forget_old()
        return kid

    def add_landmark(self, position: np.ndarray, observations: dict[int, np.ndarray]) -> int:
        lid = self._next_lm
        self._next_lm += 1
        self.landmarks[lid] = Landmark(np.array(position, float), {k: np.asarray(v, float) for k, v in observations.items()})
        return lid

    def observe(self, landmark_id: int, keyframe_id: int, xy: np.ndarray) -> None:
        lm = self.landmarks.get(int(landmark_id))
        if lm is not None:
            lm.observations[keyframe_id] = np.asarray(xy, float)

    def rescale(self, k: float) -> None:
        """Change the trajectory's unit: keyframe positions and landmarks x ``k`` (the world origin stays)."""
        for T in self.poses.values():
            T[:3, 3] *= k
        for lm in self.landmarks.values():
            lm.position = lm.position * k

    def window_ids(self) -> list[int]:
        """The ids of the last ``window`` keyframes, oldest first."""
        ids = sorted(self.poses)
        return ids[-self.cfg.window:] if self.cfg.window > 0 else []

    def _forget_old(self) -> None:
        """Drop the keyframes before the window and the landmarks no keyframe of the window observes any more."""
        window = set(self.window_ids())
        if not window:
            return
        oldest = min(window)
        for k in [k for k in self.poses if k < oldest]:
            del self.poses[k]
        for lid in [lid for lid, lm in self.landmarks.items() if max(lm.observations, default=-1) < oldest]:
            del self.landmarks[lid]

    # ------------------------------------------------------------------------------------
    def problem(self, sigma: float, k1: float = 0.0, calibrate: bool = False) -> WindowProblem | BAResult:
        """A snapshot of the window for :func:`bundle_adjust`, or a skipped :class:`BAResult` saying why."""
        cfg = self.cfg
        ids = self.window_ids()
        num_fixed = min(max(cfg.fixed_keyframes, 2), len(ids))
        if len(ids) - num_fixed < 1:
            return BAResult(False, f"{len(ids)} keyframes in the window: none to optimise beyond the {num_fixed} fixed")
        window = set(ids)
        tracks = [(lid, lm, [k for k in lm.observations if k in window]) for lid, lm in self.landmarks.items()]
        tracks = [t for t in tracks if len(t[2]) >= 2]
        if len(tracks) > cfg.max_landmarks:
            tracks = [tracks[i] for i in _select_tracks([t[2] for t in tracks], [t[0] for t in tracks], ids,
                                                        cfg.max_landmarks)]
        counts = dict.fromkeys(ids, 0)
        for _, _, seen in tracks:
            for k in seen:
                counts[k] += 1
        # a free keyframe needs observations to be posed (one restarted after a loss has none)
        ids = ids[:num_fixed] + [k for k in ids[num_fixed:] if counts[k] >= MIN_KEYFRAME_OBSERVATIONS]
        if len(ids) == num_fixed:
            return BAResult(False, "no keyframe beyond the fixed ones observes enough landmarks",
                            num_keyframes=len(ids))
        index = {k: i for i, k in enumerate(ids)}
        tracks = [(lid, lm, [k for k in seen if k in index]) for lid, lm, seen in tracks]
        tracks = [t for t in tracks if len(t[2]) >= 2]
        lids, pos, ok, ol, oxy = [], [], [], [], []
        for lid, lm, seen in tracks:
            j = len(lids)
            lids.append(lid)
            pos.append(lm.position)
            for k in seen:
                ok.append(index[k])
                ol.append(j)
                oxy.append(lm.observations[k])
        if len(lids) < cfg.min_landmarks:
            return BAResult(False, f"{len(lids)} landmarks seen twice in the window (backend.min_landmarks: {cfg.min_landmarks})",
                            num_keyframes=len(ids), num_landmarks=len(lids))
        return WindowProblem(np.array(ids), np.stack([self.poses[k] for k in ids]), num_fixed, np.array(lids),
                             np.array(pos, float).reshape(-1, 3), np.array(ok, int), np.array(ol, int),
                             np.array(oxy, float).reshape(-1, 2), float(sigma), float(k1), bool(calibrate))

    def apply(self, result: BAResult) -> bool:
        """Take an optimisation's poses and positions. Keyframes created after its snapshot move rigidly with
        the newest optimised keyframe; culled observations are removed, and landmarks left with fewer than
        two observations with them. Returns False (nothing taken) for a skipped window, or a stale one: its
        newest keyframe has left the window, or belongs to a map reset since."""
        if not result.optimised or max(result.poses, default=-1) not in self.poses:
            return False
        newest = max(result.poses)
        correction = result.poses[newest] @ invert_se3(self.poses[newest])
        for k in self.poses:
            if k in result.poses:
                self.poses[k] = result.poses[k].copy()
            elif k > newest:
                self.poses[k] = correction @ self.poses[k]
        for lid, p in result.positions.items():
            if lid in self.landmarks:
                self.landmarks[lid].position = p.copy()
        for lid, lm in self.landmarks.items():  # landmarks made since the snapshot
            if lid not in result.positions and min(lm.observations, default=-1) > newest:
                lm.position = correction[:3, :3] @ lm.position + correction[:3, 3]
        for lid, k in result.rejected:
            lm = self.landmarks.get(lid)
            if lm is not None:
                lm.observations.pop(k, None)
                if len(lm.observations) < 2:
                    del self.landmarks[lid]
        self.revision += 1
        return True


def _select_tracks(seen: list[list[int]], lids: list[int], ids: list[int], limit: int) -> list[int]:
    """Indices of at most ``limit`` tracks (``seen``: the window keyframes each is observed in): longer tracks
    first (they carry the scale from keyframe to keyframe), newer first; but every keyframe of the window, the
    fixed ones above all, first gets its share (``limit / 2K``) of the tracks it observes. Without that the
    newest keyframes' tracks fill the budget, the oldest (fixed) keyframes observe nothing, and the window has
    no gauge."""
    order = sorted(range(len(seen)), key=lambda i: (-min(len(seen[i]), 4), -lids[i]))
    quota = max(limit // (2 * max(len(ids), 1)), 1)
    # an ordered set: each keyframe's first ``quota`` observing tracks (shared ones counted for each), then the rest
    chosen = dict.fromkeys(i for k in ids for i in islice((j for j in order if k in seen[j]), quota))
    chosen.update(dict.fromkeys(order))
    return sorted(list(chosen)[:limit])


# ----------------------------------------------------------------------------------------
def reprojection_errors(problem: WindowProblem, poses: np.ndarray, points: np.ndarray,
                        k1: float | None = None) -> np.ndarray:
    """(M,) reprojection error of every observation of ``problem`` (normalised units; inf behind the camera)
    for keyframe poses ``poses`` (K, 4, 4) ``T_world_cam``, landmark positions ``points`` (L, 3) and the
    residual radial distortion ``k1`` (default: the problem's)."""
    k1 = problem.k1 if k1 is None else k1
    T = np.stack([invert_se3(P) for P in poses])
    Xc = np.einsum("mij,mj->mi", T[problem.obs_keyframe, :3, :3], points[problem.obs_landmark]) \
        + T[problem.obs_keyframe, :3, 3]
    z = Xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = Xc[:, :2] / z[:, None]
        x = x * (1.0 + k1 * (x * x).sum(1))[:, None]
        e = np.linalg.norm(x - problem.obs_xy, axis=1)
    return np.where(z > 1e-9, e, np.inf)


def bundle_adjust(problem: WindowProblem, cfg: BackendConfig, focal_px: float = 1.0) -> BAResult:
    """Refine the window's free keyframe poses and its landmarks (see the module docstring).

    ``focal_px`` only converts the reported errors and ``max_reprojection_px`` to pixels. Two passes:
    the robust optimisation, then, without the culled observations, a second one.
    """
    import gtsam
    from gtsam.symbol_shorthand import C, L, X

    t0 = time.perf_counter()
    K = gtsam.Cal3_S2(1.0, 1.0, 0.0, 0.0, 0.0)
    base = gtsam.noiseModel.Isotropic.Sigma(2, problem.sigma)
    k = cfg.kernel_px / max(cfg.noise_px, 1e-9)  # in units of sigma
    kernel = (gtsam.noiseModel.mEstimator.Cauchy.Create(k) if cfg.kernel == "cauchy"
              else gtsam.noiseModel.mEstimator.Huber.Create(k))
    robust = gtsam.noiseModel.Robust.Create(kernel, base)
    n_kf, n_lm = len(problem.keyframe_ids), len(problem.landmark_ids)
    keep = np.ones(len(problem.obs_xy), bool)
    values = gtsam.Values()
    for i in range(n_kf):
        values.insert(X(i), gtsam.Pose3(problem.poses[i]))
    for j in range(n_lm):
        values.insert(L(j), gtsam.Point3(*problem.positions[j]))

    calibrate = problem.calibrate
    if calibrate:  # the residual radial distortion as Bundler's (f = 1, k1, k2 = 0) on normalised coordinates
        values.insert(C(0), gtsam.Cal3Bundler(1.0, problem.k1, 0.0, 0.0, 0.0))
        calib_prior = gtsam.noiseModel.Diagonal.Sigmas(np.array([1e-9, cfg.k1_prior_sigma, 1e-9]))

    def k1_of(vals) -> float:
        return float(vals.atCal3Bundler(C(0)).k1()) if calibrate else problem.k1

    def errors(vals) -> np.ndarray:
        return reprojection_errors(problem, np.stack([vals.atPose3(X(i)).matrix() for i in range(n_kf)]),
                                   np.stack([vals.atPoint3(L(j)) for j in range(n_lm)]).reshape(-1, 3), k1_of(vals))

    def optimise(vals, mask) -> tuple[gtsam.Values, int]:
        graph = gtsam.NonlinearFactorGraph()
        for i in range(problem.num_fixed):
            graph.add(gtsam.NonlinearEqualityPose3(X(i), gtsam.Pose3(problem.poses[i])))
        if calibrate:
            graph.add(gtsam.PriorFactorCal3Bundler(C(0), gtsam.Cal3Bundler(1.0, 0.0, 0.0, 0.0, 0.0), calib_prior))
            for m in np.flatnonzero(mask):
                graph.add(gtsam.GeneralSFMFactor2Cal3Bundler(problem.obs_xy[m], robust, X(int(problem.obs_keyframe[m])),
                                                             L(int(problem.obs_landmark[m])), C(0)))
        else:
            for m in np.flatnonzero(mask):
                graph.add(gtsam.GenericProjectionFactorCal3_S2(problem.obs_xy[m], robust, X(int(problem.obs_keyframe[m])),
                                                               L(int(problem.obs_landmark[m])), K))
        # a landmark left with fewer than two observations, or a keyframe with too few, would be
        # unconstrained: hold it where it is (weakly)
        counts = np.bincount(problem.obs_landmark[mask], minlength=n_lm)
        weak = gtsam.noiseModel.Isotropic.Sigma(3, 1e3)
        for j in np.flatnonzero(counts < 2):
            graph.add(gtsam.PriorFactorPoint3(L(int(j)), vals.atPoint3(L(int(j))), weak))
        views = np.bincount(problem.obs_keyframe[mask], minlength=n_kf)
        weak_pose = gtsam.noiseModel.Isotropic.Sigma(6, 1e3)
        for i in range(problem.num_fixed, n_kf):
            if views[i] < 3:
                graph.add(gtsam.PriorFactorPose3(X(i), vals.atPose3(X(i)), weak_pose))
        params = gtsam.LevenbergMarquardtParams()
        params.setMaxIterations(cfg.max_iterations)
        # sequential Cholesky: ~2.5x faster than the multifrontal default on a 2-core CPU (10 keyframes,
        # 500 landmarks, 3900 observations: 0.32 vs 0.84 s for 5 iterations, same solution)
        params.setLinearSolverType("SEQUENTIAL_CHOLESKY")
        opt = gtsam.LevenbergMarquardtOptimizer(graph, vals, params)
        with _quiet_stdout(calibrate):  # GeneralSFMFactor2 prints every cheirality failure to std::cout
            out = opt.optimize()
        return out, int(opt.iterations())

    before = errors(values)
    limit = cfg.max_reprojection_px * problem.sigma / max(cfg.noise_px, 1e-9)
    keep &= np.isfinite(before)
    try:
        values, iters = optimise(values, keep)
        err = errors(values)
        keep &= err <= limit
        if (~keep).any() and keep.any():
            values, more = optimise(values, keep)
            iters += more
            err = errors(values)
            keep &= err <= limit
    except (RuntimeError, ValueError) as e:  # gtsam: indeterminant system, cheirality, ...
        return BAResult(False, f"optimisation failed: {e}".splitlines()[0], num_keyframes=n_kf, num_landmarks=n_lm,
                        num_observations=int(len(keep)), time_ms=(time.perf_counter() - t0) * 1e3)
    to_px = focal_px
    result = BAResult(True, num_keyframes=n_kf, num_landmarks=n_lm, num_observations=int(len(keep)),
                      error_px_before=float(np.median(before[np.isfinite(before)]) * to_px) if np.isfinite(before).any() else float("nan"),
                      error_px_after=float(np.median(err[keep]) * to_px) if keep.any() else float("nan"),
                      iterations=iters, k1=k1_of(values) if calibrate else None)
    for i, k in enumerate(problem.keyframe_ids):
        result.poses[int(k)] = values.atPose3(X(i)).matrix() if i >= problem.num_fixed else problem.poses[i].copy()
    reason = _implausible(problem, result, keep, cfg)
    if reason:
        return BAResult(False, reason, num_keyframes=n_kf, num_landmarks=n_lm, num_observations=int(len(keep)),
                        error_px_before=result.error_px_before, error_px_after=result.error_px_after,
                        iterations=iters, time_ms=(time.perf_counter() - t0) * 1e3)
    for j, lid in enumerate(problem.landmark_ids):
        result.positions[int(lid)] = np.asarray(values.atPoint3(L(j)), float).copy()
    result.rejected = [(int(problem.landmark_ids[problem.obs_landmark[m]]), int(problem.keyframe_ids[problem.obs_keyframe[m]]))
                       for m in np.flatnonzero(~keep)]
    result.time_ms = (time.perf_counter() - t0) * 1e3
    return result


@contextmanager
def _quiet_stdout(active: bool = True):
    """Send file descriptor 1 to /dev/null inside the block (C++ ``std::cout`` included). The backend's worker
    is its own process; in the deterministic mode the caller's thread waits for the window meanwhile."""
    if not active:
        yield
        return
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _implausible(problem: WindowProblem, result: BAResult, keep: np.ndarray, cfg: BackendConfig) -> str:
    """Why an optimised window must not be taken ('' when it may): too many observations culled, or a
    keyframe step whose length changed by more than ``backend.max_step_change`` (a diverged window: the
    front end's steps are never that wrong)."""
    if keep.mean() < 0.7:
        return f"diverged: {100 * (1 - keep.mean()):.0f}% of the observations culled"
    if result.k1 is not None and abs(result.k1) > 5.0 * cfg.k1_prior_sigma:
        return f"diverged: radial distortion k1 {result.k1:+.3f}"
    ids = [int(k) for k in problem.keyframe_ids]
    for a, b in zip(ids[1:], ids[2:]):
        if b not in result.poses:
            continue
        before = np.linalg.norm(problem.poses[ids.index(b), :3, 3] - problem.poses[ids.index(a), :3, 3])
        after = np.linalg.norm(result.poses[b][:3, 3] - result.poses[a][:3, 3])
        if before > 0 and not (1.0 / cfg.max_step_change <= after / before <= cfg.max_step_change):
            return f"diverged: keyframe {b}'s step changed {after / max(before, 1e-12):.2f}x"
    return ""


def run_window(local_map: LocalMap, sigma: float, focal_px: float) -> BAResult:
    """Snapshot, optimise and apply in the calling thread (the deterministic mode)."""
    problem = local_map.problem(sigma)
    if isinstance(problem, BAResult):
        return problem
    result = bundle_adjust(problem, local_map.cfg, focal_px)
    local_map.apply(result)
    return result


def _lower_priority(increment: int) -> None:
    """Initializer of the worker process: run at a lower CPU priority (``backend.worker_nice``)."""
    import os

    if increment > 0:
        try:
            os.nice(increment)
        except OSError:  # not permitted here: run at the normal priority
            pass


class BackendWorker:
    """One optimisation at a time, the newest window wins, in a child process.

    :meth:`submit` hands a snapshot over (replacing one that has not started); :meth:`poll` returns a
    finished result once, or None. The map itself is only touched by the caller's thread. GTSAM's Python
    binding holds the GIL while it optimises (a Python loop on another thread ran at ~1/6 of its speed), so the
    optimisation runs in a spawned process (started once, at the first window) fed by a daemon thread: the
    front end's thread never waits for it.
    """

    def __init__(self, cfg: BackendConfig, focal_px: float = 1.0):
        self.cfg = cfg
        self.focal_px = focal_px
        self._cond = threading.Condition()
        self._pending: WindowProblem | None = None
        self._done: BAResult | None = None
        self._busy = False
        self._stop = False
        self._pool = None  # the child process, started with the first window
        self._thread = threading.Thread(target=self._run, name="vo_backend", daemon=True)
        self._thread.start()

    def _optimise(self, problem: WindowProblem, focal: float) -> BAResult:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a fork of a process running torch/rclpy threads is not safe
            # niced: on a small CPU the optimisation must not take the front end's cores (the latency of every frame)
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_lower_priority, initargs=(self.cfg.worker_nice,))
        return self._pool.submit(bundle_adjust, problem, self.cfg, focal).result()

    def submit(self, problem: WindowProblem, focal_px: float) -> None:
        with self._cond:
            self._pending = problem
            self.focal_px = focal_px
            self._cond.notify()

    def poll(self) -> BAResult | None:
        with self._cond:
            done, self._done = self._done, None
            return done

    def idle(self) -> bool:
        """Nothing pending or running (a finished result may still wait for :meth:`poll`)."""
        with self._cond:
            return self._pending is None and not self._busy

    def wait(self, timeout: float | None = None) -> BAResult | None:
        """Block until nothing is pending or running; then :meth:`poll`."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
        return self.poll()

    def close(self) -> None:
        """Stop the thread and the process (a window in progress is abandoned)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        pool, self._pool = self._pool, None
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):  # do not wait for a running window
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop)
                if self._stop:
                    return
                problem, self._pending = self._pending, None
                self._busy = True
                focal = self.focal_px
            try:
                result = self._optimise(problem, focal)
            except Exception as e:  # noqa: BLE001 - a failed window (or a terminated process) must not end the thread
                if self._stop:  # closed while optimising: the process was terminated
                    return
                log.warning("backend: window optimisation failed: %s: %s", type(e).__name__, e)
                result = BAResult(False, f"{type(e).__name__}: {e}")
            with self._cond:
                self._done = result
                self._busy = False
                self._cond.notify_all()
