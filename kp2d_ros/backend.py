"""Local bundle adjustment: a sliding window of keyframes and the landmarks they track.

The front end (:class:`kp2d_ros.pipeline.VOPipeline`) poses every frame against one keyframe and
triangulates each keyframe pair's inliers. Here those points become *landmarks*: a point keeps its
identity while consecutive keyframes match it, and collects one observation per keyframe. After each
new keyframe the last ``backend.window`` keyframes and the landmarks they observe are refined jointly
(``backend.solver``: pycolmap's Ceres bundle adjuster, or GTSAM's Levenberg-Marquardt) on their reprojection
errors, with a robust kernel (Cauchy or Huber):

    min  sum_{k, j}  rho( || pi(T_world_cam_k^-1 X_j) - x_kj ||^2 / sigma^2 )

over the poses ``T_world_cam_k`` of the window's newer keyframes and the landmark positions ``X_j``.
``pi`` projects to normalised coordinates (the front end undistorts every keypoint first, so every
camera model shares this residual) and ``sigma`` is ``backend.noise_px`` over the focal length.

A metric source of the front end (wheel odometry, the ground plane: :mod:`kp2d_ros.scale`) enters as a prior on
the distance between the two keyframes of the pair it measured, ``((|c_a - c_b| - d) / (d sigma_log))^2``
(``c`` the camera centres), so the window's scale follows the measured lengths instead of drifting from them.

A turn on the spot (the front end saw no translation between two keyframes) enters as a prior that holds the two
camera centres together (:meth:`LocalMap.add_same_centre`), and where no landmark carries the scale from one
baseline to the next (after such a turn, what is seen was first seen from the turn's one centre) the distance the
chain broke at is held as a gauge (:func:`scale_breaks`), as where the held keyframes span no baseline
(:func:`scale_gauge`).

Self-calibration (``backend.self_calibration``): a window may also estimate the lens's residual radial distortion
``k1`` (``x_obs = x (1 + k1 |x|^2)``) and, with Ceres, its standard deviation (the marginal covariance). Under
forward motion, and over a few keyframes, k1 is hardly observable: a window that measures it less precisely than
``backend.k1_prior_sigma`` is solved again with the front end's k1 held and reports none (:func:`bundle_adjust`), so
the median the front end takes of the latest windows' estimates holds only windows that measured it.

Gauge: the ``backend.fixed_keyframes`` oldest keyframes of the window (at least two; 0: half the window) are held; two
fixed poses pin the trajectory's position, orientation *and scale*, so the window cannot slide or
rescale what was already published. The newest ``window - fixed_keyframes`` are free from the start: a
window not yet full holds fewer (never under two). Observations that still reproject beyond
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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from kp2d_ros.config import BackendConfig
from kp2d_ros.geometry import invert_se3, orthonormalize_se3

log = logging.getLogger(__name__)

MIN_KEYFRAME_OBSERVATIONS = 10  # a free keyframe with fewer landmark observations stays out of the window


@dataclass(frozen=True)
class WindowProblem:
    """A snapshot of the window, independent of the live map (safe to optimise on another thread).

    keyframe_ids : (K,) oldest first. poses : (K, 4, 4) their ``T_world_cam``. num_fixed : how many of
    the oldest are held. landmark_ids : (L,). positions : (L, 3). obs_keyframe : (M,) index into
    ``keyframe_ids``; obs_landmark : (M,) index into ``landmark_ids``; obs_xy : (M, 2) normalised
    coordinates. sigma : the observation noise in normalised units. k1 : the residual radial distortion the
    observations are modelled with (``x_obs = x (1 + k1 |x|^2)``, x the projection), and its starting value when
    ``calibrate``: then the window estimates it too. distances : (D, 4) metric distance priors as rows (index a,
    index b into ``keyframe_ids``, distance, its standard deviation), in world units. same_centres : (C, 3) rows
    (index a, index b, standard deviation in world units): keyframes the front end saw turn on the spot from one to
    the other, whose camera centres a prior holds together.
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
    distances: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    same_centres: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))
    next_landmark_id: int = -1
    revision: int = -1  # the map's revision at the snapshot (-1: unknown)


@dataclass
class BAResult:
    """What one window optimisation did.

    optimised : False when the window was skipped; ``reason`` then says why.
    poses : keyframe id -> refined (4, 4) ``T_world_cam`` (the fixed ones included, unchanged).
    landmark_ids : (L,) the optimised landmarks; positions : (L, 3) their refined positions.
    rejected : (R, 2) the observations culled as outliers, as (landmark id, keyframe id) rows.
    error_px_before, error_px_after : median reprojection error of the kept observations (pixels at
        the configured focal length).
    """

    optimised: bool
    reason: str = ""
    poses: dict[int, np.ndarray] = field(default_factory=dict)
    landmark_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))
    rejected: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    num_keyframes: int = 0
    num_landmarks: int = 0
    num_observations: int = 0
    error_px_before: float = float("nan")
    error_px_after: float = float("nan")
    iterations: int = 0
    time_ms: float = 0.0
    k1: float | None = None  # the window's estimate of the residual radial distortion (self-calibration)
    # its standard deviation (Ceres' covariance at backend.noise_px; None: GTSAM, or no k1)
    k1_sigma: float | None = None
    next_landmark_id: int = -1  # the snapshot's (WindowProblem.next_landmark_id): newer landmarks were not in it
    revision: int = -1  # the snapshot's map revision (WindowProblem.revision)


@dataclass(frozen=True)
class BackendStatus:
    """How the backend keeps up (the node's diagnostics).

    windows : optimised windows taken so far (the map's revision).
    lag_keyframes : how many keyframes had been made since the snapshot of the last window taken (0: it landed at
        once; the node's windows land later when the CPU is busy, and late windows cost accuracy).
    time_ms : the last window's optimisation time.
    last : "ok", or why the last window was skipped or not taken.
    """

    windows: int
    lag_keyframes: int
    time_ms: float
    last: str


@dataclass(frozen=True)
class MapSnapshot:
    """The local map at a new keyframe (:meth:`LocalMap.snapshot`), from which :meth:`problem` builds the window's
    problem: in the node's worker process (:class:`BackendWorker`), so that selecting and ordering the window's
    tracks (~2 ms a window on KITTI 07, at nearly every keyframe of the live node) leaves the front end's thread.
    The same function builds it in the caller's thread for the deterministic and lagged modes: one problem either way.

    window_ids : the window's keyframe ids, oldest first; poses : their ``T_world_cam``. The landmark and
    observation arrays are :class:`LocalMap`'s (its attributes of the same names); distances and same_centres its
    priors; next_landmark_id and revision its watermark and revision; sigma, k1, calibrate as
    :class:`WindowProblem`'s.
    """

    cfg: BackendConfig
    window_ids: list[int]
    poses: dict[int, np.ndarray]
    landmark_ids: np.ndarray
    positions: np.ndarray
    obs_row: np.ndarray
    obs_keyframe: np.ndarray
    obs_xy: np.ndarray
    distances: dict[tuple[int, int], tuple[float, float]]
    same_centres: frozenset[tuple[int, int]]
    next_landmark_id: int
    revision: int
    sigma: float
    k1: float = 0.0
    calibrate: bool = False

    @property
    def num_fixed(self) -> int:
        """How many of the window's oldest keyframes are held: the newest ``window - held`` are free, the others, at
        least two (the gauge), are held. A window not yet full holds only what the full one would: a start-up
        keyframe is refined before it is frozen."""
        free = self.cfg.window - self.cfg.held
        return min(max(len(self.window_ids) - free, 2), len(self.window_ids))

    def too_few_keyframes(self) -> BAResult | None:
        """The skipped result of a window with no keyframe to optimise beyond the held ones (the first keyframes),
        else None: the one reason to skip that needs no look at the landmarks (the caller checks it at once)."""
        num_fixed = self.num_fixed
        if len(self.window_ids) - num_fixed < 1:
            return BAResult(False, f"{len(self.window_ids)} keyframes in the window: none to optimise beyond the "
                                   f"{num_fixed} fixed")
        return None

    def problem(self) -> WindowProblem | BAResult:
        """A snapshot of the window for :func:`bundle_adjust`, or a skipped :class:`BAResult` saying why.

        Its landmarks are those observed at least twice in the window (at most ``backend.max_landmarks``:
        :func:`_select_tracks`), in id order, and their observations in the order they were made."""
        too_few = self.too_few_keyframes()
        if too_few is not None:
            return too_few
        cfg, ids, num_fixed = self.cfg, self.window_ids, self.num_fixed
        n = len(self.landmark_ids)
        inside = np.flatnonzero(np.isin(self.obs_keyframe, ids))
        inside = inside[np.argsort(self.obs_row[inside], kind="stable")]  # by landmark, then as made
        row, kf, xy = self.obs_row.take(inside), self.obs_keyframe.take(inside), take_rows(self.obs_xy, inside)
        track = np.bincount(row, minlength=n) >= 2
        if track.sum() > cfg.max_landmarks:
            track = _select_tracks(track, row, kf, self.landmark_ids, ids, cfg.max_landmarks)
        sel = track[row]
        counts = {k: int(c) for k, c in zip(ids, (np.asarray(ids)[:, None] == kf[sel][None]).sum(1))}
        # a free keyframe needs observations to be posed (one restarted after a loss has none)
        ids = ids[:num_fixed] + [k for k in ids[num_fixed:] if counts[k] >= MIN_KEYFRAME_OBSERVATIONS]
        if len(ids) == num_fixed:
            return BAResult(False, "no keyframe beyond the fixed ones observes enough landmarks",
                            num_keyframes=len(ids))
        sel &= np.isin(kf, ids)
        track &= np.bincount(row[sel], minlength=n) >= 2
        sel &= track[row]
        rows = np.flatnonzero(track)
        if len(rows) < cfg.min_landmarks:
            return BAResult(False, f"{len(rows)} landmarks seen twice in the window (backend.min_landmarks: {cfg.min_landmarks})",
                            num_keyframes=len(ids), num_landmarks=len(rows))
        where = {k: i for i, k in enumerate(ids)}
        distances = np.array([(where[a], where[b], d, d * sig) for (a, b), (d, sig) in sorted(self.distances.items())
                              if a in where and b in where], float).reshape(-1, 4)
        poses = np.stack([self.poses[k] for k in ids])
        obs_kf, obs_lm = np.searchsorted(ids, kf[sel]), _positions_of(rows, n)[row[sel]]
        same = _same_centre_rows(self.same_centres, where, poses)
        gauge = scale_gauge(poses, num_fixed)
        if gauge is None:
            gauge = scale_breaks(poses, num_fixed, obs_kf, obs_lm, same)
        distances = np.vstack([distances, gauge])
        return WindowProblem(np.array(ids), poses, num_fixed, self.landmark_ids[rows].copy(),
                             take_rows(self.positions, rows), obs_kf, obs_lm, take_rows(xy, sel), self.sigma,
                             self.k1, self.calibrate, distances, same, self.next_landmark_id, self.revision)


class LocalMap:
    """The poses of the window's keyframes and the landmarks they observe.

    Landmarks live in arrays (the front end adds ~100-1000 per keyframe and the window holds thousands: a Python
    object per landmark cost the front end's thread ~30 ms per keyframe on KITTI). ``landmark_ids`` (N,) ascending
    (ids grow with creation and never repeat) and ``positions`` (N, 3) world coordinates; every observation is a
    row of ``obs_landmark`` (M,) landmark id, ``obs_keyframe`` (M,) keyframe id and ``obs_xy`` (M, 2) normalised
    image coordinates, in the order they were made; ``obs_row`` (M,) is each observation's row into ``positions``,
    kept up to date on every change (a lookup of all of them cost the node's thread ~1 ms per use). ``optimised``
    (N,) marks the landmarks whose position an applied window refined (the others are a pair's triangulation, or
    were moved with the keyframes made after a window's snapshot).
    """

    def __init__(self, cfg: BackendConfig, first_keyframe_id: int = 0):
        self.cfg = cfg
        self.poses: dict[int, np.ndarray] = {}
        self.landmark_ids = np.empty(0, np.int64)
        self.positions = np.empty((0, 3))
        self.optimised = np.empty(0, bool)
        self.obs_landmark = np.empty(0, np.int64)
        self.obs_keyframe = np.empty(0, np.int64)
        self.obs_xy = np.empty((0, 2))
        self.obs_row = np.empty(0, np.int64)
        self._next_kf = first_keyframe_id  # ids never repeat across maps: a late result cannot hit a new map
        self._next_lm = 0
        self.revision = 0  # bumped by every applied optimisation
        self.distances: dict[tuple[int, int], tuple[float, float]] = {}  # (keyframe a, b) -> (metres, log sigma)
        self.same_centres: set[tuple[int, int]] = set()  # (keyframe a, b): a turn on the spot from a to b
        # the similarities (centre, factor) of :meth:`rescale_about` since the last snapshot (:meth:`problem`): a window
        # that lands later was solved before them, and :meth:`apply` moves its result by them
        self._rescaled_since: list[tuple[np.ndarray, float]] = []

    @property
    def next_keyframe_id(self) -> int:
        return self._next_kf

    # ------------------------------------------------------------------------------------
    def rows(self, landmark_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows into ``positions``, alive mask) of the landmark ids (the rows of dead ids are meaningless)."""
        lids = np.asarray(landmark_ids, np.int64).reshape(-1)
        if len(self.landmark_ids) == 0:
            return np.zeros(len(lids), np.int64), np.zeros(len(lids), bool)
        rows = np.minimum(np.searchsorted(self.landmark_ids, lids), len(self.landmark_ids) - 1)
        return rows, self.landmark_ids[rows] == lids

    def add_keyframe(self, T_world_cam: np.ndarray, forget: bool = True) -> int:
        """A new keyframe at ``T_world_cam``; returns its id. With ``forget`` the keyframes it pushes out of the
        window and their landmarks are dropped now; else the caller calls :meth:`forget_old` when it has time (the
        node: after the pose has gone out)."""
        kid = self._next_kf
        self._next_kf += 1
        self.poses[kid] = np.array(T_world_cam, float)
        if forget:
            self.forget_old()
        return kid

    def add_distance(self, a: int, b: int, distance: float, log_sigma: float) -> None:
        """A metric measurement of the distance between keyframes ``a`` and ``b`` (the pair's length from wheel
        odometry or the ground plane, :attr:`kp2d_ros.scale.ScaleChoice.measured`): a prior in every window that
        holds both."""
        if a in self.poses and b in self.poses and distance > 0 and np.isfinite(distance) and log_sigma > 0:
            self.distances[(int(a), int(b))] = (float(distance), float(log_sigma))

    def add_same_centre(self, a: int, b: int) -> None:
        """The front end saw keyframe ``b`` turn on the spot from ``a`` (a pure rotation: no translation to see): a
        prior in every window that holds both keeps their camera centres together. Without it a window moved the
        keyframes of a turn apart (by up to a tenth of a driving step, a robot stopping and turning 60 deg on the
        spot), since landmarks seen only from one centre hold no baseline; what the robot drove next was then
        triangulated against that false baseline."""
        if a in self.poses and b in self.poses and a != b:
            self.same_centres.add((int(a), int(b)))

    def add_landmarks(self, positions: np.ndarray, observations: dict[int, np.ndarray]) -> np.ndarray:
        """New landmarks at ``positions`` (n, 3), each observed by every keyframe of ``observations`` (keyframe id ->
        (n, 2) normalised coordinates). Returns their (n,) ids."""
        positions = np.asarray(positions, float).reshape(-1, 3)
        n = len(positions)
        lids = np.arange(self._next_lm, self._next_lm + n, dtype=np.int64)
        self._next_lm += n
        rows = np.arange(len(self.landmark_ids), len(self.landmark_ids) + n)  # the newest ids: appended at the end
        self.landmark_ids = np.concatenate([self.landmark_ids, lids])
        self.positions = np.concatenate([self.positions, positions])
        self.optimised = np.concatenate([self.optimised, np.zeros(n, bool)])
        if observations:  # one append for all the keyframes (each copies the whole table), keyframe by keyframe
            m = len(observations)
            self._append(np.tile(lids, m), np.tile(rows, m), np.repeat(np.fromiter(observations, np.int64, m), n),
                         np.concatenate([np.asarray(xy, float).reshape(n, 2) for xy in observations.values()]))
        return lids

    def add_landmark(self, position: np.ndarray, observations: dict[int, np.ndarray]) -> int:
        """One landmark (:meth:`add_landmarks`); ``observations``: keyframe id -> (2,)."""
        return int(self.add_landmarks(np.asarray(position, float)[None],
                                      {k: np.asarray(v, float)[None] for k, v in observations.items()})[0])

    def observe(self, landmark_ids: np.ndarray, keyframe_id: int, xy: np.ndarray) -> None:
        """Keyframe ``keyframe_id`` observes the landmarks ``landmark_ids`` (n,) at ``xy`` (n, 2) (ids no longer in
        the map are ignored; a landmark it observed already moves to the new coordinates)."""
        lids = np.asarray(landmark_ids, np.int64).reshape(-1)
        xy = np.asarray(xy, float).reshape(-1, 2)
        rows, alive = self.rows(lids)
        lids, rows, xy = lids[alive], rows[alive], take_rows(xy, alive)
        if len(lids) == 0:
            return
        again = self.obs_keyframe == keyframe_id  # a new keyframe (the pipeline's case) has none: no isin over the map
        if again.any():
            again &= np.isin(self.obs_landmark, lids)
            self._keep_observations(~again)
        self._append(lids, rows, np.full(len(lids), keyframe_id, np.int64), xy)

    def _append(self, lids: np.ndarray, rows: np.ndarray, kfs: np.ndarray, xy: np.ndarray) -> None:
        self.obs_landmark = np.concatenate([self.obs_landmark, lids])
        self.obs_row = np.concatenate([self.obs_row, rows])
        self.obs_keyframe = np.concatenate([self.obs_keyframe, kfs])
        self.obs_xy = np.concatenate([self.obs_xy, xy])

    def _keep_observations(self, keep: np.ndarray) -> None:
        idx = np.flatnonzero(keep)
        self.obs_landmark, self.obs_row = self.obs_landmark.take(idx), self.obs_row.take(idx)
        self.obs_keyframe, self.obs_xy = self.obs_keyframe.take(idx), take_rows(self.obs_xy, idx)

    def _keep_landmarks(self, keep: np.ndarray) -> None:
        """Keep the landmark rows ``keep`` (N,) bool, and only their observations."""
        idx = np.flatnonzero(keep)
        self.landmark_ids, self.positions = self.landmark_ids.take(idx), take_rows(self.positions, idx)
        self.optimised = self.optimised.take(idx)
        new_row = np.cumsum(keep) - 1  # old row -> new row (kept rows only)
        kept = keep[self.obs_row]
        self._keep_observations(kept)
        self.obs_row = new_row[self.obs_row]

    def rescale(self, k: float) -> None:
        """Change the trajectory's unit: keyframe positions and landmarks x ``k`` (the world origin stays)."""
        self.positions = _scale_about(self.poses, self.positions, np.zeros(3), k)
        self.distances = {ab: (d * k, sig) for ab, (d, sig) in self.distances.items()}

    def rescale_about(self, centre: np.ndarray, k: float) -> None:
        """Scale the window about ``centre`` (a camera centre) by ``k``: keyframe positions and landmarks (the metric
        lengths stay). The metric scale's correction at a keyframe pair (:meth:`VOPipeline._choose_scale`): the pair
        takes the filter's length, and the keyframes and landmarks behind it follow, so that the window does not pull
        the next steps back to the scale its held keyframes had."""
        c = np.asarray(centre, float).reshape(3).copy()
        self.positions = _scale_about(self.poses, self.positions, c, k)
        self._rescaled_since.append((c, float(k)))

    def _moved_since_snapshot(self, result: BAResult) -> BAResult:
        """``result`` moved by the similarities of :meth:`rescale_about` made since its snapshot (the result of a
        window solved before them)."""
        if not self._rescaled_since:
            return result
        poses = {k: T.copy() for k, T in result.poses.items()}
        positions = result.positions
        for c, k in self._rescaled_since:
            positions = _scale_about(poses, positions, c, k)
        return replace(result, poses=poses, positions=positions)

    def inverse_depth_sigma(self, landmark_ids: np.ndarray, keyframe_id: int) -> np.ndarray:
        """(n,) standard deviation per unit angular noise of each landmark's inverse depth along its ray from keyframe
        ``keyframe_id``, from the centres of the keyframes that observe it: each adds the information ``|b x r|^2``
        (``b`` its centre from the keyframe's, ``r`` the unit ray), so that two views give the front end's pair sigma
        ``1 / (|b| sin angle)``. Inf for a landmark seen from that centre only, or not alive; observations from
        keyframes that left the window do not count."""
        lids = np.asarray(landmark_ids, np.int64).reshape(-1)
        rows, alive = self.rows(lids)
        if keyframe_id not in self.poses or not alive.any():
            return np.full(len(lids), np.inf)
        c = self.poses[keyframe_id][:3, 3]
        r = take_rows(self.positions, rows) - c
        r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        which = np.full(len(self.landmark_ids), -1)  # row -> index into lids
        which[rows[alive]] = np.flatnonzero(alive)
        ids = np.array(sorted(self.poses), np.int64)
        centres = np.stack([self.poses[int(k)][:3, 3] for k in ids])
        obs = np.flatnonzero((which[self.obs_row] >= 0) & np.isin(self.obs_keyframe, ids))
        i = which[self.obs_row[obs]]
        info = np.zeros(len(lids))
        b = centres[np.searchsorted(ids, self.obs_keyframe[obs])] - c
        np.add.at(info, i, np.sum(np.cross(b, r[i]) ** 2, axis=1))
        with np.errstate(divide="ignore"):
            return np.where(alive & (info > 0), 1.0 / np.sqrt(info), np.inf)

    def window_ids(self) -> list[int]:
        """The ids of the last ``window`` keyframes, oldest first."""
        ids = sorted(self.poses)
        return ids[-self.cfg.window:] if self.cfg.window > 0 else []

    def forget_after(self, keyframe_id: int) -> None:
        """Drop the keyframes after ``keyframe_id``, their observations and priors, and the landmarks no keyframe
        observes any more (a restart's keyframes when the tracker rejoins the keyframe before the loss). A window
        in flight is not applied (the revision changes)."""
        drop = [k for k in self.poses if k > keyframe_id]
        if not drop:
            return
        for k in drop:
            del self.poses[k]
        self.distances = {ab: v for ab, v in self.distances.items() if max(ab) <= keyframe_id}
        self.same_centres = {ab for ab in self.same_centres if max(ab) <= keyframe_id}
        self._keep_observations(self.obs_keyframe <= keyframe_id)
        seen = np.zeros(len(self.landmark_ids), bool)
        seen[self.obs_row] = True
        if not seen.all():
            self._keep_landmarks(seen)
        self.revision += 1

    def forget_old(self) -> None:
        """Drop the keyframes before the window and the landmarks no keyframe of the window observes any more."""
        window = self.window_ids()
        if not window:
            return
        oldest = window[0]
        for k in [k for k in self.poses if k < oldest]:
            del self.poses[k]
        self.distances = {ab: v for ab, v in self.distances.items() if min(ab) >= oldest}
        self.same_centres = {ab for ab in self.same_centres if min(ab) >= oldest}
        seen = np.zeros(len(self.landmark_ids), bool)  # observed by a keyframe of the window
        seen[self.obs_row[self.obs_keyframe >= oldest]] = True
        if not seen.all():
            self._keep_landmarks(seen)

    # ------------------------------------------------------------------------------------
    def snapshot(self, sigma: float, k1: float = 0.0, calibrate: bool = False) -> MapSnapshot:
        """The window as it stands, for :meth:`MapSnapshot.problem`: the window's poses and the landmarks' positions
        copied, the observation arrays by reference (every change to the map replaces them rather than writing into
        them). Cheap (~0.05 ms on KITTI 07's ~25 000 observations): the node's worker builds the problem from it in
        its own process, off the front end's thread."""
        self._rescaled_since = []  # a snapshot in the scale of now (the worker takes one only when no window is out)
        ids = self.window_ids()
        return MapSnapshot(self.cfg, ids, {k: self.poses[k].copy() for k in ids}, self.landmark_ids,
                           self.positions.copy(), self.obs_row, self.obs_keyframe, self.obs_xy, dict(self.distances),
                           frozenset(self.same_centres), self._next_lm, self.revision, float(sigma), float(k1),
                           bool(calibrate))

    def problem(self, sigma: float, k1: float = 0.0, calibrate: bool = False) -> WindowProblem | BAResult:
        """:meth:`snapshot`'s window problem for :func:`bundle_adjust`, or a skipped :class:`BAResult` saying why."""
        return self.snapshot(sigma, k1, calibrate).problem()

    def apply(self, result: BAResult) -> bool:
        """Take an optimisation's poses and positions; culled observations are removed, and landmarks left with
        fewer than two observations with them. Returns False (nothing taken) for a skipped window, or a stale one:
        its newest keyframe has left the window, or belongs to a map reset since, or another result was applied
        after its snapshot (:attr:`BAResult.revision`).

        A result that lands late (threaded backend) finds keyframes and landmarks made after its snapshot. They
        were chained onto the newest optimised keyframe with the front end's scale, so they follow it by a
        similarity: its new pose, and the scale the window gave the chain at its head, the length of its newest step
        after over before (:meth:`_step_ratio`; else the ratio of the keyframe's landmark depths, :meth:`_depth_ratio`).
        Moved only rigidly, they would keep the old scale against landmarks that have the new one."""
        if not result.optimised or max(result.poses, default=-1) not in self.poses:
            return False
        if 0 <= result.revision != self.revision:
            # another result was applied after this snapshot: taking this one would undo it
            log.warning("backend: a window from map revision %d landed at revision %d: not applied",
                        result.revision, self.revision)
            return False
        result = self._moved_since_snapshot(result)
        self._rescaled_since = []
        newest = max(result.poses)
        old_pose, new_pose = self.poses[newest].copy(), result.poses[newest]
        rows, alive = self.rows(result.landmark_ids)
        scale = self._step_ratio(result)
        if scale is None:
            scale = self._depth_ratio(newest, old_pose, new_pose, result.landmark_ids[alive],
                                      take_rows(self.positions, rows[alive]), take_rows(result.positions, alive))
        relative = invert_se3(old_pose)  # world -> the newest keyframe's old camera

        def follow(T: np.ndarray) -> np.ndarray:
            T_rel = relative @ T
            T_rel[:3, 3] *= scale
            return new_pose @ T_rel

        # a followed pose is re-projected onto SO(3): a keyframe corrected window after window would otherwise drift
        # off it, and the drift doubles with each correction (new @ inv(old) @ pose; a threaded KITTI replay blew up)
        for k in self.poses:
            if k in result.poses:
                self.poses[k] = result.poses[k].copy()
            elif k > newest:
                self.poses[k] = orthonormalize_se3(follow(self.poses[k]))
        self.positions[rows[alive]] = result.positions[alive]
        self.optimised[rows[alive]] = True
        # landmarks made since the snapshot follow the newest keyframe: those the pair (newest, newest + 1) made
        # too, triangulated from the newest keyframe's old pose (every landmark made before it has a smaller id).
        # Both rules: the id watermark names every landmark made since; a first view after the newest keyframe also
        # names an older landmark whose earlier observations were culled, so that only keyframes that follow see it
        seen_by_then = np.zeros(len(self.landmark_ids), bool)  # first view at or before the newest keyframe
        seen_by_then[self.obs_row[self.obs_keyframe <= newest]] = True
        moved = ~seen_by_then & (np.bincount(self.obs_row, minlength=len(self.landmark_ids)) > 0)
        if result.next_landmark_id >= 0:
            moved |= self.landmark_ids >= result.next_landmark_id
        moved[rows[alive]] = False
        if moved.any():
            moved = np.flatnonzero(moved)
            X = take_rows(self.positions, moved) @ relative[:3, :3].T + relative[:3, 3]
            self.positions[moved] = (scale * X) @ new_pose[:3, :3].T + new_pose[:3, 3]
        rejected = np.asarray(result.rejected, np.int64).reshape(-1, 2)
        if len(rejected):
            base = int(max(self.obs_keyframe.max(initial=0), rejected[:, 1].max())) + 1  # one int64 per (landmark, keyframe)
            # a rejected (landmark, keyframe) pair is among the rejected landmarks' observations (a few of the map's)
            rrows, ralive = self.rows(rejected[:, 0])
            hit = np.zeros(len(self.landmark_ids), bool)
            hit[rrows[ralive]] = True
            near = np.flatnonzero(hit[self.obs_row])
            culled = np.zeros(len(self.obs_row), bool)
            culled[near] = np.isin(self.obs_landmark[near] * base + self.obs_keyframe[near],
                                   rejected[:, 0] * base + rejected[:, 1])
            touched = np.unique(self.obs_landmark[culled])
            self._keep_observations(~culled)
            left = np.bincount(self.obs_row, minlength=len(self.landmark_ids))
            drop = np.zeros(len(self.landmark_ids), bool)
            trows, talive = self.rows(touched)
            drop[trows[talive]] = left[trows[talive]] < 2
            if drop.any():
                self._keep_landmarks(~drop)
        self.revision += 1
        return True

    def _step_ratio(self, result: BAResult) -> float | None:
        """Length of the window's newest step (between its two newest keyframes) after ``result`` over before it:
        the scale the window gave the front end's chain where the keyframes made since continue it. None when a
        length is 0 or the ratio is beyond ``max_step_change`` (then :meth:`_depth_ratio`).

        Why not the landmarks' depths (:meth:`_depth_ratio`, until stop 33): where the pair depths are poorly
        conditioned (a car speeding up from standstill, far points) a window lengthens the newest steps more than it
        moves their landmarks. KITTI 07 with each window landing 2 frames late: the optimised newest steps grew 1.03,
        1.13, 1.39, 1.64 (frames 3-9) while the depth ratio gave the followers 1.02, 1.07, 1.21, 1.39, and the
        published steps fell to 0.75-0.81x of the true ones for frames 6-11. Published odometry, KITTI 07 kp2d
        (docs/results.md, stop 33): threaded replays 0.139, 0.104 -> 0.065, 0.082 m; ``--backend-lag 2 / 3 / 4`` 0.066 /
        0.116 / 0.113 -> 0.057 / 0.066 / 0.087 m, and with the live node's dropped frames 0.12-0.29 -> 0.10-0.24 m.
        (Stop 30 had found one step too noisy on TUM fr2/desk; since stop 31's one snapshot per landed result it is
        not: 0.0094 / 0.0093 -> 0.0092 / 0.0076 m at lag 2 / 3.)"""
        ks = sorted(k for k in result.poses if k in self.poses)[-2:]
        if len(ks) < 2:
            return None
        a, b = ks
        before = float(np.linalg.norm(self.poses[b][:3, 3] - self.poses[a][:3, 3]))
        after = float(np.linalg.norm(result.poses[b][:3, 3] - result.poses[a][:3, 3]))
        if not (before > 0 and after > 0):
            return None
        ratio = after / before
        return ratio if _plausible_step_change(ratio, self.cfg) else None

    def _depth_ratio(self, keyframe: int, old_pose: np.ndarray, new_pose: np.ndarray, landmark_ids: np.ndarray,
                     old_positions: np.ndarray, new_positions: np.ndarray) -> float:
        """Median ratio of the distances from ``keyframe``'s camera centre to the nearer half of the optimised
        landmarks ``landmark_ids`` it observes (by their distance before), after (``new_pose``, ``new_positions``)
        over before (``old_pose``, ``old_positions``); 1 with fewer than :data:`MIN_KEYFRAME_OBSERVATIONS` of them.
        The scale the front end chained onto the keyframe; a late window's followers take it when the window has no
        usable newest step (:meth:`_step_ratio`).

        The nearer half, because a landmark's inverse depth is known to about the same angle over the baseline near
        or far, so the relative error of its distance grows with the distance: the near landmarks carry the scale
        the front end measured its next steps against (its scale vote keeps the well-triangulated ones), while the
        far ones hardly move when the window changes the scale and drew the median of all of them towards 1. KITTI
        07 with every window landing 2 keyframes late (``kp2d replay --backend-lag 2``): the learned frontend's
        published odometry 0.144 m with all of them, 0.066 m with the nearer half (docs/results.md, stop 30). Weighting by
        1 / distance² instead let a few landmarks triangulated centimetres from the camera set the scale (a SIFT
        replay diverged)."""
        seen = np.isin(landmark_ids, self.obs_landmark[self.obs_keyframe == keyframe])
        before = np.linalg.norm(take_rows(old_positions, seen) - old_pose[:3, 3], axis=1)
        after = np.linalg.norm(take_rows(new_positions, seen) - new_pose[:3, 3], axis=1)
        ok = (before > 0) & np.isfinite(after)
        if ok.sum() < MIN_KEYFRAME_OBSERVATIONS:
            return 1.0
        before, after = before[ok], after[ok]
        near = before <= np.median(before)
        ratio = float(np.median(after[near] / before[near]))
        return ratio if np.isfinite(ratio) and ratio > 0 else 1.0


def take_rows(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a[index]`` along the first axis, a new array: ``index`` holds row positions or is an (len(a),) bool mask.
    Through ``ndarray.take``: numpy's fancy and boolean indexing of an array of a few columns (observations (M, 2),
    positions (N, 3)) goes row by row, 10-20x slower (numpy 2.4, a (25 000, 2) array: 0.34 ms by a mask, 0.17 ms by
    positions, 0.012 ms through take). The map's upkeep after each keyframe (:meth:`VOPipeline.finish`, the node's
    work after the pose; ``scripts/backend_contention.py``'s ``after_pose``) lies in such selections."""
    index = np.asarray(index)
    if index.dtype == bool:
        index = np.flatnonzero(index)
    return a.take(index, axis=0)


def _scale_about(poses: dict[int, np.ndarray], positions: np.ndarray, centre: np.ndarray, k: float) -> np.ndarray:
    """Scale the camera centres of ``poses`` (in place) and ``positions`` (N, 3) about ``centre`` by ``k``; returns the
    new positions."""
    for T in poses.values():
        T[:3, 3] = centre + k * (T[:3, 3] - centre)
    return centre + k * (positions - centre)


def _same_centre_rows(pairs: set[tuple[int, int]], where: dict[int, int], poses: np.ndarray,
                      sigma: float = 1e-4) -> np.ndarray:
    """(C, 3) rows (index a, index b, standard deviation) that hold together the centres of the window's keyframes
    (``where``: keyframe id -> index into ``poses``) joined by a chain of the pairs ``pairs``, also through keyframes
    the window left out (a keyframe late in a turn sees too few landmarks to be posed by the window). The standard
    deviation is ``sigma`` of the window's extent (its camera centres' largest distance from their mean): the front
    end placed the turn's keyframes on one centre, and the window's unit is the trajectory's. (1e-3 of it let a
    window's landmarks part them by their noise.)"""
    find = _joined(pairs)
    groups: dict[int, list[int]] = {}
    for k in sorted(where):
        groups.setdefault(find(k), []).append(where[k])
    rows = sorted((a, b) for members in groups.values() for a, b in zip(members, members[1:]))
    centres = poses[:, :3, 3]
    extent = float(np.max(np.linalg.norm(centres - centres.mean(0), axis=1))) if len(centres) else 0.0
    if not rows or extent <= 0:
        return np.empty((0, 3))
    return np.array([(a, b, sigma * extent) for a, b in rows], float)


def _joined(pairs) -> Callable[[int], int]:
    """A function giving each item its group's representative, the groups joined by ``pairs`` of items (union-find;
    an item in no pair is its own group)."""
    root: dict[int, int] = {}

    def find(k: int) -> int:
        while root.setdefault(k, k) != k:
            k = root[k]
        return k

    for a, b in pairs:
        root[find(int(a))] = find(int(b))
    return find


def _positions_of(rows: np.ndarray, n: int) -> np.ndarray:
    """(n,) the position of each of ``n`` rows within ``rows`` (-1 where absent)."""
    where = np.full(n, -1, np.int64)
    where[rows] = np.arange(len(rows))
    return where


def _select_tracks(track: np.ndarray, row: np.ndarray, kf: np.ndarray, lids: np.ndarray, ids: list[int],
                   limit: int) -> np.ndarray:
    """At most ``limit`` of the candidate landmarks ``track`` (N,) bool, given the window's observations (``row``
    landmark row, ``kf`` keyframe id): longer tracks first (they carry the scale from keyframe to keyframe), newer
    first; but every keyframe of the window (``ids``), the fixed ones above all, first gets its share
    (``limit / 2K``) of the tracks it observes. Without that the newest keyframes' tracks fill the budget, the
    oldest (fixed) keyframes observe nothing, and the window has no gauge. Returns the chosen (N,) bool."""
    n = len(track)
    length = np.bincount(row, minlength=n)
    cand = np.flatnonzero(track)
    order = cand[np.lexsort((-lids[cand], -np.minimum(length[cand], 4)))]  # best first
    rank = np.full(n, n, np.int64)
    rank[order] = np.arange(len(order))
    quota = max(limit // (2 * max(len(ids), 1)), 1)
    obs = np.flatnonzero(track[row])
    obs = obs[np.lexsort((rank[row[obs]], kf[obs]))]  # by keyframe, then best first
    _, start = np.unique(kf[obs], return_index=True)
    within = np.arange(len(obs)) - np.repeat(start, np.diff(np.append(start, len(obs))))
    picks = row[obs[within < quota]]
    if len(np.unique(picks)) > limit:  # more keyframes than half the budget: the oldest keyframes' shares first
        picks = picks[np.sort(np.unique(picks, return_index=True)[1])][:limit]
    chosen = np.zeros(n, bool)
    chosen[picks] = True
    rest = order[~chosen[order]][:max(limit - int(chosen.sum()), 0)]
    chosen[rest] = True
    return chosen


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
    """Refine the window's free keyframe poses and its landmarks (see the module docstring) with
    ``backend.solver``.

    ``focal_px`` converts the reported errors and ``max_reprojection_px`` to pixels (and Ceres' residuals). Two
    passes: the robust optimisation, then, without the culled observations, a second one from where the first
    ended.

    A self-calibrating Ceres window (``problem.calibrate``) that measures k1 no better than
    ``backend.k1_prior_sigma`` (a few keyframes, forward motion; or an undetermined, infinite one) is solved again
    with k1 held at the front end's (``problem.k1``), and reports no k1: its free k1 followed the noise of its tracks (a robot's first windows on a
    pinhole camera: -0.086, -0.066, -0.033, standard deviations 0.13-0.34), and the poses it gave did not fit the
    front end's lens.
    """
    result = _bundle_adjust(problem, cfg, focal_px)
    if (problem.calibrate and result.optimised and result.k1_sigma is not None
            and not result.k1_sigma < cfg.k1_prior_sigma):
        held = _bundle_adjust(replace(problem, calibrate=False), cfg, focal_px)
        held.time_ms += result.time_ms
        return held
    return result


def _bundle_adjust(problem: WindowProblem, cfg: BackendConfig, focal_px: float) -> BAResult:
    """:func:`bundle_adjust`'s one solve."""
    t0 = time.perf_counter()
    ceres_window = None
    if cfg.solver == "ceres":
        ceres_window = _CeresWindow(problem, cfg, focal_px)
        solve = ceres_window.solve
    else:
        solve = lambda *state: _solve_gtsam(problem, cfg, *state, focal_px)  # noqa: E731
    n_kf, n_lm = len(problem.keyframe_ids), len(problem.landmark_ids)
    poses, points, k1 = problem.poses.copy(), problem.positions.copy(), problem.k1
    before = reprojection_errors(problem, poses, points, k1)
    limit = cfg.max_reprojection_px * problem.sigma / max(cfg.noise_px, 1e-9)
    keep = np.isfinite(before)
    try:
        poses, points, k1, iters = solve(poses, points, k1, keep)
        err = reprojection_errors(problem, poses, points, k1)
        keep &= err <= limit
        if (~keep).any() and keep.any():
            poses, points, k1, more = solve(poses, points, k1, keep)
            iters += more
            err = reprojection_errors(problem, poses, points, k1)
            keep &= err <= limit
    except (RuntimeError, ValueError) as e:  # indeterminant system, cheirality, an unusable Ceres solution, ...
        return BAResult(False, f"optimisation failed: {e}".splitlines()[0], num_keyframes=n_kf, num_landmarks=n_lm,
                        num_observations=int(len(keep)), time_ms=(time.perf_counter() - t0) * 1e3)
    to_px = focal_px
    result = BAResult(True, num_keyframes=n_kf, num_landmarks=n_lm, num_observations=int(len(keep)),
                      error_px_before=float(np.median(before[np.isfinite(before)]) * to_px) if np.isfinite(before).any() else float("nan"),
                      error_px_after=float(np.median(err[keep]) * to_px) if keep.any() else float("nan"),
                      iterations=iters, k1=float(k1) if problem.calibrate else None,
                      next_landmark_id=problem.next_landmark_id, revision=problem.revision)
    for i, k in enumerate(problem.keyframe_ids):
        result.poses[int(k)] = poses[i].copy() if i >= problem.num_fixed else problem.poses[i].copy()
    reason = _implausible(problem, result, keep, cfg)
    if reason:
        return BAResult(False, reason, num_keyframes=n_kf, num_landmarks=n_lm, num_observations=int(len(keep)),
                        error_px_before=result.error_px_before, error_px_after=result.error_px_after,
                        iterations=iters, time_ms=(time.perf_counter() - t0) * 1e3)
    if ceres_window is not None and problem.calibrate:  # (20-50 ms: only for a window that is taken)
        result.k1_sigma = ceres_window.k1_sigma()
    result.landmark_ids = np.asarray(problem.landmark_ids, np.int64).copy()
    result.positions = np.asarray(points, float).reshape(-1, 3).copy()
    result.rejected = np.stack([problem.landmark_ids[problem.obs_landmark[~keep]],
                                problem.keyframe_ids[problem.obs_keyframe[~keep]]], axis=1).astype(np.int64)
    result.time_ms = (time.perf_counter() - t0) * 1e3
    return result


# One pass of a solver: (poses (K, 4, 4), points (L, 3), k1, the observations to use (M,) bool) -> (poses, points,
# k1, iterations). The fixed keyframes (the first ``problem.num_fixed``) stay.
class _CeresWindow:
    """pycolmap's Ceres bundle adjuster (Schur complement, one thread) on one window, for its passes. The
    observations are pixels of a SIMPLE_RADIAL camera (focal ``focal_px``, distortion k1 on normalised coordinates:
    the residual model of :func:`reprojection_errors`), refined when ``problem.calibrate`` (no prior on it: a
    window's k1 rests on its observations alone, with its standard deviation from Ceres' covariance,
    :meth:`k1_sigma`; :func:`_implausible` rejects a diverged one).
    Landmarks with fewer than two used observations stay out (where they are), and a free keyframe with fewer than
    three is held.

    The first :meth:`solve` builds the ``pycolmap.Reconstruction``; a later one (the second pass) continues from
    where the last ended, in the same reconstruction, with the observations ``use`` no longer names deleted:
    building it again cost as much as a third of the pass (KITTI 07, 16 keyframes, ~10 000 observations)."""

    def __init__(self, problem: WindowProblem, cfg: BackendConfig, focal_px: float):
        self.problem, self.cfg = problem, cfg
        self.f = float(max(focal_px, 1.0))
        self.rec = None
        self.used = np.zeros(len(problem.obs_xy), bool)  # the observations in the reconstruction
        self.point2d = np.full(len(problem.obs_xy), -1)  # each observation's index in its image
        self.point3d: dict[int, int] = {}  # landmark row -> pycolmap point id, while it is in the reconstruction
        self.points = np.empty((0, 3))
        self._last: tuple | None = None  # the Python costs of the last pass's Ceres adjuster, and the adjuster

    def solve(self, poses: np.ndarray, points: np.ndarray, k1: float, use: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, float, int]:
        import pycolmap

        problem = self.problem
        counts = np.bincount(problem.obs_landmark[use], minlength=len(points))
        use = use & (counts[problem.obs_landmark] >= 2)
        if self.rec is None:
            self._build(poses, points, k1, use)
        else:
            if (use & ~self.used).any():
                raise ValueError("a later pass may only drop observations")
            self._drop(self.used & ~use)
        rec = self.rec
        config = pycolmap.BundleAdjustmentConfig()
        views = np.bincount(problem.obs_keyframe[use], minlength=len(poses))
        for i in range(len(poses)):
            config.add_image(i + 1)
            if i < problem.num_fixed or views[i] < 3:
                config.set_constant_rig_from_world_pose(i + 1)
        adjuster = pycolmap.create_default_ceres_bundle_adjuster(self._options(), config, rec)
        keep_alive = _add_centre_priors(adjuster.problem, rec, problem, config, poses)
        summary = adjuster.solve()
        if not summary.is_solution_usable():
            raise RuntimeError(f"ceres: {summary.brief_report()}")
        self._last = (keep_alive, adjuster)  # for k1_sigma(); the costs must outlive any evaluation of the problem
        out = poses.copy()
        for i in range(problem.num_fixed, len(poses)):
            T = np.eye(4)
            T[:3] = rec.image(i + 1).cam_from_world().matrix()
            out[i] = invert_se3(T)
        for j, pid in self.point3d.items():
            self.points[j] = rec.point3D(pid).xyz
        ceres = summary.ceres_summary
        k1_out = float(rec.camera(1).params[3]) if problem.calibrate else k1
        return out, self.points.copy(), k1_out, int(ceres.num_successful_steps + ceres.num_unsuccessful_steps)

    def k1_sigma(self) -> float:
        """The standard deviation of the window's k1 at the last pass's solution: its marginal covariance (the poses
        and landmarks eliminated, pycolmap's Schur-complement estimate) with pixel residuals of ``backend.noise_px``
        standard deviation. Infinite where the covariance cannot be estimated (a rank-deficient window). Asked once,
        after the last pass: 20-50 ms for a 16-keyframe, 2000-landmark window."""
        import pycolmap

        ceres_problem = self._last[1].problem

        options = pycolmap.BACovarianceOptions()
        options.params = pycolmap.BACovarianceOptionsParams.ALL  # (POSES leaves the camera block's out)
        level = pycolmap.logging.minloglevel
        pycolmap.logging.minloglevel = 2  # a rank-deficient window is answered None, not logged as a warning
        try:
            cov = pycolmap.estimate_ba_covariance_from_problem(options, self.rec, ceres_problem)
        finally:
            pycolmap.logging.minloglevel = level
        var = None if cov is None else cov.get_other_params_cov(self.rec.camera(1).params)
        if var is None or var.size != 1 or not np.isfinite(var).all() or var[0, 0] <= 0:
            return float("inf")
        return float(np.sqrt(var[0, 0]) * self.cfg.noise_px)

    def _build(self, poses: np.ndarray, points: np.ndarray, k1: float, use: np.ndarray) -> None:
        import pycolmap

        problem, f = self.problem, self.f
        size = 2 * int(np.ceil(2 * f))  # the image size only places the principal point; no observation is clipped
        c = np.array([size / 2, size / 2])
        rec = pycolmap.Reconstruction()
        camera = pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", f, size, size)
        camera.params = [f, c[0], c[1], float(k1)]
        rec.add_camera_with_trivial_rig(camera)
        for i in range(len(poses)):  # image id = frame id = i + 1
            sel = np.flatnonzero(use & (problem.obs_keyframe == i))
            self.point2d[sel] = np.arange(len(sel))
            image = pycolmap.Image(name=str(i), keypoints=problem.obs_xy[sel] * f + c, camera_id=1, image_id=i + 1)
            rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(invert_se3(poses[i])[:3, :4]))
        order = np.flatnonzero(use)
        order = order[np.argsort(problem.obs_landmark[order], kind="stable")]
        landmark = problem.obs_landmark[order]
        starts = np.flatnonzero(np.diff(landmark, prepend=-1))  # each used landmark's first observation in ``order``
        ends = np.append(starts[1:], len(order)).tolist()
        image_ids, point2d_ids = (problem.obs_keyframe[order] + 1).tolist(), self.point2d[order].tolist()
        element = pycolmap.TrackElement
        # plain Python loops: indexing numpy scalars here cost a tenth of the pass
        for s, e, j in zip(starts.tolist(), ends, landmark[starts].tolist()):
            track = pycolmap.Track([element(image_ids[m], point2d_ids[m]) for m in range(s, e)])
            self.point3d[j] = rec.add_point3D(points[j], track)
        self.rec, self.used, self.points = rec, use.copy(), np.array(points, float)

    def _drop(self, observations: np.ndarray) -> None:
        """Delete the observations (M,) bool from the reconstruction; COLMAP deletes a landmark left with one."""
        problem, rec = self.problem, self.rec
        for m in np.flatnonzero(observations).tolist():
            j = int(problem.obs_landmark[m])
            if j in self.point3d:
                if rec.point3D(self.point3d[j]).track.length() <= 2:
                    del self.point3d[j]  # it stays where the last pass left it
                rec.delete_observation(int(problem.obs_keyframe[m]) + 1, int(self.point2d[m]))
        self.used &= ~observations

    def _options(self):
        import pycolmap

        cfg = self.cfg
        options = pycolmap.BundleAdjustmentOptions()
        options.refine_focal_length = False
        options.refine_principal_point = False
        options.refine_extra_params = bool(self.problem.calibrate)
        options.print_summary = False
        options.ceres.loss_function_type = (pycolmap.LossFunctionType.CAUCHY if cfg.kernel == "cauchy"
                                            else pycolmap.LossFunctionType.HUBER)
        options.ceres.loss_function_scale = cfg.kernel_px  # residuals in pixels, as the kernel
        solver = options.ceres.solver_options
        solver.max_num_iterations = cfg.max_iterations
        solver.initial_trust_region_radius = 1e8  # start as Gauss-Newton, as GTSAM's LM (lambda 1e-5): Ceres' 1e4 took
        # twice the iterations (a window whose free keyframes all start 10% too far: half-way after 5)
        solver.function_tolerance = 1e-5  # GTSAM's relative error decrease, so both stop alike
        solver.gradient_tolerance = 1e-4
        solver.parameter_tolerance = 0.0
        solver.num_threads = 1  # the worker's one core; the front end has the other
        return options


def combine_k1(estimates: list[float], sigmas: list[float | None], how: str = "median") -> float:
    """The k1 the front end undistorts with, from the latest windows' ``estimates`` and their standard deviations
    (``backend.k1_average``): their median, or (``weighted``) their mean weighted by inverse variance, so that a
    window that sees k1 well (a turn) outweighs one that hardly does (a straight drive, 10x the standard deviation).
    Windows without a standard deviation (GTSAM) make it the median."""
    if how == "weighted" and estimates and all(s is not None and s > 0 for s in sigmas):
        w = 1.0 / np.square(np.asarray(sigmas, float))
        return float(np.sum(w * np.asarray(estimates, float)) / np.sum(w))
    return float(np.median(estimates))


def scale_gauge(poses: np.ndarray, num_fixed: int, min_spread: float = 0.1, sigma: float = 1e-3
                ) -> np.ndarray | None:
    """The window's scale, held by a distance when its held keyframes cannot hold it.

    Held keyframes fix the window's position and orientation, and its scale by the distances between them. A robot
    that stood or turned on the spot leaves held keyframes with (nearly) one centre: no scale is held, and the
    window, free to shrink or grow the steps after them, grew a turn-in-place's next metres 1.7x (SIFT's 10-keyframe
    window, 2 held). Then the distance from the newest held keyframe to the free keyframe farthest from it is held
    at its value (a prior of relative standard deviation ``sigma``: a gauge, not a measurement).

    Parameters
    ----------
    poses : (K, 4, 4) the window's T_world_cam, oldest first; num_fixed : how many of the oldest are held.
    min_spread : the held keyframes' largest distance between centres, over that distance, below which they are
        taken to hold no scale.

    Returns
    -------
    (1, 4) a distance prior row (index a, index b, distance, its standard deviation) for
    :attr:`WindowProblem.distances`, or None when the held keyframes span a baseline (or nothing moved).
    """
    if num_fixed < 1 or num_fixed >= len(poses):
        return None
    centres = poses[:, :3, 3]
    held = centres[:num_fixed]
    spread = float(np.max(np.linalg.norm(held[:, None] - held[None], axis=2))) if num_fixed > 1 else 0.0
    reach = np.linalg.norm(centres[num_fixed:] - held[-1], axis=1)
    far = int(np.argmax(reach))
    d = float(reach[far])
    if d <= 0 or spread >= min_spread * d:
        return None
    return np.array([[num_fixed - 1, num_fixed + far, d, d * sigma]])


def scale_breaks(poses: np.ndarray, num_fixed: int, obs_keyframe: np.ndarray, obs_landmark: np.ndarray,
                 same_centres: np.ndarray, min_links: int = 10, sigma: float = 1e-3) -> np.ndarray:
    """The window's scale, held by a distance wherever its landmarks do not carry it on.

    A landmark seen from two camera centres ties its depth to their baseline; only one seen from three ties two
    baselines' lengths together. The window's scale runs from its held keyframes' baseline through such landmarks,
    one baseline to the next. A robot that drove, stopped, turned on the spot and drove on breaks that chain: the
    turn's keyframes share one centre (``same_centres``), and what the robot sees after the turn was first seen from
    there, so no landmark is seen from a centre before the turn, the turn's and one after it; the keyframes after the
    turn and their landmarks may all scale about the turn's centre. The learned frontend's window shrank the next
    metres by 6 % there (``stop_turn_go``, ``scripts/robot_moves.py``). At each such break the distance from the
    centre where the chain broke to the farthest centre it reaches before the next break is held at its value (a
    prior of relative standard deviation ``sigma``: a gauge, not a measurement), as :func:`scale_gauge` holds it
    where the held keyframes span no baseline.

    Parameters
    ----------
    poses : (K, 4, 4) the window's T_world_cam, oldest first; num_fixed : how many of the oldest are held.
    obs_keyframe, obs_landmark : (M,) each observation's keyframe index and landmark index.
    same_centres : (C, 3) rows (index a, index b, standard deviation) of keyframes on one centre
        (:attr:`WindowProblem.same_centres`).
    min_links : landmarks seen from three consecutive centres, below which they do not carry the scale on.

    Returns
    -------
    (B, 4) distance prior rows (index a, index b, distance, its standard deviation), one per break (none: (0, 4)).
    """
    k = len(poses)
    find = _joined((a, b) for a, b, _ in same_centres)  # a turn's keyframes are consecutive: groups are runs
    _, group = np.unique([find(i) for i in range(k)], return_inverse=True)  # 0..G-1 in keyframe order
    n_groups = int(group.max()) + 1 if k else 0
    held_groups = int(group[num_fixed - 1]) + 1 if num_fixed > 0 else 0
    if n_groups - held_groups < 1 or len(obs_landmark) == 0:
        return np.empty((0, 4))
    n_lm = int(obs_landmark.max()) + 1
    seen = np.zeros((n_groups, n_lm), bool)
    seen[group[obs_keyframe], obs_landmark] = True
    last = np.array([np.flatnonzero(group == g)[-1] for g in range(n_groups)])  # each group's newest keyframe
    # baseline i joins groups i and i + 1. It carries the scale of baseline i - 1 when enough landmarks are seen from
    # all three of groups i - 1, i and i + 1; the first free baseline carries that of the held ones (two or more
    # held groups), a later one that of the one before it.
    first = held_groups - 1
    carried = [i >= 1 and int((seen[i - 1] & seen[i] & seen[i + 1]).sum()) >= min_links for i in range(n_groups - 1)]
    carried[first] = carried[first] and held_groups >= 2
    rows = []
    i = first
    while i < n_groups - 1:
        if carried[i]:
            i += 1
            continue
        j = i + 1  # a break at baseline i: the run after it reaches group j (as far as the next baselines carry it)
        while j < n_groups - 1 and carried[j]:
            j += 1
        a, b = int(last[i]), int(last[j])
        d = float(np.linalg.norm(poses[b, :3, 3] - poses[a, :3, 3]))
        if d > 0:
            rows.append((a, b, d, d * sigma))
        i = j
    return np.array(rows, float).reshape(-1, 4)


def _add_centre_priors(ceres_problem, rec, problem: WindowProblem, config, poses: np.ndarray) -> list:
    """Add ``problem.distances`` and ``problem.same_centres`` to pycolmap's Ceres problem (pyceres: a cost on the
    camera centres of the two keyframes' ``cam_from_world`` blocks, held ones as constants). Returns the cost objects
    and block views: the caller keeps them alive until the solve ends (the problem does not own Python costs)."""
    import ctypes

    def block(i: int) -> np.ndarray | None:
        """Keyframe i's pose block (qx, qy, qz, qw, tx, ty, tz: pycolmap's Rigid3d, one Ceres block of 7), or None
        when it is held (no block)."""
        rigid = rec.frame(rec.image(i + 1).frame_id).rig_from_world
        q = rigid.rotation.quat
        if config.has_constant_rig_from_world_pose(i + 1) or not ceres_problem.has_parameter_block(q):
            return None
        return np.ctypeslib.as_array((ctypes.c_double * 7).from_address(q.ctypes.data))

    priors = [(int(a), int(b), _distance(float(d), float(sigma)), 1) for a, b, d, sigma in problem.distances]
    priors += [(int(a), int(b), _coincidence(float(sigma)), 3) for a, b, sigma in problem.same_centres]
    alive = []
    for a, b, residual, size in priors:
        blocks = {k: block(k) for k in (a, b)}
        free = [k for k in (a, b) if blocks[k] is not None]
        if not free:
            continue
        fixed = {k: poses[k][:3, 3].copy() for k in (a, b) if blocks[k] is None}
        cost = _centre_cost(a, b, free, fixed, residual, size)
        views = [blocks[k] for k in free]
        ceres_problem.add_residual_block(cost, None, views)
        alive += [cost, views]
    return alive


def _distance(distance: float, sigma: float):
    """The residual ``(|c_a - c_b| - distance) / sigma`` of two camera centres: a metric distance prior."""
    return lambda ca, cb: np.array([(float(np.linalg.norm(ca - cb)) - distance) / sigma])


def _coincidence(sigma: float):
    """The residuals ``(c_a - c_b) / sigma`` of two camera centres: a turn on the spot."""
    return lambda ca, cb: (ca - cb) / sigma


def _centre(block: np.ndarray) -> np.ndarray:
    """Camera centre of a pycolmap ``cam_from_world`` block (qx, qy, qz, qw, t): ``-R^T t``."""
    x, y, z, w = block[:4] / np.linalg.norm(block[:4])
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return -R.T @ block[4:]


def _centre_cost(a: int, b: int, free: list[int], fixed: dict[int, np.ndarray], residual, size: int):
    """A pyceres cost of ``size`` residuals ``residual(c_a, c_b)`` (:func:`_distance`, :func:`_coincidence`) over
    the pose blocks of the keyframes ``free`` (of ``a``, ``b``, in that order; ``fixed``: the centres of held ones).
    Central-difference Jacobians: a handful of residuals per window beside thousands of reprojections. (Summing a
    window's distance pairs into one residual instead gave the same KITTI 07 trajectories with the ground plane:
    0.472 against 0.478 m with SIFT.)"""
    import pyceres

    class CentreCost(pyceres.CostFunction):
        def __init__(self):
            pyceres.CostFunction.__init__(self)
            self.set_num_residuals(size)
            self.set_parameter_block_sizes([7] * len(free))

        def residuals(self, blocks) -> np.ndarray:
            c = dict(fixed)
            c.update({k: _centre(b) for k, b in zip(free, blocks)})
            return residual(c[a], c[b])

        def Evaluate(self, parameters, residuals, jacobians):
            blocks = [np.array(p, float) for p in parameters]
            residuals[:size] = self.residuals(blocks)
            for k in range(len(blocks)) if jacobians is not None else ():
                if jacobians[k] is None:
                    continue
                for d in range(7):  # the Jacobian is row-major: residual i, parameter d at i * 7 + d
                    h = 1e-7 * max(1.0, abs(blocks[k][d]))
                    plus, minus = [b.copy() for b in blocks], [b.copy() for b in blocks]
                    plus[k][d] += h
                    minus[k][d] -= h
                    jacobians[k][d::7] = (self.residuals(plus) - self.residuals(minus)) / (2 * h)
            return True

    return CentreCost()


def _solve_gtsam(problem: WindowProblem, cfg: BackendConfig, poses: np.ndarray, points: np.ndarray, k1: float,
                 use: np.ndarray, focal_px: float) -> tuple[np.ndarray, np.ndarray, float, int]:
    """GTSAM Levenberg-Marquardt (sequential Cholesky) on a factor graph of the used observations, residuals in
    normalised units with the problem's sigma. With ``problem.calibrate`` k1 is a Cal3Bundler (f = 1, k2 = 0)
    with a prior of ``backend.k1_prior_sigma`` around 0. A landmark left with fewer than two observations, or a
    free keyframe with fewer than three, is held where it is by a weak prior."""
    import gtsam
    from gtsam.symbol_shorthand import C, L, X

    K = gtsam.Cal3_S2(1.0, 1.0, 0.0, 0.0, 0.0)
    base = gtsam.noiseModel.Isotropic.Sigma(2, problem.sigma)
    k = cfg.kernel_px / max(cfg.noise_px, 1e-9)  # in units of sigma
    kernel = (gtsam.noiseModel.mEstimator.Cauchy.Create(k) if cfg.kernel == "cauchy"
              else gtsam.noiseModel.mEstimator.Huber.Create(k))
    robust = gtsam.noiseModel.Robust.Create(kernel, base)
    n_kf, n_lm = len(poses), len(points)
    values = gtsam.Values()
    for i in range(n_kf):
        values.insert(X(i), gtsam.Pose3(poses[i]))
    for j in range(n_lm):
        values.insert(L(j), gtsam.Point3(*points[j]))
    graph = gtsam.NonlinearFactorGraph()
    for i in range(problem.num_fixed):
        graph.add(gtsam.NonlinearEqualityPose3(X(i), gtsam.Pose3(problem.poses[i])))
    if problem.calibrate:  # the residual radial distortion as Bundler's (f = 1, k1, k2 = 0) on normalised coordinates
        values.insert(C(0), gtsam.Cal3Bundler(1.0, k1, 0.0, 0.0, 0.0))
        prior = gtsam.noiseModel.Diagonal.Sigmas(np.array([1e-9, cfg.k1_prior_sigma, 1e-9]))
        graph.add(gtsam.PriorFactorCal3Bundler(C(0), gtsam.Cal3Bundler(1.0, 0.0, 0.0, 0.0, 0.0), prior))
        for m in np.flatnonzero(use):
            graph.add(gtsam.GeneralSFMFactor2Cal3Bundler(problem.obs_xy[m], robust, X(int(problem.obs_keyframe[m])),
                                                         L(int(problem.obs_landmark[m])), C(0)))
    else:
        for m in np.flatnonzero(use):
            graph.add(gtsam.GenericProjectionFactorCal3_S2(problem.obs_xy[m], robust, X(int(problem.obs_keyframe[m])),
                                                           L(int(problem.obs_landmark[m])), K))
    counts = np.bincount(problem.obs_landmark[use], minlength=n_lm)
    weak = gtsam.noiseModel.Isotropic.Sigma(3, 1e3)
    for j in np.flatnonzero(counts < 2):
        graph.add(gtsam.PriorFactorPoint3(L(int(j)), gtsam.Point3(*points[j]), weak))
    for a, b, d, sigma in problem.distances:  # metric distance priors between keyframes
        graph.add(gtsam.RangeFactorPose3(X(int(a)), X(int(b)), float(d), gtsam.noiseModel.Isotropic.Sigma(1, sigma)))
    for a, b, sigma in problem.same_centres:  # turns on the spot: the relative pose's translation is 0, its rotation free
        a, b = int(a), int(b)
        turn = gtsam.Pose3(gtsam.Rot3(poses[a][:3, :3].T @ poses[b][:3, :3]), np.zeros(3))
        noise = gtsam.noiseModel.Diagonal.Sigmas(np.array([1e3, 1e3, 1e3, sigma, sigma, sigma]))
        graph.add(gtsam.BetweenFactorPose3(X(a), X(b), turn, noise))
    views = np.bincount(problem.obs_keyframe[use], minlength=n_kf)
    weak_pose = gtsam.noiseModel.Isotropic.Sigma(6, 1e3)
    for i in range(problem.num_fixed, n_kf):
        if views[i] < 3:
            graph.add(gtsam.PriorFactorPose3(X(i), gtsam.Pose3(poses[i]), weak_pose))
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(cfg.max_iterations)
    # sequential Cholesky: ~2.5x faster than the multifrontal default on a 2-core CPU (10 keyframes,
    # 500 landmarks, 3900 observations: 0.32 vs 0.84 s for 5 iterations, same solution)
    params.setLinearSolverType("SEQUENTIAL_CHOLESKY")
    opt = gtsam.LevenbergMarquardtOptimizer(graph, values, params)
    with _quiet_stdout(problem.calibrate):  # GeneralSFMFactor2 prints every cheirality failure to std::cout
        out = opt.optimize()
    k1_out = float(out.atCal3Bundler(C(0)).k1()) if problem.calibrate else k1
    new_poses = np.stack([out.atPose3(X(i)).matrix() for i in range(n_kf)])
    new_points = np.stack([np.asarray(out.atPoint3(L(j)), float) for j in range(n_lm)]).reshape(-1, 3)
    return new_poses, new_points, k1_out, int(opt.iterations())


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
    front end's steps are never that wrong). A turn on the spot (``problem.same_centres``) has no length to change."""
    if keep.mean() < 0.7:
        return f"diverged: {100 * (1 - keep.mean()):.0f}% of the observations culled"
    if result.k1 is not None and abs(result.k1) > 5.0 * cfg.k1_prior_sigma:
        return f"diverged: radial distortion k1 {result.k1:+.3f}"
    ids = [int(k) for k in problem.keyframe_ids]
    turns = {(int(a), int(b)) for a, b, _ in problem.same_centres}
    for i, (a, b) in enumerate(zip(ids[1:], ids[2:]), start=1):
        if b not in result.poses or (i, i + 1) in turns:
            continue
        before = np.linalg.norm(problem.poses[i + 1, :3, 3] - problem.poses[i, :3, 3])
        after = np.linalg.norm(result.poses[b][:3, 3] - result.poses[a][:3, 3])
        if before > 0 and not _plausible_step_change(after / before, cfg):
            return f"diverged: keyframe {b}'s step changed {after / max(before, 1e-12):.2f}x"
    return ""


def _plausible_step_change(ratio: float, cfg: BackendConfig) -> bool:
    """A keyframe step's length after a window over before it is within ``backend.max_step_change`` either way."""
    return 1.0 / cfg.max_step_change <= ratio <= cfg.max_step_change


def check_solver(cfg: BackendConfig) -> None:
    """Raise ConfigError when ``backend.solver``'s package is not installed (a ROS install without pip's
    pycolmap would otherwise lose every window, one warning each, on the worker)."""
    import importlib.util

    from kp2d_ros.errors import ConfigError

    packages = {"ceres": ("pycolmap", "pyceres"), "gtsam": ("gtsam",)}[cfg.solver]  # pyceres: the distance priors
    for package in packages:
        if importlib.util.find_spec(package) is None:
            other = "gtsam" if cfg.solver == "ceres" else "ceres"
            raise ConfigError(f"backend.solver: {cfg.solver} needs the {package} package (pip install {package}); "
                              f"or backend.solver: {other}, or backend.window: 0 (no bundle adjustment)")


def solve_window(window: WindowProblem | MapSnapshot, cfg: BackendConfig, focal_px: float = 1.0) -> BAResult:
    """:func:`bundle_adjust` of a window given as its problem, or as a :class:`MapSnapshot` whose problem is built
    here first (a window it skips comes back as that skipped :class:`BAResult`). What the worker process runs."""
    problem = window.problem() if isinstance(window, MapSnapshot) else window
    if isinstance(problem, BAResult):
        return problem
    return bundle_adjust(problem, cfg, focal_px)


def run_window(local_map: LocalMap, sigma: float, focal_px: float) -> BAResult:
    """Snapshot, optimise and apply in the calling thread (the deterministic mode); a skipped window is returned
    as it is (:meth:`LocalMap.apply` takes nothing from it)."""
    result = solve_window(local_map.snapshot(sigma), local_map.cfg, focal_px)
    local_map.apply(result)
    return result


@contextmanager
def _main_script_hidden():
    """Start a spawned process without the parent's ``__main__`` script. Spawn runs that script again in the child
    (as ``__mp_main__``, to find functions pickled from it); the backend's child needs only kp2d_ros, and a user's
    script without an ``if __name__ == "__main__":`` guard would run again there: its whole VO run, and a failed
    attempt to start its own backend process. Without ``__file__`` and ``__spec__`` spawn leaves ``__main__`` out."""
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _lower_priority(increment: int, idle: bool = False) -> None:
    """Initializer of the worker process: run at a lower CPU priority (``backend.worker_nice``) and, with ``idle``
    (``backend.worker_idle``), in Linux's SCHED_IDLE class. Even at nice 19 the optimisation took time slices from
    the front end's torch threads on 2 cores; as SCHED_IDLE it runs only on CPU time they leave."""
    import os

    if increment > 0:
        try:
            os.nice(increment)
        except OSError:  # not permitted here: run at the normal priority
            pass
    if idle and hasattr(os, "SCHED_IDLE"):  # Linux; lowering one's own class needs no privilege
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def _load_solver(solver: str) -> None:
    """Import ``backend.solver``'s package (:meth:`BackendWorker.start`, in the child process)."""
    if solver == "ceres":
        import pycolmap  # noqa: F401
        import pyceres  # noqa: F401
    else:
        import gtsam  # noqa: F401


def _serve(conn, increment: int, idle: bool, solver: str) -> None:
    """The worker process (:class:`BackendWorker`): load the solver, lower its priority (:func:`_lower_priority`),
    then answer each ``(fn, args)`` received on ``conn`` with ``(True, fn(*args))``, or ``(False, "Type: message")``
    when it raised, until the pipe closes.

    Signals: Ctrl-C in a terminal reaches the whole process group, and the node's shutdown ends this process itself
    (:meth:`BackendWorker.close`), so SIGINT is ignored here; SIGTERM (multiprocessing's exit hook for a worker that
    was never closed) ends it quietly, where pycolmap's glog handler would print a stack trace."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the solver's import (~1 s of CPU) before the priority drops: at SCHED_IDLE on a CPU the front end keeps busy it
    # took seconds, and the node's first windows waited for it
    _load_solver(solver)
    _lower_priority(increment, idle)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # after the solver's import, which installs glog's
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the node's end closed
            return
        try:
            reply = (True, fn(*args))
        except Exception as e:  # noqa: BLE001 - reported to the node's worker thread, which logs it
            reply = (False, f"{type(e).__name__}: {e}")
        conn.send(reply)


class LaggedWorker:
    """A deterministic stand-in for :class:`BackendWorker`: each window's result comes back at the ``lag``-th
    :meth:`poll` after its :meth:`submit`, optimised in the caller's thread. The pipeline submits a keyframe's
    window and polls at the start of the next frame, so a window lands ``lag`` frames after its keyframe: ``lag``
    1 is the deterministic timing, 2 the node's worker when the CPU keeps up (each window lands at the next
    frame), more the node's on a busy CPU. ``kp2d replay --backend-lag N`` runs the node's timing with it,
    reproducibly; :meth:`wait` finishes the running window at once. The lag counts polls: the pipeline polls once
    per frame, and once more at each :meth:`VOPipeline.finish` its caller makes (the node does after every frame)."""

    def __init__(self, cfg: BackendConfig, lag: int = 3):
        if lag < 1:
            raise ValueError(f"lag must be >= 1 frame, got {lag}")
        self.cfg, self.lag = cfg, int(lag)
        self._job: tuple[WindowProblem, float] | None = None
        self._polls = 0
        self._done: BAResult | None = None

    def submit(self, problem: WindowProblem, focal_px: float) -> None:
        self._job, self._polls = (problem, focal_px), 0

    def ready(self) -> bool:
        return self._job is None and self._done is None

    def _finish(self) -> None:
        problem, focal = self._job
        self._job, self._done = None, bundle_adjust(problem, self.cfg, focal)

    def poll(self) -> BAResult | None:
        if self._job is not None:
            self._polls += 1
            if self._polls >= self.lag:
                self._finish()
        done, self._done = self._done, None
        return done

    def wait(self, timeout: float | None = None) -> BAResult | None:
        if self._job is not None:
            self._finish()
        done, self._done = self._done, None
        return done

    def close(self) -> None:
        self._job = self._done = None


class BackendWorker:
    """One optimisation at a time, the newest window wins, in a child process.

    :meth:`submit` hands a snapshot over (replacing one that has not started); :meth:`poll` returns a
    finished result once, or None. The map itself is only touched by the caller's thread. GTSAM's Python
    binding holds the GIL while it optimises (a Python loop on another thread ran at ~1/6 of its speed), and either
    solver's problem is built in Python, so the optimisation runs in a spawned process (started once, by :meth:`start` or the first window) fed by a daemon thread: the
    front end's thread never waits for it.
    """

    def __init__(self, cfg: BackendConfig, focal_px: float = 1.0):
        self.cfg = cfg
        self.focal_px = focal_px
        # called (from the worker's thread, without arguments) each time a result is ready for poll()
        self.on_done: Callable[[], None] | None = None
        self._cond = threading.Condition()
        self._pending: WindowProblem | MapSnapshot | None = None
        self._done: BAResult | None = None
        self._busy = False
        self._stop = False
        self._process = None  # the child process (started by start() or the first window) ...
        self._conn = None  # ... and this end of its pipe (only the worker thread reads and writes it)
        self._process_lock = threading.Lock()  # not _cond: the front end polls that every frame, and a spawn takes a while
        self._thread = threading.Thread(target=self._run, name="vo_backend", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The child process's id (None before it starts)."""
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        """Start the child process now, which loads the solver, without waiting: otherwise both happen at the first
        window, a second or two of CPU time taken from the first frames (the node calls this at start-up)."""
        with self._process_lock:
            if self._stop or (self._process is not None and self._process.is_alive()):
                return
            if self._process is not None:  # it died: reaped, and its pipe closed
                self._process.join(timeout=1.0)
                self._conn.close()
            import multiprocessing

            # spawn: a fork of a process running torch/rclpy threads is not safe
            # niced: on a small CPU the optimisation must not take the front end's cores (the latency of every frame)
            context = multiprocessing.get_context("spawn")
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, name="vo_backend", daemon=True,
                                      args=(theirs, self.cfg.worker_nice, self.cfg.worker_idle, self.cfg.solver))
            with _main_script_hidden():
                process.start()
            # only the child holds its end now: when it dies, a read here ends (EOF) instead of waiting for ever.
            # (A ProcessPoolExecutor's reader, killed mid-message by close(), waited for ever, and its exit hook
            # with it: a `kp2d bench` hung at exit once in ~20 runs.)
            theirs.close()
            self._process, self._conn = process, mine

    def _optimise(self, window: WindowProblem | MapSnapshot, focal: float) -> BAResult:
        """:func:`solve_window` in the child process (started if it is not running); called by the worker thread."""
        if self._process is None or not self._process.is_alive():
            self.start()  # the first window, or the child died (its failure was logged): a new one
        if self._stop:
            raise RuntimeError("the backend worker is closed")
        self._conn.send((solve_window, (window, self.cfg, focal)))
        ok, value = self._conn.recv()  # EOFError when the child died
        if not ok:
            raise RuntimeError(value)
        return value

    def submit(self, window: WindowProblem | MapSnapshot, focal_px: float) -> None:
        """Optimise ``window``: its problem, or a :class:`MapSnapshot` from which the child process builds it (a
        window that the snapshot skips then comes back from :meth:`poll` as that skipped result)."""
        with self._cond:
            self._pending = window
            self.focal_px = focal_px
            self._cond.notify()

    def poll(self) -> BAResult | None:
        with self._cond:
            done, self._done = self._done, None
            return done

    def ready(self) -> bool:
        """Nothing pending or running, and no finished result waiting for :meth:`poll`: a snapshot taken now
        sees every result applied."""
        with self._cond:
            return self._pending is None and not self._busy and self._done is None

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
        with self._process_lock:
            process, self._process = self._process, None
        if process is not None:
            process.kill()  # do not wait for a running window; not SIGTERM: pycolmap's glog handler prints a stack trace
            process.join(timeout=5.0)  # reaped; the worker thread's read, if any, has ended with it
        self._thread.join(timeout=5.0)
        if self._conn is not None:
            self._conn.close()

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
            callback = self.on_done
            if callback is not None:
                try:
                    callback()
                except Exception as e:  # noqa: BLE001 - a listener's failure must not end the worker
                    log.warning("backend: on_done callback failed: %s: %s", type(e).__name__, e)
