"""Monocular visual odometry: one :meth:`VOPipeline.process` call per frame.

Each frame is matched against the reference keyframe; the essential matrix gives the rotation and
the translation direction, and the translation length comes from the points triangulated by the
previous keyframe pair (the first pair's translation has unit norm, so the whole trajectory
shares one unknown scale). World frame = first camera frame, optical convention.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
import logging
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace

import cv2
import numpy as np

from kp2d_ros.backend import (BAResult, BackendStatus, BackendWorker, LaggedWorker, LocalMap, WindowProblem,
                              bundle_adjust, check_solver, combine_k1, take_rows)
from kp2d_ros.config import VOConfig
from kp2d_ros.errors import DataError
from kp2d_ros.frontend import build_frontend
from kp2d_ros.frontend_common import StillBlocks, exposed, has_content, to_grey
from kp2d_ros.geometry import (angle_between_deg, bearings, cauchy_cost, compose_covariance, compose_relative,
                               essential_inliers, estimate_relative_pose, focal_length, invert_se3, inverse_depths,
                               normalize_points, orthonormalize_se3, patch_warps, pose_from_known_depths,
                               pure_rotation_fit, refine_pose, refine_pose_with_structure, relative_motion_covariance,
                               rotation_angle_deg, rotation_compensated_parallax, rotation_covariance, sampson_errors,
                               scale_from_inverse_depths, skew, travel_angle_deg, two_view_covariance, vote_log_scale)
from kp2d_ros.matching import MatchScorer, filter_matches, match_features, match_near
from kp2d_ros.refine import refine_matches
from kp2d_ros.scale import GroundPoints, MetricScale, ScaleChoice
from kp2d_ros.runtime import apply_thread_settings, one_thread_fewer
from kp2d_ros.types import (Camera, Features, Frame, Frontend, Matches, PoseEstimate, TrackingStatus,
                            TwoViewGeometry)

log = logging.getLogger(__name__)

STAGES = ("network", "matching", "io_net", "refine", "pose", "backend")
BRIGHTNESS_SMOOTHING = 0.1  # frontend.min_brightness: the running mean follows a brightness change within ~10 frames


@dataclass
class Keyframe:
    """Reference view that new frames are matched against.

    Attributes
    ----------
    features : its N features.
    T_world_cam : (4, 4) its pose.
    inv_depth : (N,) signed inverse distance (1 / trajectory units) along each feature's ray, from
        the pair that created this keyframe; NaN where unknown. Scales the next pair.
    inv_depth_sigma : (N,) standard deviation of ``inv_depth`` per unit angular noise.
    image : (H, W) uint8 grey image, kept for sub-pixel refinement (None when ``refine.method`` is none).
    id : its id in the backend's :class:`~kp2d_ros.backend.LocalMap` (-1 without a backend).
    landmarks : (N,) the landmark id each feature observes (-1: none).
    camera : the camera (as given, before the self-calibrated k1) its keypoints are pixels of.
    refined : (N,) bool, ``inv_depth`` is a landmark the backend's window refined (with this keyframe in it).
    window_sigma : (N,) standard deviation per unit angular noise of the refined ``inv_depth``, from the baselines of
        the window's keyframes that observe it (:meth:`~kp2d_ros.backend.LocalMap.inverse_depth_sigma`); inf where
        not refined. ``inv_depth_sigma`` keeps the pairs' sigma.
    window_depth : (N,) inverse distance of the landmark each feature observes where a window refined its position,
        through this keyframe's pose (that window's, or the front end's chain from the window's keyframes when the
        window did not hold this one: the node's windows land after their keyframe stopped being the reference);
        NaN where none. Only for checking a pair's motion (:meth:`VOPipeline._pose_on_known_depths`) until a window
        that holds this keyframe lands (``held``), not its scale: a depth through the chain's pose carries that pose's
        error.
    held : a window that optimised this keyframe has been taken (its ``refined`` depths are that window's).
    checked : (N,) bool, ``inv_depth`` is the pair's triangulation under a pose the motion guard estimated again on
        the matches a window's points explain (a crossing in view): those depths count in ``window_depth`` too until
        a window refines them. The crossing's matches are not among the pair's inliers then, and without them a
        crossing that fills half the view left too few of the scene's points with a window's depth for the
        known-depth pose within two or three keyframes (KITTI 07 with the windows two frames late).
    local_sharpness : (N,) the image's mean squared Laplacian around each keypoint over its squared mean brightness
        there (``pipeline.blur_ratio`` > 0), for telling a blurred frame from a view of smoother content.
    """

    features: Features
    T_world_cam: np.ndarray
    inv_depth: np.ndarray | None = None
    inv_depth_sigma: np.ndarray | None = None
    image: np.ndarray | None = None
    id: int = -1
    landmarks: np.ndarray | None = None
    camera: Camera | None = None
    refined: np.ndarray | None = None
    window_sigma: np.ndarray | None = None
    local_sharpness: np.ndarray | None = None
    window_depth: np.ndarray | None = None
    held: bool = False
    checked: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.features)
        if self.refined is None:
            self.refined = np.zeros(n, bool)
        if self.window_sigma is None:
            self.window_sigma = np.full(n, np.inf)
        if self.window_depth is None:
            self.window_depth = np.full(n, np.nan)
        if self.checked is None:
            self.checked = np.zeros(n, bool)
        if self.inv_depth is None:
            self.inv_depth = np.full(n, np.nan)
            self.inv_depth_sigma = np.full(n, np.inf)
        if self.landmarks is None:
            self.landmarks = np.full(n, -1, np.int64)

    def rescale_depths(self, k: float) -> None:
        """The trajectory's unit x ``k``: inverse depths and their standard deviations / ``k``."""
        self.inv_depth = self.inv_depth / k
        self.inv_depth_sigma = self.inv_depth_sigma / k
        self.window_sigma = self.window_sigma / k
        self.window_depth = self.window_depth / k


@contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += (time.perf_counter() - t0) * 1e3


@dataclass(frozen=True)
class _Tick:
    """When a frame was processed: its stamp (None when unusable: not after the last usable one) and
    its running number."""

    stamp: float | None
    count: int


@dataclass(frozen=True)
class _Span:
    """Time between two frames: seconds (None unless both stamps are usable) and processed frames."""

    seconds: float | None
    frames: int

    @classmethod
    def between(cls, a: _Tick, b: _Tick) -> "_Span":
        ok = a.stamp is not None and b.stamp is not None and b.stamp > a.stamp
        return cls(b.stamp - a.stamp if ok else None, b.count - a.count)

    def ratio(self, other: "_Span") -> float:
        """``self / other``, in seconds when both have them, else in frames."""
        if self.seconds is not None and other.seconds is not None:
            return self.seconds / other.seconds
        return self.frames / max(other.frames, 1)


@dataclass
class _Motion:
    """The last keyframe pair with a translation: the speed and parallax priors.

    distance : length of its translation (trajectory units); span : the moving time it took;
    direction : (3,) unit displacement of the camera centre in the earlier camera's axes;
    parallax_px : its median rotation-compensated parallax; rotation : (3, 3) its rotation (the earlier camera's
    axes -> the later's, as :class:`~kp2d_ros.geometry.TwoViewGeometry`'s ``R``);
    end : when it was measured; keyframes : the pair's backend keyframe ids (its distance follows their
    refined poses).
    """

    distance: float
    span: _Span
    direction: np.ndarray
    parallax_px: float
    rotation: np.ndarray
    end: _Tick
    keyframes: tuple[int, int] = (-1, -1)

    @property
    def rotation_rad(self) -> float:
        return float(np.radians(rotation_angle_deg(self.rotation)))

    def intervals_since(self, now: _Tick) -> float:
        """Time from its end to ``now`` in units of its own span (1: the next frame at the same rate)."""
        return _Span.between(self.end, now).ratio(self.span)


@dataclass
class _BeforeLoss:
    """The tracking state when a restart replaced the reference (:meth:`VOPipeline._lost`), kept for
    ``pipeline.rejoin_frames`` frames so that the views that come back can take the tracker back to it
    (:meth:`VOPipeline._rejoin`). ``since``: the restart's tick."""

    ref: Keyframe
    ref_cov: np.ndarray
    motion: _Motion | None
    base: _Tick
    last_motion: tuple[np.ndarray, np.ndarray] | None
    since: _Tick


@dataclass(frozen=True)
class _ScaleMeasurement:
    """The measured length of a pair's unit translation: ``scale``, the std of its logarithm, whether the
    speed prior's bounds clamped it, and (P,) bool over the pair's inliers: the ``outliers`` among the
    points that voted (their depths contradict it)."""

    scale: float
    log_sigma: float
    clamped: bool
    outliers: np.ndarray


class VOPipeline:
    """Frame-to-keyframe monocular VO.

    Parameters
    ----------
    cfg : validated configuration.
    frontend : feature extractor; built from ``cfg.frontend`` when None.
    scorer : optional learned match filter (IO-Net); its probabilities replace the match scores,
        matches below ``cfg.matching.io_threshold`` are dropped and the rest ordered for PROSAC.
        Built from ``cfg.matching.io_net_path`` when None and ``cfg.matching.io_net`` is set.
    worker : the backend's worker: a :class:`kp2d_ros.backend.LaggedWorker` replays the node's late windows
        reproducibly; when None, a :class:`kp2d_ros.backend.BackendWorker` with ``backend.threaded``, else the
        windows are optimised in :meth:`process` (deterministic).
    """

    def __init__(self, cfg: VOConfig, frontend: Frontend | None = None, scorer: MatchScorer | None = None,
                 worker: BackendWorker | LaggedWorker | None = None):
        self.cfg = cfg
        apply_thread_settings(cfg.pipeline)
        self.frontend = frontend if frontend is not None else build_frontend(cfg.frontend)
        if scorer is None and cfg.matching.io_net:
            if getattr(self.frontend, "name", None) == "kp2d":
                from kp2d_ros.networks.io_scorer import build_scorer  # torch only when IO-Net is on

                scorer = build_scorer(cfg.matching)
            else:  # IO-Net reads KeyPointNet descriptor distances: meaningless for another frontend
                log.info("matching.io_net: IO-Net scores KeyPointNet matches; not used with frontend %s",
                         getattr(self.frontend, "name", type(self.frontend).__name__))
        self.scorer = scorer
        # blocks of the view that stay still while it moves (the robot's own body): no keypoints there. Kept over
        # resets: the camera and what it sees of the robot stay
        self.still_blocks = StillBlocks(cfg.frontend.still_mask_frames) if cfg.frontend.still_mask_frames > 0 else None
        self.metric = MetricScale(cfg)  # metric scale: ground plane / wheel odometry (kp2d_ros/scale.py)
        self.ground_points = GroundPoints(cfg)
        self.worker = worker  # the backend's worker (BackendWorker when backend.threaded, built at reset)
        self._window_listener: Callable[[], None] | None = None  # on_window_done's callback
        self.map: LocalMap | None = None
        # Self-calibration (backend.self_calibration): the residual radial distortion k1 the windows estimate (only
        # windows that measured it report one: backend.bundle_adjust), and the one the front end undistorts with (the
        # median of the latest; kept across resets: same camera).
        self.k1_estimates: list[float] = []
        self.k1_sigmas: list[float | None] = []  # their standard deviations (None: GTSAM's windows report none)
        self.k1 = 0.0
        self._raw_camera: Camera | None = None
        self._normalized: list[tuple[Features, bytes, np.ndarray]] = []  # _normalized_keypoints' last few
        # keyframes whose window found the worker busy (threaded; over the pipeline's life, resets included)
        self.backend_busy_skips = 0
        self.reset()

    def close(self) -> None:
        """Stop the backend's worker thread (when threaded)."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def start_backend(self) -> None:
        """Start the threaded backend's process now rather than at the first window (the node, at start-up)."""
        if isinstance(self.worker, BackendWorker):
            self.worker.start()

    def finish(self) -> None:
        """The backend's work that the last frame's pose does not need, when a worker optimises the windows: the
        new keyframe's landmarks into the local map and its window handed to the worker, then a finished window
        taken. :meth:`process` does it first thing; a caller that publishes each pose (the node) calls it after
        publishing, so that the pose goes out ~2 ms earlier (KITTI 07, stop 30). Its time is counted in the next
        frame's ``backend`` stage and ``total``. Without a worker (deterministic) the window is optimised within
        :meth:`process`, and this does nothing."""
        if self.worker is None:
            return
        t0 = time.perf_counter()
        if self._keyframe_work is not None:
            work, self._keyframe_work = self._keyframe_work, None
            outer = self._backend_ms
            self._map_keyframe(*work)
            self._backend_ms = outer
        self._take_result()  # a window finished on the worker: taken before the next frame
        self._finished_ms += (time.perf_counter() - t0) * 1e3

    def on_window_done(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called, from the worker's thread, each time the threaded backend (:class:`BackendWorker`)
        has finished a window: a caller that waits for its next frame (the node between images) can then take it at
        once with :meth:`take_window`, off the next frame's path and with the refined keyframes out as soon as they
        exist. None: no callback."""
        self._window_listener = callback
        if isinstance(self.worker, BackendWorker):
            self.worker.on_done = callback

    def take_window(self) -> bool:
        """Between frames: take a window the worker has finished, as :meth:`finish` would at the next frame (and hand
        the worker the next one when it is the bottleneck). Not counted in any frame's stages: no frame waits for it.
        Only after :meth:`finish` has done the last keyframe's work. True when a window was taken."""
        if self.worker is None or self._keyframe_work is not None:
            return False
        return self._take_result()

    def _take_result(self) -> bool:
        """A window finished on the worker into the map; True when there was one."""
        outer = self._backend_ms
        result = self.worker.poll()
        if result is not None:
            self._after_backend(result)
            # the worker is the bottleneck (its window landed 2+ keyframes late): a keyframe that found it busy gets
            # its window now rather than idling the worker to the next keyframe (KITTI 07 threaded, 2 cores: 6 runs
            # median 0.114 m against 0.147 m); when it keeps up (1 late) the next keyframe is a frame away
            if self._backend_due and self.backend_lag >= 2 and self.map is not None:
                self._run_backend()
        self._backend_ms = outer
        return result is not None

    def _take_window_after_network(self) -> bool:
        """A window the worker finished while this frame's network ran, taken before its features are matched.

        :meth:`finish` polls at the start of a frame, before the network. A window handed over after the last
        keyframe and done during this frame's network (it takes ~180 ms on KITTI 07, the network ~275 ms; the worker
        needs a core of its own, or ``backend.worker_core``) then landed only after this frame was posed: a saturated
        node's windows were never in time for the next pair, and the pair kept the two-view pose. Taken here, the
        reference is in the window (a lag of 0) and everything after the network runs as in the deterministic mode:
        the refinement's patch warps from the refined depths, the pair posed against the refined pose and points
        (``pipeline.structure_pose``), the window's k1. Only the worker process: :class:`LaggedWorker`'s lag
        counts frames, and the deterministic mode has none. True when a window was taken."""
        if not isinstance(self.worker, BackendWorker):
            return False
        t0 = time.perf_counter()
        result = self.worker.poll()
        if result is not None:
            self._after_backend(result)
        self._backend_ms += (time.perf_counter() - t0) * 1e3
        return result is not None

    def wait_backend(self, timeout: float | None = None) -> None:
        """Wait for the backend's running window (threaded mode) and apply it."""
        self.finish()  # the last keyframe's window first
        if self.worker is not None:
            result = self.worker.wait(timeout)
            if result is not None:
                self._after_backend(result)

    def reset(self) -> None:
        """Forget every frame: the next one re-initialises at the identity."""
        self.ref: Keyframe | None = None
        self.last_pose = np.eye(4)
        # REP 105: the world frame is ``map``; ``odom`` is the front end's own chain of motions, without the backend's
        # corrections, so that it never jumps. T_world_odom takes every correction of the reference keyframe
        # (identity without a backend).
        self.T_world_odom = np.eye(4)
        self.gap = 0  # frames since the reference keyframe
        self.lost_frames = 0
        # Blur (pipeline.blur_ratio): the sharpness of the last keyframes, this frame's, and blurred frames in a row
        self.sharpness: list[float] = []
        self._sharpness_now = 0.0
        self._brightness: float | None = None  # running mean of the images' brightness (frontend.min_brightness)
        self._sharpness_map: np.ndarray | None = None  # squared Laplacian over squared brightness, 9 x 9 means
        self.blurred = False
        self.blurred_run = 0
        self.last_motion: tuple[np.ndarray, np.ndarray] | None = None  # previous pair's (R, unit t)
        self._grey: np.ndarray | None = None  # the frame being processed, when refinement needs it
        # Time and motion priors: the speed is distance per second (per frame without usable stamps);
        # ``base`` starts the moving time of the current pair (the reference, or the last frame in which
        # the camera was seen not to translate: a stop does not count as motion).
        self.motion: _Motion | None = None  # set once the first pair has fixed the trajectory's scale
        self.frames_seen = 0
        self.typical_interval: float | None = None  # between consecutive frames (_interval)
        self.last_stamp: float | None = None
        self.base = _Tick(None, 0)
        self.still = False  # the last frame without translation was judged standing (not too slow to see)
        # whether each of the last two frames processed found the camera standing (detect: the search for still blocks)
        self._stood: deque[bool] = deque([False, False], maxlen=2)
        self._moved_together = False  # in the last frame found standing, the matches that moved agreed on one motion
        self.turning = False  # ... and it turned on the spot (a pure rotation once the camera had moved)
        self.turn_anchor: Keyframe | None = None  # the keyframe the current turn on the spot started from
        self.before_loss: _BeforeLoss | None = None  # the state a restart replaced (pipeline.rejoin_frames)
        self.odom_held: np.ndarray | None = None  # after a rejoin, odom where the lost chain left it, until a pose
        self.speed_changes: list[tuple[float, float]] = []  # (log measured / prior length, elapsed), last pairs
        # (log measured / predicted length, by the stamps and by counting camera intervals), last pairs (_record_clock)
        self.clock_errors: list[tuple[float, float]] = []
        self.frame_clock: float | None = None  # while camera intervals are counted: the stamps' spread (_record_clock)
        self.intervals: list[float] = []  # the last stamp intervals between consecutive frames (_interval)
        self.ref_cov = np.zeros((6, 6))  # covariance of the reference keyframe's pose (world axes)
        self.last_cov = np.zeros((6, 6))
        # Repeated images (pipeline.max_repeated_frames): the last image (a copy), the last estimate, how many frames
        # in a row showed that image since, and the seconds those skipped since the last frame processed
        self._last_image: np.ndarray | None = None
        self._last_est: PoseEstimate | None = None
        self.repeated_run = 0
        self._repeated_s: float | None = 0.0
        self.metric.reset()
        self._travel: tuple[int, float | None] | None = None  # (id of its reference, metres travelled since)
        self._scale_choice: ScaleChoice | None = None  # this frame's, when the metric hook ran
        self._ground_images: dict[str, object] = {}  # grey images for the ground plane: "ref" (id, image), "cur"
        # Local bundle adjustment (backend.window > 0): the map of the recent keyframes and their landmarks.
        if self.worker is not None:
            self.worker.poll()  # a result for the old map is void (its keyframe ids are not in the new one)
        if self.cfg.backend.window > 0:
            if self.map is None:
                check_solver(self.cfg.backend)
            first_id = self.map.next_keyframe_id if self.map is not None else 0
            self.map = LocalMap(self.cfg.backend, first_keyframe_id=first_id)
            if self.cfg.backend.threaded and self.worker is None:
                self.worker = BackendWorker(self.cfg.backend)
                self.worker.on_done = self._window_listener
                # a pipeline dropped without close() must not leave its worker thread and process behind
                weakref.finalize(self, self.worker.close)
        self.last_backend: BAResult | None = None
        self._backend_due = False  # a keyframe found the worker busy (threaded)
        self._backend_refused = ""  # why the last optimised window was not taken
        self.backend_lag = 0  # keyframes made between the last taken window's snapshot and its landing
        self._focal = 1.0
        self._backend_ms = 0.0
        self._keyframe_work: tuple | None = None  # the new keyframe's backend work, for finish() (with a worker)
        self._finished_ms = 0.0  # time in finish() not yet counted in a frame's stages

    # ----------------------------------------------------------------------------------------
    def detect(self, frame: Frame, stood: bool | None = None) -> Features:
        """The frontend's features of ``frame`` (the first stage of :meth:`process`; thread-safe
        with respect to the tracking stages, so :func:`run_pipelined` overlaps it with them; frames in order). A dim
        scene's image is brightened first (``frontend.min_brightness``). With ``backend.worker_core``, on one CPU
        thread fewer while the worker optimises a window.

        ``stood``: whether the frame two before this one found the camera standing (``static``, and the matches
        that moved did not move together: :meth:`_move_together`), which stops the search for still blocks
        (:class:`StillBlocks`); None: from the frames processed so far. Two frames, not one: :func:`run_pipelined`
        detects a frame while the one before is still being processed."""
        self._mask_still_blocks(frame.image, self._stood[0] if stood is None else stood)
        image = self._brightened(frame.image)
        if self.cfg.backend.worker_core and isinstance(self.worker, BackendWorker) and not self.worker.idle():
            with one_thread_fewer(getattr(self.frontend, "name", None) == "kp2d"):
                return self.frontend.detect(image)
        return self.frontend.detect(image)

    def _mask_still_blocks(self, image: np.ndarray, stood: bool) -> None:
        """Hand the frontend the blocks that have stayed still while the view moved (``frontend.still_mask_frames``,
        :class:`StillBlocks`) as a mask for this image's keypoints; logged when they first appear or all go. While the
        camera stands (``stood``) nothing is judged: what moves in the view then is not the camera's motion (a
        vehicle passing a robot that waits), and what stays still is the scene."""
        mask = getattr(self.frontend, "mask", None)
        still = self.still_blocks
        if still is None or mask is None:
            return
        before = still.masked_blocks
        mask.dynamic = still.update(to_grey(image), judge=not stood)
        if (before == 0) != (still.masked_blocks == 0):
            if still.masked_blocks:
                log.warning("%d blocks of 16x16 px (%.0f %% of the image) at its border have not moved while the view "
                            "moved %d times by a median 4 px: no keypoints there until they move (the robot's own body "
                            "in view?). "
                            "frontend.mask_ratios or frontend.mask_image masks it from the first frame",
                            still.masked_blocks, 100.0 * still.masked_fraction, still.frames)
            else:
                log.info("no block of the image is still any more: keypoints everywhere again")

    def _brightened(self, image: np.ndarray) -> np.ndarray:
        """``image`` as the frontend should see it: brightened to ``frontend.min_brightness`` while the running mean
        of the images' brightness (exponential, :data:`BRIGHTNESS_SMOOTHING` per frame: consecutive images get
        nearly the same gain) is below it, else as it is. A frame without content (a covered lens, a black frame)
        does not count: the first images after it would otherwise be brightened several times over."""
        target = self.cfg.frontend.min_brightness
        if target <= 0 or image.dtype != np.uint8 or not has_content(image):
            return image
        mean = float(image.mean())
        b = self._brightness
        self._brightness = mean if b is None else b + BRIGHTNESS_SMOOTHING * (mean - b)
        gain = target / max(self._brightness, 1.0)
        return exposed(image, gain) if gain > 1.0 else image

    def process(self, frame: Frame, features: Features | None = None, travelled_m: float | None = None
                ) -> PoseEstimate:
        """Pose of ``frame`` (camera-to-world) and the tracking state after it.

        ``travelled_m``: metres the camera travelled since the previous processed frame, from another
        sensor (wheel odometry); None when unknown. A metric source for the translation length
        (:mod:`kp2d_ros.scale`), like ``geometry.camera_height_m``; ``PoseEstimate.scale_source`` says
        which one each frame used.

        Steps: detect -> match against the reference keyframe -> (learned filtering) ->
        (sub-pixel refinement) -> essential matrix and pose -> scale -> compose. ``features``: the frame's features when
        already detected (:meth:`detect`); their time is then not part of ``timings_ms``.
        """
        t_start = time.perf_counter()
        timings = {k: 0.0 for k in STAGES}
        last_stamp = self.last_stamp
        carried, self._finished_ms = self._finished_ms, 0.0  # the caller's finish() since the last frame
        self.finish()  # the last keyframe's backend work, unless the caller did it after using that frame's pose
        self._backend_ms, self._finished_ms = carried + self._finished_ms, 0.0
        camera = self._camera(frame)  # with the k1 of a window just taken
        self._focal = focal_length(camera)
        est = self._repeated(frame, travelled_m, last_stamp)
        if est is not None:
            timings["backend"] = self._backend_ms
            timings["total"] = (time.perf_counter() - t_start) * 1e3 + carried
            est.timings_ms = timings
            self._stood.append(False)
            return est
        with _timed(timings, "network"):
            feats = features if features is not None else self.detect(frame)
        if self._take_window_after_network():
            camera = self._camera(frame)  # with the k1 of the window just taken
        # the grey image once, for whichever of refinement, the blur gate and the ground plane need it
        grey = to_grey(frame.image) if (self.cfg.refine.method != "none" or self.cfg.pipeline.blur_ratio > 0
                                        or self.metric.active) else None
        self._grey = grey if self.cfg.refine.method != "none" else None
        self._judge_blur(grey)
        self._accumulate_travel(travelled_m)
        self._scale_choice = None
        if self.metric.active:
            self._ground_images["cur"] = grey
        if self.ref is None:
            est = self._initialise(frame, feats)
        elif not _same_camera(self.ref.camera, self._raw_camera):
            est = self._camera_changed(frame, feats)
        else:
            self.gap += 1
            with _timed(timings, "matching"):
                if self.before_loss is not None and self._rejoin(feats, camera):
                    self.odom_held = invert_se3(self.T_world_odom) @ self.last_pose
                matches = match_features(self.ref.features, feats, self.cfg.matching)
            if self.scorer is not None:
                with _timed(timings, "io_net"):
                    matches = self._filter(matches, feats, camera)
            if self._grey is not None:
                with _timed(timings, "refine"):
                    feats = self._refine(feats, matches, frame, camera)
            before = self._backend_ms
            with _timed(timings, "pose"):
                est = self._track(frame, camera, feats, matches)
            timings["pose"] -= self._backend_ms - before  # a window optimised in this thread is its own stage
            if self.odom_held is not None and est.status != TrackingStatus.LOST:
                # odom (REP 105) never jumps: it holds across the rejoin, and map -> odom takes the lost chain's error
                self.T_world_odom = orthonormalize_se3(est.T_world_cam @ invert_se3(self.odom_held))
                self.odom_held = None
        timings["backend"] = self._backend_ms
        timings["total"] = (time.perf_counter() - t_start) * 1e3 + carried
        est.timings_ms = timings
        self._label_scale(est)
        if est.is_keyframe and self.metric.active:
            self._ground_images["ref"] = (id(self.ref), self._ground_images.get("cur"))
        self._name_keyframe(est)
        self.last_pose = est.T_world_cam
        est.T_world_odom = self.T_world_odom.copy()
        est.T_odom_cam = invert_se3(self.T_world_odom) @ est.T_world_cam
        est.interval_s = self._interval(last_stamp, frame.stamp)
        if est.interval_s is not None and self._repeated_s is not None:
            est.interval_s += self._repeated_s  # the frames skipped since the last one processed
        elif self._repeated_s != 0.0:
            est.interval_s = None
        self._repeated_s = 0.0
        self._last_est = est
        self._stood.append(est.motion_model == "static" and not self._moved_together)
        return est

    def _repeated(self, frame: Frame, travelled_m: float | None, last_stamp: float | None) -> PoseEstimate | None:
        """The estimate of a frame that shows the last frame's image again, byte for byte, or None to process it.

        A real camera's noise never repeats an image, so a repeated one is stale: a stalled camera or a driver that
        sent its last image twice with a new stamp (``pipeline.max_repeated_frames``). It carries nothing new: the
        tracker skips it as it would a dropped frame (no network, no matching, no state change, so the next image's
        pair spans its time as well), and the last pose is held in odom: STATIC, as the image shows no motion, with
        ``motion_model`` ``repeated``. Its covariance grows by the last pair's length per camera interval while the
        camera was moving (it may have moved on unseen).
        Before, such a frame was a stop: the speed prior's moving time restarted, and the next pair's prior and patch
        warps expected one interval of motion. Only up to ``max_repeated_frames`` in a row, and only while tracking
        or standing: after that the images are taken as they come (a noiseless simulator's camera standing still
        repeats its image too, and its stop must restart the moving time)."""
        n = self.cfg.pipeline.max_repeated_frames
        image = np.asarray(frame.image)
        last = self._last_image
        if not (n > 0 and last is not None and last.shape == image.shape and last.dtype == image.dtype
                and np.array_equal(last, image)):
            self.repeated_run = 0
            self._last_image = image.copy() if n > 0 else None  # a copy: a caller may reuse its buffer
            return None
        self.repeated_run += 1
        prev = self._last_est
        if (self.repeated_run > n or prev is None or self.ref is None
                or prev.status not in (TrackingStatus.TRACKING, TrackingStatus.STATIC)
                or not _same_camera(self.ref.camera, self._raw_camera)):
            return None
        self._tick(frame)
        self._accumulate_travel(travelled_m)
        cov = None if prev.covariance is None else prev.covariance.copy()
        m = self.motion
        if cov is not None and prev.status == TrackingStatus.TRACKING and m is not None:
            step = m.distance / max(self._camera_intervals(m.span), 1)  # the last pair's length per camera interval
            cov[np.diag_indices(3)] += step ** 2
        T_world_cam = self.T_world_odom @ prev.T_odom_cam  # odom held; map -> odom as the backend has it now
        empty = np.zeros((0, 2))
        est = PoseEstimate(stamp=frame.stamp, T_world_cam=T_world_cam, status=TrackingStatus.STATIC,
                           num_features=prev.num_features, features=prev.features,
                           matched=np.zeros(prev.num_features, bool), ref_keypoints=empty, cur_keypoints=empty,
                           quality=prev.quality, covariance=cov, motion_model="repeated",
                           T_odom_cam=prev.T_odom_cam.copy(), T_world_odom=self.T_world_odom.copy(),
                           scale_source="none", scale_metric=self.metric.metric)
        self._name_keyframe(est)
        self.last_pose = est.T_world_cam
        est.interval_s = self._interval(last_stamp, frame.stamp)
        self._repeated_s = (self._repeated_s + est.interval_s
                            if est.interval_s is not None and self._repeated_s is not None else None)
        self._last_est = est
        return est

    def _name_keyframe(self, est: PoseEstimate) -> None:
        """``est.keyframe_id`` / ``T_keyframe_cam``: the backend keyframe it was posed against (the reference) and
        its pose relative to it, when there is a backend and ``est`` is not lost."""
        if self.map is not None and est.status != TrackingStatus.LOST and self.ref is not None and self.ref.id >= 0:
            est.keyframe_id = self.ref.id
            est.T_keyframe_cam = invert_se3(self.ref.T_world_cam) @ est.T_world_cam

    def _interval(self, last_stamp: float | None, stamp: float) -> float | None:
        """``PoseEstimate.interval_s``: this frame's time since the last one (``last_stamp``) by the clock of
        :meth:`_pair_intervals` (the stamps, or its camera intervals times the typical interval), and the typical
        interval updated: the mean of the last 30 intervals within +-50 % of their median. Consecutive intervals
        share their stamps, so their mean is the span over the count and a stamp's jitter enters it once (their median
        kept ~5 % of a +-30 % jitter)."""
        stamp = float(stamp)
        if last_stamp is None or not stamp > last_stamp:
            return None
        raw = stamp - last_stamp
        counted = self.frame_clock is not None and self.typical_interval is not None
        out = self._camera_intervals(_Span(raw, 1)) * self.typical_interval if counted else raw
        self.intervals = self.intervals[-29:] + [raw]
        d = np.array(self.intervals)
        median = float(np.median(d))
        regular = d[np.abs(d / median - 1.0) <= 0.5]
        self.typical_interval = float(regular.mean()) if regular.size else median
        return out

    def _judge_blur(self, grey: np.ndarray | None) -> None:
        """``self.blurred``: this frame (``grey``) is much less sharp than the last keyframes (``pipeline.blur_ratio``;
        the variance of the Laplacian over the squared mean brightness), and fewer than ``max_blurred_frames`` were
        in a row. Both sharpness measures (this one and the local one, :meth:`_local_sharpness`) are relative to the
        brightness: an auto-exposure step to half the brightness quarters the Laplacian's variance, and was taken
        for 10 frames of blur (docs/results.md: Auto-exposure). A frame without content
        (:func:`~kp2d_ros.frontend_common.has_content`: a black frame) is not blurred: there is nothing to continue from,
        and it is lost as any frame that cannot be posed."""
        pc = self.cfg.pipeline
        self.blurred = False
        if pc.blur_ratio <= 0:
            return
        laplacian = cv2.Laplacian(grey, cv2.CV_32F)
        self._sharpness_now = float(laplacian.var()) / max(float(grey.mean()), 1.0) ** 2
        brightness = np.maximum(cv2.boxFilter(grey, cv2.CV_32F, (9, 9)), 1.0)  # from uint8: 0.6 ms, not 4.5 (KITTI)
        self._sharpness_map = cv2.boxFilter(laplacian * laplacian, -1, (9, 9)) / (brightness * brightness)
        if not has_content(grey):  # a covered lens has no sharpness, but is not blurred: nothing to continue from
            return
        if self.sharpness and self._sharpness_now < pc.blur_ratio * float(np.median(self.sharpness)):
            self.blurred_run += 1
            self.blurred = self.blurred_run <= pc.max_blurred_frames
        else:
            self.blurred_run = 0

    def _local_sharpness(self, keypoints: np.ndarray) -> np.ndarray | None:
        """(N,) this frame's mean squared Laplacian around each keypoint over the squared mean brightness there (9 x 9
        windows; None without ``pipeline.blur_ratio``)."""
        m = self._sharpness_map
        if m is None:
            return None
        h, w = m.shape
        x = np.clip(np.rint(keypoints[:, 0]).astype(np.int64), 0, w - 1)
        y = np.clip(np.rint(keypoints[:, 1]).astype(np.int64), 0, h - 1)
        return m[y, x]

    def _confirm_blur(self, matches: Matches, feats: Features) -> None:
        """A frame much less sharp than the last keyframes may only show smoother content: a robot turning from the
        street to a plain wall (the synthetic street's side wall: 0.3x the street's Laplacian variance) was taken for
        10 blurred frames in a row, and without keyframes the turn was lost. It is blurred only if the points it shares
        with its reference are less sharp in it too (median over the matches, the same ``blur_ratio``)."""
        ref = self.ref.local_sharpness
        if not self.blurred or ref is None or len(matches) < self.cfg.geometry.min_inliers:
            return
        now = self._local_sharpness(feats.keypoints[matches.idx1])
        before = float(np.median(ref[matches.idx0]))
        if before > 0 and float(np.median(now)) >= self.cfg.pipeline.blur_ratio * before:
            self.blurred = False
            self.blurred_run = 0

    def _keyframe_allowed(self, wanted: bool) -> bool:
        """The keyframe decision's last word: a frame that wants to become a keyframe may, unless it is blurred
        (``pipeline.blur_ratio``). A blurred keyframe's poorly placed keypoints would carry the next frames' poses;
        the frames after a burst match the last sharp keyframe instead. (A camera change restarts regardless.)"""
        return bool(wanted) and not self.blurred

    def _accumulate_travel(self, travelled_m: float | None) -> None:
        """Add this frame's externally measured travel to the sum since the reference keyframe (unknown
        once any frame since it had none)."""
        if self.ref is None:
            self._travel = None
            return
        if self._travel is None or self._travel[0] != id(self.ref):
            self._travel = (id(self.ref), 0.0)
        done = self._travel[1]
        ok = done is not None and travelled_m is not None and np.isfinite(travelled_m) and travelled_m >= 0
        if travelled_m is not None and not ok and done is not None:
            log.warning("travelled distance %r ignored (not a finite distance >= 0)", travelled_m)
        self._travel = (id(self.ref), done + float(travelled_m) if ok else None)

    def _choose_scale(self, scale: float | None, log_sigma: float, geom: TwoViewGeometry, camera: Camera,
                      is_kf: bool) -> ScaleChoice:
        """The hook where a metric source (ground plane, travelled distance) may replace the pair's
        propagated translation length ``scale`` (None: the first pair)."""
        points = None
        if self.metric.active and is_kf:
            ref = self._ground_images.get("ref")
            ref_image = ref[1] if ref is not None and ref[0] == id(self.ref) else None
            points = self.ground_points(ref_image, self._ground_images.get("cur"), camera, geom.R, geom.t)
        distance = self._travel[1] if self._travel is not None and self._travel[0] == id(self.ref) else None
        choice = self.metric.choose(scale, log_sigma, points, distance, commit=is_kf)
        self._scale_choice = choice
        if choice.rescale != 1.0:
            self._rescale_world(choice.rescale)
        elif is_kf and self.map is not None and choice.window_rescale != 1.0:
            self._rescale_behind(choice.window_rescale)
        return choice

    def _rescale_behind(self, k: float) -> None:
        """The metric filter corrected the window's scale by ``k`` at this keyframe pair
        (:attr:`ScaleChoice.window_rescale`): the window behind the reference follows, scaled about the reference's
        centre (:meth:`LocalMap.rescale_about`), and the reference's depths with it. Without this the window's held keyframes kept the scale they had, its landmarks
        carried it into the next pairs, and the filter's corrections were undone window after window: KITTI 07
        with the ground plane ended 6 % off metric, its steps 5-11 % short for most of the clip (docs/results.md,
        Metric scale). The odometry stays continuous: the reference keeps its pose."""
        if not (np.isfinite(k) and k > 0) or k == 1.0:
            return
        self.map.rescale_about(self.ref.T_world_cam[:3, 3], k)
        self.ref.rescale_depths(k)

    def _rescale_world(self, k: float) -> None:
        """Change the trajectory's unit: positions x ``k``, the reference's inverse depths / ``k`` (the world
        origin, the first camera, stays; the metric scale's acquisition)."""
        log.info("scale: metric from now on; the trajectory so far is rescaled by %.4g", k)
        if self.map is not None:  # the backend's window too (a window in flight is taken first, in the old unit)
            self.wait_backend()
            self.map.rescale(k)
        D = np.diag([k, k, k, 1.0, 1.0, 1.0])
        self.ref.T_world_cam[:3, 3] *= k
        self.ref.rescale_depths(k)
        self.ref_cov = D @ self.ref_cov @ D
        self.last_cov = D @ self.last_cov @ D
        self.last_pose = self.last_pose.copy()
        self.last_pose[:3, 3] *= k
        self.T_world_odom = self.T_world_odom.copy()
        self.T_world_odom[:3, 3] *= k  # odom's positions x k as well
        if self.motion is not None:
            self.motion = replace(self.motion, distance=self.motion.distance * k)

    def _label_scale(self, est: PoseEstimate) -> None:
        """``est.scale_source`` / ``scale_metric`` / ``scale_notes``: which scale this frame used."""
        c = self._scale_choice
        est.scale_metric = self.metric.metric
        if c is not None:
            est.scale_source, est.scale_notes, est.scale_rescaled = c.source, c.notes, c.rescale
        elif est.motion_model in ("measured", "constant_speed", "constant_velocity"):
            est.scale_source = "propagated"

    # ----------------------------------------------------------------------------------------
    def _camera(self, frame: Frame) -> Camera:
        """The frame's camera (else the configured one) with the self-calibrated radial distortion added to its
        k1; the camera as given is kept in ``_raw_camera`` (the backend's observations use it)."""
        if frame.camera is not None and frame.camera.K[0, 0] > 0:
            camera = frame.camera
        else:
            c = self.cfg.camera
            if not c.is_set:
                raise DataError("frame has no camera intrinsics and camera.fx/fy are not configured")
            h, w = frame.image.shape[:2]
            camera = Camera.from_intrinsics(c.fx, c.fy, c.cx, c.cy, w, h, c.distortion, model=c.distortion_model)
        self._raw_camera = camera
        if self.k1 == 0.0 or not self._self_calibrating(camera):
            return camera
        dist = np.zeros(5) if camera.dist.size == 0 else camera.dist.astype(np.float64).copy()
        dist[0] += self.k1
        return replace(camera, dist=dist)

    def _normalized_keypoints(self, feats: Features, camera: Camera) -> np.ndarray:
        """(N, 2) normalised coordinates of all of ``feats``' keypoints through ``camera``, kept for the last four
        (feature set, lens) pairs: this frame's and the reference's (a keyframe is the next frames' reference), each
        through the front end's lens and the backend's (:meth:`_observed_rays`). Through a lens with distortion (a
        real one, or the window's self-calibrated k1) each point is undistorted iteratively, and a frame needs its
        matches' points several times: the essential matrix, the pose's inliers, the patch warps, the backend's
        observations, the direction gate, the pose on known depths, the turn search. Callers index the array (a copy)
        or only read it; they never write to it."""
        key = camera.model.encode() + camera.K.tobytes() + np.asarray(camera.dist, np.float64).tobytes()
        for f, k, n in self._normalized:
            if f is feats and k == key:
                return n
        n = normalize_points(feats.keypoints, camera)
        self._normalized = [(feats, key, n)] + self._normalized[:3]  # through two lenses: the window's, as observed
        return n

    def _self_calibrating(self, camera: Camera | None) -> bool:
        """Whether the windows estimate k1 for ``camera``: its model has an r^2 term that k1 adds to."""
        return (self.cfg.backend.self_calibration and camera is not None
                and camera.model in ("plumb_bob", "rational_polynomial"))

    def _filter(self, matches: Matches, feats: Features, camera: Camera) -> Matches:
        kp0 = self.ref.features.keypoints[matches.idx0]
        kp1 = feats.keypoints[matches.idx1]
        probs = self.scorer.score(kp0, kp1, matches.distances, (camera.width, camera.height))
        return filter_matches(matches, probs, self.cfg.matching.io_threshold)

    def _refine(self, feats: Features, matches: Matches, frame: Frame, camera: Camera) -> Features:
        """``feats`` with its matched keypoints moved to their sub-pixel positions relative to the
        reference keyframe's (unmatched and unrefined ones stay where the frontend put them). When this
        frame becomes a keyframe, the next frames are refined against these positions: tracks stay
        consistent from keyframe to keyframe. With ``refine.affine`` each reference patch is first warped as
        the predicted motion moves it (:meth:`_patch_warps`)."""
        ref_img = self.ref.image
        if ref_img is None or ref_img.shape != self._grey.shape or len(matches) == 0:
            return feats
        kp0 = self.ref.features.keypoints[matches.idx0]
        warps = self._patch_warps(matches.idx0, kp0, frame, camera) if self.cfg.refine.affine else None
        r = refine_matches(ref_img, self._grey, kp0, feats.keypoints[matches.idx1], self.cfg.refine, warps)
        keypoints = feats.keypoints.copy()
        keypoints[matches.idx1] = r.keypoints
        return replace(feats, keypoints=keypoints)

    def _patch_warps(self, idx0: np.ndarray, kp0: np.ndarray, frame: Frame, camera: Camera) -> np.ndarray | None:
        """(M, 2, 2) predicted local maps reference -> this frame of the matched reference keypoints, or None
        without a prediction. The motion is the last pair's rotation and direction at the speed prior's length;
        the points are the reference's known depths. A point without a depth, or with an implausible map (a
        determinant outside 1/2..2), keeps the identity: plain translation, as without ``refine.affine``."""
        expected = self._prior(self._next_tick(frame))
        if self.last_motion is None or expected is None:
            return None
        R, t = self.last_motion
        rho = self.ref.inv_depth[idx0]
        known = np.isfinite(rho) & (rho > 0)
        if not known.any():
            return None
        warps = np.tile(np.eye(2), (len(idx0), 1, 1))
        X = bearings(self._normalized_keypoints(self.ref.features, camera)[idx0[known]]) / rho[known, None]
        J = patch_warps(X, R, t / np.linalg.norm(t) * expected[0], camera.K)
        det = np.linalg.det(np.nan_to_num(J))
        good = np.isfinite(J).all(axis=(1, 2)) & (det > 0.5) & (det < 2.0)
        rows = np.flatnonzero(known)[good]
        warps[rows] = J[good]
        return warps

    def _initialise(self, frame: Frame, feats: Features) -> PoseEstimate:
        if len(feats) < self.cfg.geometry.min_inliers:  # a covered lens at start-up: no keyframe; the next frame tries
            return PoseEstimate(stamp=frame.stamp, T_world_cam=self.last_pose.copy(),
                                status=TrackingStatus.INITIALIZING, num_features=len(feats), is_keyframe=False,
                                features=feats, matched=np.zeros(len(feats), bool),
                                ref_keypoints=np.zeros((0, 2), np.float32), cur_keypoints=np.zeros((0, 2), np.float32),
                                covariance=self.last_cov.copy(), motion_model="none")
        self.turn_anchor = None
        self.ref = Keyframe(features=feats, T_world_cam=self.last_pose.copy(), image=self._grey,
                            camera=self._raw_camera, local_sharpness=self._local_sharpness(feats.keypoints))
        self.sharpness = [self._sharpness_now] if self.cfg.pipeline.blur_ratio > 0 else []
        if self.map is not None:
            self.ref.id = self.map.add_keyframe(self.ref.T_world_cam)
        self.lost_frames = 0
        self.gap = 0
        self.base = self._tick(frame)
        # The first frame defines the world frame; its covariance is the resolution of one view, not zero.
        sigma = self.cfg.pipeline.covariance_noise_floor_px / focal_length(self._camera(frame))
        self.ref_cov = self.last_cov = np.eye(6) * sigma ** 2
        return PoseEstimate(stamp=frame.stamp, T_world_cam=self.ref.T_world_cam.copy(),
                            status=TrackingStatus.INITIALIZING, num_features=len(feats), is_keyframe=True,
                            features=feats, matched=np.zeros(len(feats), bool),
                            ref_keypoints=np.zeros((0, 2), np.float32), cur_keypoints=np.zeros((0, 2), np.float32),
                            covariance=self.ref_cov.copy(), motion_model="none")

    def _next_tick(self, frame: Frame) -> _Tick:
        """The tick :meth:`_tick` will give ``frame``, without counting it: its stamp is usable when finite and
        later than the last finite stamp (usable or not). A stamp that jumps back is unusable itself, and the next
        ones are compared with it: a first frame stamped by another clock (``vo_node`` stamps a header stamp of 0
        with its own clock, years after a bag's stamps) used to make every later stamp unusable, and the speed
        prior counted frames, not time, for the rest of the run (a 5-interval gap in slow motion: a 0.2x step)."""
        stamp = float(frame.stamp)
        usable = np.isfinite(stamp) and (self.last_stamp is None or stamp > self.last_stamp)
        return _Tick(stamp if usable else None, self.frames_seen + 1)

    def _camera_intervals(self, span: _Span) -> int:
        """Camera intervals in ``span``: its processed frames, or where its seconds are at least 0.7 typical intervals
        (:attr:`typical_interval`, the one now: two spans compared are counted in one unit) more, their rounded
        number. A dropped frame is counted where the stamps' jitter is below +-15 % of the interval, and no jitter
        below +-35 % adds one."""
        if span.seconds is None or self.typical_interval is None:
            return span.frames
        x = span.seconds / self.typical_interval
        return int(round(x)) if x >= span.frames + 0.7 else span.frames

    def _tick(self, frame: Frame) -> _Tick:
        """Count ``frame`` (:meth:`_next_tick`)."""
        now = self._next_tick(frame)
        self.frames_seen = now.count
        if np.isfinite(frame.stamp):
            self.last_stamp = float(frame.stamp)
        return now

    def _pair_intervals(self, now: _Tick) -> float:
        """This pair's moving time (``self.base`` to ``now``) in units of the last pair's (``self.motion``).

        By the stamps, unless they are jittered (a driver that stamps each image when the host receives it): when
        counting camera intervals has predicted the last pairs' lengths clearly better than the stamps
        (:meth:`_record_clock`), it counts them (:meth:`_camera_intervals`: one per frame, more across a dropped
        frame). The speed prior's length, the patch warps' zoom and the gap test all read it. Stamps jittered by
        +-30 % of the frame interval cost the learned frontend's KITTI 07 0.057 -> 0.095 m through the patch warps
        alone (the wrong zoom biases the LK refinement); SIFT, without the refinement, hardly moved
        (docs/results.md: Jittered stamps)."""
        span = _Span.between(self.base, now)
        return span.ratio(self.motion.span) if self.frame_clock is None else self._camera_ratio(span)

    def _camera_ratio(self, span: _Span) -> float:
        """``span`` over the last pair's (``self.motion.span``) in camera intervals (:meth:`_camera_intervals`)."""
        return self._camera_intervals(span) / max(self._camera_intervals(self.motion.span), 1)

    def _record_clock(self, length: float, now: _Tick) -> None:
        """Remember how well each clock predicted this pair's measured ``length``, and choose the clock
        (:meth:`_pair_intervals`): :attr:`frame_clock` is the stamps' robust spread of log length errors when the
        count of camera intervals predicted the last pairs' lengths with less than half of it (at least 10 pairs
        measured), else None (the stamps)."""
        m = self.motion
        span = _Span.between(self.base, now)
        if span.seconds is None or m.span.seconds is None or not m.distance > 0 or not length > 0:
            return  # no stamps to judge: both clocks count frames
        by_time, by_frames = span.ratio(m.span), self._camera_ratio(span)
        errors = (float(np.log(length / (m.distance * by_time))), float(np.log(length / (m.distance * by_frames))))
        self.clock_errors = self.clock_errors[-29:] + [errors]
        self.frame_clock = None
        if len(self.clock_errors) >= 10:
            e = np.array(self.clock_errors)
            spread_time, spread_frames = 1.4826 * np.median(np.abs(e - np.median(e, axis=0)), axis=0)
            self.frame_clock = float(spread_time) if spread_frames < 0.5 * spread_time else None

    def _prior(self, now: _Tick) -> tuple[float, float] | None:
        """(expected translation length since ``self.base``, allowed change factor) at constant speed.

        The speed is the last pair's distance over its moving time; the factor is
        ``max_scale_change`` per interval of that pair, compounded over the time since it was
        measured (a long gap or stop allows a larger change). None before the first pair.
        """
        m = self.motion
        if m is None:
            return None
        expected = m.distance * self._pair_intervals(now)
        elapsed = m.intervals_since(now)
        return max(expected, 1e-12), self.cfg.pipeline.max_scale_change ** float(np.clip(elapsed, 1.0, 20.0))

    def _prior_log_std(self, now: _Tick) -> tuple[float, float]:
        """(standard deviation of the log speed prior at ``now``, elapsed intervals of the last pair since it).

        The log speed is a random walk: its variance per interval is the larger of ``speed_change_sigma``
        squared and what the last pairs' changes show (robustly: 1.4826 x median |change| / sqrt(interval)).
        """
        m = self.motion
        elapsed = float(np.clip(m.intervals_since(now), 1.0, 20.0))
        sigma = self.cfg.pipeline.speed_change_sigma
        if len(self.speed_changes) >= 5:
            d, e = np.array(self.speed_changes[-30:]).T
            sigma = max(sigma, 1.4826 * float(np.median(np.abs(d) / np.sqrt(e))))
        return sigma * np.sqrt(elapsed), elapsed

    def _track(self, frame: Frame, camera: Camera, feats: Features, matches: Matches) -> PoseEstimate:
        """Steps: image motion check -> essential matrix and pose -> translation length (shared structure,
        else the speed prior) -> compose -> keyframe decision -> covariance."""
        cfg, pc = self.cfg, self.cfg.pipeline
        now = self._tick(frame)
        ref = self.ref
        kp0 = ref.features.keypoints[matches.idx0]
        kp1 = feats.keypoints[matches.idx1]
        if len(matches) < cfg.geometry.min_inliers:
            return self._unposed(frame, camera, feats, matches, now)
        self._confirm_blur(matches, feats)
        displacement_px = float(np.median(np.linalg.norm(kp1 - kp0, axis=1)))
        if displacement_px < pc.static_parallax_px:  # neither rotation nor parallax
            return self._untranslated(frame, camera, feats, matches, None, now)
        # After a gap (this pair's moving time more than 1.5 of the last pair's: frames dropped, dark or lost) the last
        # motion says little about this pair: the pose on the reference's known depths is a hypothesis too. Not
        # between consecutive frames: there the two lie in one flat valley of the cost, and which one polishes lower is
        # the noise's choice (a synthetic drive: one 0.72 m step 0.06 -> 0.17 m off). Nor after a stop or a turn on the
        # spot, which restart the moving time (``self.base``): there the last motion is the robot's speed again.
        stale = self.motion is not None and self._pair_intervals(now) > 1.5
        m0 = self._normalized_keypoints(ref.features, camera)[matches.idx0]
        m1 = self._normalized_keypoints(feats, camera)[matches.idx1]
        known = self._pose_on_known_depths(matches, m0, m1) if pc.structure_pose and stale else None
        priors = [self.last_motion if cfg.geometry.motion_prior else None, known]
        geo = cfg.geometry
        if self.turning:  # turning on the spot: starting to move needs twice the parallax (hysteresis)
            geo = replace(geo, rotation_only_parallax_px=2.0 * geo.rotation_only_parallax_px)
        configured = self._raw_camera if camera is not self._raw_camera else None
        # through the configured lens: the same arrays the backend observes a keyframe's matches in (_observed_rays)
        c01 = None if configured is None else (self._normalized_keypoints(ref.features, configured)[matches.idx0],
                                               self._normalized_keypoints(feats, configured)[matches.idx1])
        geom = estimate_relative_pose(kp0, kp1, camera, geo, ordered=True,
                                      priors=[p for p in priors if p is not None], configured=configured,
                                      normalized=(m0, m1), configured_normalized=c01)
        guarded = False
        if geom is not None:
            guarded_geom = self._guard_motion(geom, kp0, kp1, camera, configured, c01, geo, matches, m0, m1, known)
            geom, guarded = guarded_geom, guarded_geom is not geom
        if geom is None:
            self.last_motion = None
            return self._unposed(frame, camera, feats, matches, now)
        if self.blurred and int(geom.inliers.sum()) < pc.keyframe_min_inliers and self.motion is not None:
            # a blurred frame's few inliers (a heavy blur: 17-21 of 2000) hold neither its translation nor its
            # rotation (docs/results.md: Robustness, stop 28): the last pair's velocity does
            return self._unposed(frame, camera, feats, matches, now)
        self.last_motion = (geom.R, geom.t) if np.any(geom.t) else None
        self.lost_frames = 0
        if not np.any(geom.t):  # translation unobservable: a pure rotation, a stop, or too slow to see
            return self._untranslated(frame, camera, feats, matches, geom, now)

        self.still = self.turning = False
        inl = geom.inliers
        n0, n1 = m0[inl], m1[inl]
        geom = self._gate_direction(geom, n0, n1, camera)  # the same inliers
        f = focal_length(camera)
        rho0, rho1, sin0, sin1 = inverse_depths(n0, n1, geom.R, geom.t)
        with np.errstate(divide="ignore"):
            sigma0, sigma1 = 1.0 / sin0, 1.0 / sin1
        parallax_px = float(np.median(rotation_compensated_parallax(n0, n1, geom.R))) * f
        n_inl = int(inl.sum())
        expected = self._prior(now)
        # The first pair (no speed yet: it defines the unit) needs only min_parallax_px, as every pair with
        # keyframe_parallax_px 0: a larger spacing is for the keyframes that follow (the window's baselines).
        spacing = pc.keyframe_parallax_px if expected is not None else 0.0
        is_kf = self._keyframe_allowed(displacement_px >= pc.min_parallax_px
                                       and (parallax_px >= spacing or n_inl < pc.keyframe_min_inliers))
        prior_std, elapsed = self._prior_log_std(now) if expected is not None else (np.inf, 1.0)
        measured = self._scale(geom, rho0, sigma0, matches, cfg.geometry.ransac_threshold_px / f, expected, prior_std)
        if measured is not None and not measured.clamped and pc.structure_pose:
            posed = self._pose_on_structure(geom, n0, n1, matches, measured, cfg.geometry.ransac_threshold_px / f)
            if posed is not None:  # this pair's depths (a keyframe's) from the adjusted pose
                geom, scale = posed
                measured = replace(measured, scale=scale)
                _, rho1, _, sin1 = inverse_depths(n0, n1, geom.R, geom.t)
                with np.errstate(divide="ignore"):
                    sigma1 = 1.0 / sin1
        model = "measured"
        if measured is not None:
            scale, log_sigma = measured.scale, measured.log_sigma
            if expected is not None and not measured.clamped:
                self.speed_changes = self.speed_changes[-29:] + [(float(np.log(scale / expected[0])), elapsed)]
                self._record_clock(scale, now)
        elif expected is not None:  # no shared structure: the length from the speed prior
            scale, log_sigma, model = expected[0], np.log(expected[1]) / 2.0, "constant_speed"
        elif is_kf:  # the first pair: unit baseline (defines the trajectory's unit), or a metric length
            scale, log_sigma = None, 0.0
        else:  # no scale yet: rotation only, position held until the first keyframe pair
            return self._rotation_only(frame, camera, feats, matches, geom, n0, n1, now, standing=False)
        if self.metric.active or self._travel is not None and self._travel[1] is not None:
            choice = self._choose_scale(scale, log_sigma, geom, camera, is_kf)
            scale, log_sigma = choice.scale, choice.log_sigma
        elif scale is None:
            scale = 1.0
        T = compose_relative(ref.T_world_cam, geom.R, scale * geom.t)
        cov_rt, basis = two_view_covariance(geom.R, geom.t, n0, n1, pc.covariance_noise_floor_px / f)
        cov = self._accumulate(T, relative_motion_covariance(geom.R, geom.t, scale, cov_rt, basis, scale * log_sigma))
        if is_kf:
            kf = Keyframe(features=feats, T_world_cam=T)
            idx1 = matches.idx1[inl]
            kf.inv_depth[idx1], kf.inv_depth_sigma[idx1] = self._fuse_depths(
                geom, n0, matches.idx0[inl], scale, rho1 / scale, sigma1 / scale, cfg.geometry.ransac_threshold_px / f)
            if measured is not None:  # points whose depth contradicts the scale (mismatched, moving) carry none
                kf.inv_depth[idx1[measured.outliers]] = np.nan
                kf.inv_depth_sigma[idx1[measured.outliers]] = np.inf
            if guarded:  # the pair's pose is the one the guard estimated again on a window's points
                kf.checked[idx1] = True
            direction = -geom.R.T @ geom.t
            n0, n1 = self._observed_rays(n0, n1, feats, matches, inl)
            choice = self._scale_choice
            # the scale's outliers do not extend the backend's tracks either: an aliased match would be a wrong
            # observation of the landmark it continues
            keep = ~measured.outliers if measured is not None else np.ones(idx1.size, bool)
            self._promote(kf, now, cov, (scale, direction, parallax_px, geom.R),
                          (matches.idx0[inl][keep], idx1[keep], n0[keep], n1[keep]),
                          choice.measured if choice is not None else None)
            T = kf.T_world_cam  # refined by the backend when it ran in this thread
        return self._estimate(frame, ref.features, feats, matches, geom, T, is_kf, cov, model)

    def _guard_motion(self, geom: TwoViewGeometry, kp0: np.ndarray, kp1: np.ndarray, camera: Camera,
                      configured: Camera | None, c01: tuple[np.ndarray, np.ndarray] | None, geo,
                      matches: Matches, m0: np.ndarray, m1: np.ndarray,
                      known: tuple[np.ndarray, np.ndarray] | None) -> TwoViewGeometry:
        """The pair's motion, checked against the reference's known depths where its rotation departs from the last
        pair's by more than ``pipeline.motion_guard_deg``, or its direction of travel by more than
        ``pipeline.motion_guard_direction_deg``: something that moves on its own across the view (a vehicle crossing)
        can hold the essential matrix's largest consensus, its sideways flow read as a turn (the scene fitted by a
        shifted translation, or no translation at all), or read as near points passed sideways, the rotation kept and
        the translation turned across the road. The pose on the points a window refined (PnP) hardly sees the
        crossing's points: a depth there needs a window's refinement, and they come and go too fast for most to get
        one, unless a pair takes them for the scene. Where the two disagree by more than the guard too, the essential
        matrix is estimated again on the matches that the known-depth pose explains at the pose's threshold, however
        few (a crossing that fills the view leaves the scene a tenth of them; a wider margin lets the crossing's
        matches near the epipolar lines hold a sideways model again), and taken where it agrees with that pose; where
        it does not, the known-depth pose itself, polished on those matches (:meth:`_polish_known`). ``known``: that pose when the caller has it already (after a gap), ``configured`` (and ``c01``, the
        matches' normalised coordinates through it) as for :func:`~kp2d_ros.geometry.estimate_relative_pose`."""
        pc = self.cfg.pipeline
        limit, direction = pc.motion_guard_deg, pc.motion_guard_direction_deg
        if limit <= 0 or self.last_motion is None:
            return geom

        def departs(R: np.ndarray, t: np.ndarray, R_ref: np.ndarray, t_ref: np.ndarray) -> bool:
            # a zero translation has no direction (NaN: not beyond the guard)
            return (rotation_angle_deg(R @ R_ref.T) >= limit
                    or (direction > 0 and travel_angle_deg(R, t, R_ref, t_ref) >= direction))

        if not departs(geom.R, geom.t, *self.last_motion):
            return geom
        known = known if known is not None else self._pose_on_known_depths(matches, m0, m1)
        if known is None or not departs(geom.R, geom.t, *known):
            return geom  # nothing to check against, or the structure agrees: the motion did change
        R_k, t_k = known
        if not np.linalg.norm(t_k) > 0:
            return geom
        thr = geo.ransac_threshold_px / focal_length(camera)
        keep = np.abs(sampson_errors(skew(t_k / np.linalg.norm(t_k)) @ R_k, m0, m1)) < thr
        if keep.sum() < max(5, geo.min_inliers):
            return geom
        sel = np.flatnonzero(keep)
        again = estimate_relative_pose(kp0[sel], kp1[sel], camera, geo, ordered=True, priors=[known],
                                       configured=configured, normalized=(m0[sel], m1[sel]),
                                       configured_normalized=None if c01 is None else (c01[0][sel], c01[1][sel]))
        if again is None or departs(again.R, again.t, R_k, t_k):
            return self._polish_known(geom, m0[sel], m1[sel], sel, len(m0), known, departs, thr, geo.min_inliers)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("motion guard: the pair %.2f deg / %.1f deg (rotation / travel) off the known depths' pose; %d "
                      "of %d matches kept", rotation_angle_deg(geom.R @ R_k.T),
                      travel_angle_deg(geom.R, geom.t, R_k, t_k), sel.size, len(m0))
        inliers = np.zeros(len(m0), bool)
        inliers[sel[again.inliers]] = True
        return replace(again, inliers=inliers, point_match_idx=sel[again.point_match_idx])

    def _polish_known(self, geom: TwoViewGeometry, n0: np.ndarray, n1: np.ndarray, sel: np.ndarray, n: int,
                      known: tuple[np.ndarray, np.ndarray], departs, thr: float, min_inliers: int) -> TwoViewGeometry:
        """Where the matches the known-depth pose explains hold the crossing's model again (its flow near the pose's
        epipolar lines), that pose itself, polished on them (Sampson, Cauchy) from where it is, with the matches within
        ``thr`` of it as inliers; ``geom`` where the polish leaves it or keeps fewer than ``min_inliers``."""
        R_k, t_k = known
        R, t = refine_pose(R_k, t_k / np.linalg.norm(t_k), n0, n1, thr)
        t = t / np.linalg.norm(t)
        ok = np.abs(sampson_errors(skew(t) @ R, n0, n1)) < thr
        if departs(R, t, R_k, t_k) or ok.sum() < max(5, min_inliers):
            return geom
        inliers = np.zeros(n, bool)
        inliers[sel[ok]] = True
        return TwoViewGeometry(R=R, t=t, inliers=inliers, points3d=np.zeros((0, 3)),
                               point_match_idx=np.zeros(0, np.int64))

    def _pose_on_structure(self, geom: TwoViewGeometry, n0: np.ndarray, n1: np.ndarray, matches: Matches,
                           measured: "_ScaleMeasurement", noise: float) -> tuple[TwoViewGeometry, float] | None:
        """(geom, scale) refined against the reference's refined points (``pipeline.structure_pose``): the pair's
        rotation, direction and length that fit both the epipolar geometry of all inliers and the reprojections
        of the points whose depth the backend's window refined with the reference in it. None (the two-view pose
        stands) when fewer than ``min_scale_points`` such points are matched (no window, or it has not landed yet) or
        the refinement leaves the pose's basin. A single pair's triangulated depths are not used: they carry the
        last pair's own pose error into this one, and on the synthetic street without the window that tripled the ATE
        (stop 41)."""
        pc = self.cfg.pipeline
        rho, sig, use = self._refined_depths(matches.idx0[geom.inliers])
        use &= ~measured.outliers
        if use.sum() < pc.min_scale_points:
            return None
        t0 = measured.scale * geom.t
        R, t = refine_pose_with_structure(geom.R, t0, n0, n1, bearings(n0[use]), rho[use], noise * sig[use],
                                          n1[use], noise)
        s = float(np.linalg.norm(t))
        if (s <= 0 or rotation_angle_deg(R.T @ geom.R) > 1.0
                or np.degrees(np.arccos(np.clip(t @ t0 / (s * measured.scale), -1, 1))) > 10.0
                or abs(np.log(s / measured.scale)) > 0.3):
            return None
        return replace(geom, R=R, t=t / s), s

    def _refined_depths(self, idx0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inverse depths, their standard deviations, usable) of the reference's keypoints ``idx0``: usable where a
        window refined the depth and it is triangulated by more than ``min_triangulation_deg`` standard deviations."""
        rho, sig = self.ref.inv_depth[idx0], self.ref.inv_depth_sigma[idx0]
        with np.errstate(invalid="ignore"):
            use = (self.ref.refined[idx0] & np.isfinite(rho)
                   & (rho > np.radians(self.cfg.pipeline.min_triangulation_deg) * sig))
        return rho, sig, use

    def _pose_on_known_depths(self, matches: Matches, n0: np.ndarray, n1: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray] | None:
        """(R, t) of this frame on the reference's points whose depth a window refined (PnP,
        :func:`~kp2d_ros.geometry.pose_from_known_depths`; the points :meth:`_pose_on_structure` uses): a hypothesis
        for the essential matrix that needs no motion model. Until a window that holds the reference lands (the node's
        land after their keyframe stopped being the reference), the landmarks that earlier windows refined, through
        the reference's pose (``Keyframe.window_depth``). None with fewer than ``min_scale_points`` of them matched.
        ``n0``, ``n1``: the matches' normalised coordinates."""
        pc = self.cfg.pipeline
        if self.ref.held:
            rho, _, use = self._refined_depths(matches.idx0)
        else:
            rho = self.ref.window_depth[matches.idx0]
            use = np.isfinite(rho)
        if use.sum() < pc.min_scale_points:
            return None
        return pose_from_known_depths(bearings(n0[use]), rho[use], n1[use],
                                      3.0 * self.cfg.geometry.ransac_threshold_px / self._focal, pc.min_scale_points)

    def _gate_direction(self, geom: TwoViewGeometry, n0: np.ndarray, n1: np.ndarray, camera: Camera
                        ) -> TwoViewGeometry:
        """``geom``, or the pose polished from the constant-velocity direction when ``geom``'s camera-centre
        direction is more than ``pipeline.direction_gate_deg`` away from it and the polished pose is within
        the gate and fits the inliers as well (``PipelineConfig.direction_gate_deg``). ``n0``, ``n1``: the inliers'
        normalised coordinates."""
        gate = self.cfg.pipeline.direction_gate_deg
        if gate <= 0 or self.motion is None:
            return geom
        prior = self.motion.direction  # unit centre displacement of the last pair, in its earlier camera's axes

        def angle(R, t):
            return angle_between_deg(-R.T @ t, prior)

        before = angle(geom.R, geom.t)
        if before <= gate:
            return geom
        thr = self.cfg.geometry.ransac_threshold_px / focal_length(camera)
        R, t = refine_pose(geom.R, -geom.R @ prior, n0, n1, thr)
        t = t / np.linalg.norm(t)
        cost = cauchy_cost(sampson_errors(skew(t) @ R, n0, n1), thr)
        cost0 = cauchy_cost(sampson_errors(skew(geom.t) @ geom.R, n0, n1), thr)
        after = angle(R, t)
        # Beyond 90 deg it is the sign of the direction, which the Sampson cost cannot see (t and -t fit alike):
        # only the points' depths can. A robot backing up lies ~180 deg from its last direction; its pose keeps its
        # own direction unless as many points stay in front of both cameras along the constant-velocity one (a
        # sub-pixel pair's depths are noise, and then the gate decides as before).
        front0 = front = 0
        if before > 90.0:
            front0, front = _points_in_front(n0, n1, geom.R, geom.t), _points_in_front(n0, n1, R, t)
        log.debug("direction gate: %.1f deg from the constant-velocity direction -> %.1f deg, rotation %.3f deg, "
                  "cost %.1f -> %.1f, in front %d -> %d (%d inliers)", before, after, rotation_angle_deg(R.T @ geom.R),
                  cost0, cost, front0, front, n0.shape[0])
        if after > gate or cost > cost0 + 0.1 * n0.shape[0] or front < front0 - 0.1 * n0.shape[0]:
            return geom
        return replace(geom, R=R, t=t)

    def _untranslated(self, frame: Frame, camera: Camera, feats: Features, matches: Matches,
                      geom: TwoViewGeometry | None, now: _Tick) -> PoseEstimate:
        """The views show no translation (``geom`` None: no image motion at all; else a pure rotation).

        At the prior speed the camera would have moved by ``expected``; when that motion would have
        shown at least twice ``static_parallax_px`` of parallax, the camera really did not translate:
        STATIC (rotation under the threshold too: the reference pose is held) or a pure rotation. When
        it would not have shown (slow motion), the constant-velocity guess is used and flagged. Once
        STATIC, the camera stays so until a translation is seen again (no flip-flop with the guess).
        """
        pc = self.cfg.pipeline
        f = focal_length(camera)
        expected = self._prior(now)
        m = self.motion
        if expected is not None and not self.still:
            predicted_px = m.parallax_px * self._pair_intervals(now)
            if predicted_px < 2.0 * pc.static_parallax_px:
                return self._constant_velocity(frame, camera, feats, matches, geom, now, expected)
        if geom is None or np.radians(rotation_angle_deg(geom.R)) * f < pc.static_parallax_px:
            return self._static(frame, camera, feats, matches, now)
        # before the first pair nothing tells a pure rotation from a slow translation: not standing
        return self._rotation_only(frame, camera, feats, matches, geom, None, None, now, standing=expected is not None)

    def _translation_resolution(self, camera: Camera) -> float:
        """Translation (trajectory units) that shows ``static_parallax_px`` of parallax, from the last pair
        (1 unit before the first pair: the unit is not defined yet)."""
        m = self.motion
        if m is None or m.parallax_px <= 0:
            return 1.0
        return self.cfg.pipeline.static_parallax_px * m.distance / m.parallax_px

    def _rejoin_turn(self, kf: Keyframe, camera: Camera) -> tuple[Keyframe, np.ndarray, np.ndarray, np.ndarray] | None:
        """The keypoints of the turn's first keyframe (:attr:`turn_anchor`: the reference when this turn on the spot
        began) found again in ``kf``, a keyframe of the same turn: (anchor, its indices, ``kf``'s indices, their
        backend coordinates), or None. Each anchor keypoint with a depth or a landmark is rotated into ``kf``'s view
        (one centre: no depth needed) and takes the nearest descriptor within ``pipeline.turn_search_px``
        (:func:`~kp2d_ros.matching.match_near`); those the rotation they fit best leaves beyond
        ``geometry.ransac_threshold_px`` are dropped. :meth:`_rotation_only` carries their depths over (a rotation about
        the centre keeps each point's distance) where the chain of pairs gave none; their landmarks are observed in
        :meth:`_map_keyframe`.

        The chain alone loses 30-45 % of the tracks per keyframe of a turn, so after a 60 degree turn of a 65 degree
        view the learned frontend kept 2 of the turn's first keyframe's ~1130 landmarks (SIFT 15), and the speed after
        the turn had nothing to be measured against (docs/results.md: Points through a turn)."""
        radius = self.cfg.pipeline.turn_search_px
        anchor = self.turn_anchor
        if radius <= 0 or anchor is None:
            return None
        known = np.flatnonzero(np.isfinite(anchor.inv_depth) | (anchor.landmarks >= 0))
        if known.size == 0:
            return None
        R = kf.T_world_cam[:3, :3].T @ anchor.T_world_cam[:3, :3]
        n0 = normalize_points(anchor.features.keypoints, camera)
        rays = bearings(n0[known]) @ R.T
        ahead = rays[:, 2] > 1e-3
        predicted = np.full((len(anchor.features), 2), np.nan)
        predicted[known[ahead]] = rays[ahead, :2] / rays[ahead, 2:]
        f = focal_length(camera)
        n1 = self._normalized_keypoints(kf.features, camera)
        found = match_near(anchor.features, kf.features, predicted, n1, radius / f, self.cfg.matching)
        if len(found) < self.cfg.pipeline.min_scale_points:
            return None
        # the nearest descriptor within the radius is another point for ~10 % of them (SIFT, 8 px): those beyond the
        # RANSAC threshold of the rotation the found points fit best are dropped
        R, _ = pure_rotation_fit(n0[found.idx0], n1[found.idx1], f, floor_px=self.cfg.geometry.ransac_threshold_px)
        fits = (rotation_compensated_parallax(n0[found.idx0], n1[found.idx1], R) * f
                <= self.cfg.geometry.ransac_threshold_px)
        if fits.sum() < self.cfg.pipeline.min_scale_points:
            return None
        found = found.subset(fits)
        rays1 = (self._normalized_keypoints(kf.features, self._raw_camera)[found.idx1] if self._observes_raw
                 else n1[found.idx1])
        return anchor, found.idx0, found.idx1, rays1

    @property
    def _observes_raw(self) -> bool:
        """The backend observes the raw camera's normalised coordinates: the front end undistorts with a self-calibrated
        k1, which the backend models itself."""
        return self.map is not None and self.k1 != 0.0

    def _rays(self, camera: Camera, feats: Features, matches: Matches, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised coordinates (reference, current) of the matches selected by ``mask``."""
        return (self._normalized_keypoints(self.ref.features, camera)[matches.idx0[mask]],
                self._normalized_keypoints(feats, camera)[matches.idx1[mask]])

    def _observed_rays(self, n0: np.ndarray, n1: np.ndarray, feats: Features, matches: Matches,
                       mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend's coordinates of the matches selected by ``mask``, whose undistorted rays are ``n0``, ``n1``:
        as observed (the raw camera) when :attr:`_observes_raw`, else those rays."""
        if self._observes_raw:
            return self._rays(self._raw_camera, feats, matches, mask)
        return n0, n1

    def _rotation_cov(self, camera: Camera, R: np.ndarray | None, n0=None, n1=None) -> np.ndarray:
        """(3, 3) covariance of the relative rotation (reference axes): from the inliers' rays, or the
        rotation that ``static_parallax_px`` would show when none was estimated (``R`` None)."""
        f = focal_length(camera)
        if R is None:
            return np.eye(3) * (self.cfg.pipeline.static_parallax_px / f) ** 2
        cw = rotation_covariance(R, n0, n1, self.cfg.pipeline.covariance_noise_floor_px / f)
        return R.T @ cw @ R

    def _still(self, feats: Features, matches: Matches) -> np.ndarray:
        """(M,) bool: matches that moved less than twice the noise (``ransac_threshold_px``, at least
        ``static_parallax_px``) between the reference and this frame."""
        disp = np.linalg.norm(feats.keypoints[matches.idx1] - self.ref.features.keypoints[matches.idx0], axis=1)
        return disp < 2.0 * max(self.cfg.geometry.ransac_threshold_px, self.cfg.pipeline.static_parallax_px)

    def _static(self, frame: Frame, camera: Camera, feats: Features, matches: Matches, now: _Tick) -> PoseEstimate:
        """The camera does not move: hold the reference pose, keep the reference keyframe; the moving time
        of the next pair starts here."""
        self.lost_frames = 0
        self.base = now
        self.still = True
        self.turning = False
        still = self._still(feats, matches)
        self._moved_together = self._move_together(camera, feats, matches, ~still)
        cov_rel = np.zeros((6, 6))
        cov_rel[:3, :3] = self._zero_translation_cov(camera, feats, matches, still)
        cov_rel[3:, 3:] = self._rotation_cov(camera, None)
        T = self.ref.T_world_cam.copy()
        cov = self._accumulate(T, cov_rel, moving=False)
        return self._result(frame, feats, matches, still, T, TrackingStatus.STATIC, False, cov, "static")

    def _move_together(self, camera: Camera, feats: Features, matches: Matches, moved: np.ndarray) -> bool:
        """Whether the matches that moved in a frame found standing agree on one motion of the view: an essential
        matrix holds at least half of them, and ``geometry.min_inliers``. So they do where the scene moves and
        something that stays in view holds most matches still (the robot's own body: the camera does not stand, and
        the search for still blocks goes on). Something that passes a robot that waits was not in the reference
        image: its matches are mismatches and agree on nothing (it stops the search)."""
        geo = self.cfg.geometry
        n = int(moved.sum())
        if n < max(5, geo.min_inliers):
            return False
        m0 = self._normalized_keypoints(self.ref.features, camera)[matches.idx0[moved]]
        m1 = self._normalized_keypoints(feats, camera)[matches.idx1[moved]]
        found = essential_inliers(m0, m1, focal_length(camera), geo, method="magsac")
        agree = 0 if found is None else int(np.count_nonzero(found[1]))
        return agree >= max(geo.min_inliers, 0.5 * n)

    def _zero_translation_cov(self, camera: Camera, feats: Features, matches: Matches, mask: np.ndarray,
                              R: np.ndarray | None = None) -> np.ndarray:
        """(3, 3) covariance (reference axes) of a translation seen to be zero by the matches in ``mask``.

        A camera-centre offset c moves a point of inverse depth rho seen along the ray b by the angle
        ``rho |b x c|``, so the points with known depth give the information ``sum rho^2 (I - b b^T) / s^2``
        (s: the angular noise of the residual displacements, after the rotation ``R``, floored at
        ``covariance_noise_floor_px``). Without known depths: the translation that ``static_parallax_px``
        would show (:meth:`_translation_resolution`).
        """
        pc = self.cfg.pipeline
        f = focal_length(camera)
        rho = self.ref.inv_depth[matches.idx0[mask]]
        known = np.isfinite(rho)
        if known.sum() < 3:
            return np.eye(3) * self._translation_resolution(camera) ** 2
        n0, n1 = self._rays(camera, feats, matches, mask)
        ang = rotation_compensated_parallax(n0, n1, np.eye(3) if R is None else R)
        noise2 = max(float(np.mean(ang ** 2)) / 2.0, (pc.covariance_noise_floor_px / f) ** 2)
        b = bearings(n0[known])
        P = np.eye(3)[None] - b[:, :, None] * b[:, None, :]
        info = np.einsum("n,nij->ij", rho[known] ** 2, P) / noise2
        return np.linalg.pinv(info)

    def _rotation_only(self, frame: Frame, camera: Camera, feats: Features, matches: Matches,
                       geom: TwoViewGeometry, n0, n1, now: _Tick, standing: bool) -> PoseEstimate:
        """Rotation from the two views, position held; beyond ``rotation_keyframe_deg`` the frame becomes
        the reference. ``standing``: the camera was seen not to translate (its moving time restarts)."""
        pc = self.cfg.pipeline
        ref = self.ref
        T = compose_relative(ref.T_world_cam, geom.R, np.zeros(3))
        if n0 is None:
            n0, n1 = self._rays(camera, feats, matches, geom.inliers)
        cov_rel = np.zeros((6, 6))
        cov_rel[:3, :3] = self._zero_translation_cov(camera, feats, matches, geom.inliers, geom.R)
        cov_rel[3:, 3:] = self._rotation_cov(camera, geom.R, n0, n1)
        cov = self._accumulate(T, cov_rel)
        if standing:
            self.base = now
            self.still = True
            self.turning = True
        is_kf = self._keyframe_allowed(rotation_angle_deg(geom.R) > pc.rotation_keyframe_deg)
        if is_kf:
            kf = Keyframe(features=feats, T_world_cam=T)
            inl = geom.inliers
            if self.turn_anchor is None:  # the turn's first keyframe: its reference is the anchor
                self.turn_anchor = ref
            _carry_depths(ref, kf, matches.idx0[inl], matches.idx1[inl])
            rejoined = self._rejoin_turn(kf, camera)
            if rejoined is not None:
                _carry_depths(rejoined[0], kf, rejoined[1], rejoined[2])
            t0, t1 = self._observed_rays(n0, n1, feats, matches, inl)
            self._promote(kf, now, cov, None, (matches.idx0[inl], matches.idx1[inl], t0, t1), turned=True,
                          rejoined=rejoined)
            T = kf.T_world_cam
        return self._estimate(frame, ref.features, feats, matches, geom, T, is_kf, cov, "rotation_only")

    def _constant_velocity(self, frame: Frame, camera: Camera, feats: Features, matches: Matches,
                           geom: TwoViewGeometry | None, now: _Tick, expected: tuple[float, float]) -> PoseEstimate:
        """Too slow to see the translation yet: rotation from the views (identity without image motion), the
        translation continues the last pair's direction at its speed (flagged ``constant_velocity``)."""
        self.lost_frames = 0
        if geom is None:
            T, cov = self._at_last_velocity(camera, expected, np.eye(3), self._rotation_cov(camera, None))
        else:
            rot_cov = self._rotation_cov(camera, geom.R, *self._rays(camera, feats, matches, geom.inliers))
            T, cov = self._at_last_velocity(camera, expected, geom.R, rot_cov)
        is_kf = self._keyframe_allowed(geom is not None
                                       and rotation_angle_deg(geom.R) > self.cfg.pipeline.rotation_keyframe_deg)
        ref = self.ref  # the matches index its features, also once this frame has become the reference
        mask = self._still(feats, matches) if geom is None else geom.inliers
        if is_kf:
            self._promote(Keyframe(features=feats, T_world_cam=T), now, cov, None)
        return self._result(frame, feats, matches, mask, T, TrackingStatus.TRACKING, is_kf, cov, "constant_velocity",
                            ref.features)

    def _at_last_velocity(self, camera: Camera, expected: tuple[float, float], R: np.ndarray,
                          rot_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pose that continues from the reference along the last pair's direction for ``expected``'s length
        (:meth:`_prior`), with the rotation ``R`` (reference axes -> this camera's) of (3, 3) covariance ``rot_cov``,
        and its covariance (world axes): the length is uncertain by the allowed change of speed."""
        length, change = expected
        centre = length * self.motion.direction  # camera centre in the reference's axes
        T = compose_relative(self.ref.T_world_cam, R, -R @ centre)
        cov_rel = np.zeros((6, 6))
        cov_rel[:3, :3] = np.eye(3) * (length * np.log(change) / 2.0 + self._translation_resolution(camera)) ** 2
        cov_rel[3:, 3:] = rot_cov
        return T, self._accumulate(T, cov_rel)

    def _unposed(self, frame: Frame, camera: Camera, feats: Features, matches: Matches, now: _Tick) -> PoseEstimate:
        """A frame the views cannot pose: too few matches, no geometry, or (blurred) fewer inliers than
        ``keyframe_min_inliers``. A blurred one (``pipeline.blur_ratio``) continues from the reference at the last
        pair's velocity, in translation and rotation (flagged ``constant_velocity``, no inliers): holding the last
        pose, as a lost frame does, would stop a moving camera for the length of the burst, and a blurred frame's
        few inliers give a poor rotation. Its rotation is uncertain by the last pair's rotation (at least 1 deg)
        per interval of that pair since the reference, in every axis. It counts as lost for the restart (which
        blurred frames never make). Any other frame is lost."""
        expected = self._prior(now) if self.blurred else None
        if expected is None:
            return self._lost(frame, feats, matches, now)
        self.lost_frames += 1
        m = self.motion
        pairs = expected[0] / m.distance if m.distance > 0 else 1.0  # the last pair's intervals since the reference
        R = _rotation_power(m.rotation, pairs)  # reference axes -> this camera's, at the last pair's rate
        rot_cov = np.eye(3) * (max(pairs, 1.0) * max(m.rotation_rad, np.radians(1.0))) ** 2
        T, cov = self._at_last_velocity(camera, expected, R, rot_cov)
        return self._result(frame, feats, matches, np.zeros(len(matches), bool), T, TrackingStatus.TRACKING, False,
                            cov, "constant_velocity")

    def _accumulate(self, T_world_cur: np.ndarray, cov_rel: np.ndarray, moving: bool = True) -> np.ndarray:
        """Covariance of ``T_world_cur`` (world axes): the reference's, plus ``cov_rel`` of the motion from
        the reference (reference axes). A motion (``moving``) also adds the model-error floors
        ``covariance_rotation_floor_deg`` and ``covariance_translation_floor`` (times its length): what the
        residuals do not show (rotation/translation ambiguity, scale bias)."""
        pc = self.cfg.pipeline
        T_ref_cur = invert_se3(self.ref.T_world_cam) @ T_world_cur
        if moving:
            cov_rel = cov_rel.copy()
            cov_rel[np.diag_indices(3)] += (pc.covariance_translation_floor * np.linalg.norm(T_ref_cur[:3, 3])) ** 2
            cov_rel[3:, 3:][np.diag_indices(3)] += np.radians(pc.covariance_rotation_floor_deg) ** 2
        cov = compose_covariance(self.ref.T_world_cam, self.ref_cov, T_ref_cur, cov_rel)
        self.last_cov = cov
        return cov

    def _fuse_depths(self, geom: TwoViewGeometry, n0: np.ndarray, idx0: np.ndarray, scale: float,
                     rho: np.ndarray, sigma: np.ndarray, angular_noise: float) -> tuple[np.ndarray, np.ndarray]:
        """Inverse depths for the new keyframe: this pair's, fused with the reference's carried over.

        A point tracked over several keyframes accumulates the parallax of all of them, so the
        next scale estimate rests on better depths (less scale drift).

        Parameters
        ----------
        n0 : (P, 2) normalised reference coordinates of the inliers; idx0 : their reference feature indices.
        scale : length of this pair's unit translation; rho, sigma : (P,) this pair's inverse depths
            (trajectory units) along the new view's rays.

        Returns
        -------
        rho, sigma : (P,) fused values.
        """
        if not self.cfg.pipeline.fuse_depths:
            return rho, sigma
        rho_ref, sig_ref = self.ref.inv_depth[idx0], self.ref.inv_depth_sigma[idx0]
        known = np.isfinite(rho_ref) & np.isfinite(sig_ref)
        if not np.any(known):
            return rho, sigma
        # Transfer (bearing, inverse depth) into the new view: X_new ~ R b + rho t_world.
        b = bearings(n0[known]) @ geom.R.T
        t_w = scale * geom.t
        d = b + rho_ref[known, None] * t_w[None, :]
        nd = np.linalg.norm(d, axis=1)
        rho_tr = rho_ref[known] / nd
        jac = 1.0 / nd - rho_ref[known] * (d @ t_w) / nd ** 3
        sig_tr = sig_ref[known] * np.abs(jac)
        r_new, s_new = rho[known], sigma[known]
        var_tr, var_new = sig_tr ** 2, s_new ** 2
        consistent = (r_new - rho_tr) ** 2 <= 9.0 * angular_noise ** 2 * (var_tr + var_new)
        fused = (rho_tr / var_tr + r_new / var_new) / (1.0 / var_tr + 1.0 / var_new)
        rho, sigma = rho.copy(), sigma.copy()
        k = np.flatnonzero(known)[consistent]
        rho[k] = fused[consistent]
        sigma[k] = np.sqrt(1.0 / (1.0 / var_tr[consistent] + 1.0 / var_new[consistent]))
        return rho, sigma

    def _promote(self, kf: Keyframe, now: _Tick, cov: np.ndarray,
                 motion: tuple[float, np.ndarray, float, np.ndarray] | None,
                 tracks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
                 metric_length: tuple[float, float] | None = None, turned: bool = False,
                 rejoined: tuple[Keyframe, np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Make ``kf`` (pose covariance ``cov``) the reference at ``now``. ``motion``: (translation length,
        unit centre displacement in the old reference's axes, parallax px, (3, 3) rotation) of the pair, which
        becomes the speed prior with the moving time since ``self.base``. ``tracks``: the pair's inliers
        (reference indices, ``kf`` indices, their normalised coordinates in both) that carry landmarks into
        ``kf``; then the backend optimises the window (here, or on its worker). ``metric_length``: the pair's metric length
        (metres, log sigma) from wheel odometry or the ground plane, a prior between the two keyframes in the window.
        ``turned``: the pair is a turn on the spot (no translation seen): the window keeps the two centres together;
        ``rejoined``: what ``kf`` saw again of the turn's first keyframe (:meth:`_rejoin_turn`)."""
        old_ref = self.ref
        old_id = old_ref.id if old_ref is not None else -1
        if not turned:
            self.turn_anchor = None
        if self.map is not None:  # the window's oldest are forgotten in _map_keyframe (threaded: after the pose)
            kf.id = self.map.add_keyframe(kf.T_world_cam, forget=False)
            if turned and old_id >= 0:
                self.map.add_same_centre(old_id, kf.id)
        if motion is not None:
            distance, direction, parallax_px, rotation = motion
            self.motion = _Motion(distance, _Span.between(self.base, now), direction / np.linalg.norm(direction),
                                  parallax_px, rotation, now, (old_id, kf.id))
        if kf.image is None:
            kf.image = self._grey
        if kf.camera is None:
            kf.camera = self._raw_camera
        if self.cfg.pipeline.blur_ratio > 0:
            self.sharpness = (self.sharpness + [self._sharpness_now])[-5:]
            if kf.local_sharpness is None:
                kf.local_sharpness = self._local_sharpness(kf.features.keypoints)
        self.ref = kf
        self.ref_cov = cov.copy()
        self.base = now
        self.gap = 0
        if self.map is not None:
            work = (old_ref, kf, tracks, metric_length, turned, rejoined)
            if self.worker is None:  # deterministic: the window is optimised now
                self._map_keyframe(*work)
            else:  # after the pose: finish()
                self._keyframe_work = work

    # ----------------------------------------------------------------------------------------
    # Backend: landmarks and the windowed bundle adjustment (kp2d_ros/backend.py)
    @property
    def backend_revision(self) -> int:
        """Bumped each time an optimised window is taken (0 without a backend)."""
        return self.map.revision if self.map is not None else 0

    def backend_status(self) -> BackendStatus | None:
        """Windows taken, how late the last one landed, its time and outcome; None without a backend."""
        if self.map is None:
            return None
        last = self.last_backend
        if last is None:
            outcome = "no window yet"
        else:
            outcome = self._backend_refused or ("ok" if last.optimised else last.reason)
        return BackendStatus(self.map.revision, self.backend_lag, float(last.time_ms) if last is not None else 0.0,
                             outcome)

    def keyframe_poses(self) -> dict[int, np.ndarray]:
        """Copies of the current (refined) ``T_world_cam`` of the backend's window keyframes."""
        if self.map is None:
            return {}
        return {k: T.copy() for k, T in self.map.poses.items()}

    def _map_keyframe(self, ref: Keyframe | None, kf: Keyframe, tracks,
                      metric_length: tuple[float, float] | None, turned: bool = False,
                      rejoined: tuple[Keyframe, np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """The new keyframe ``kf`` (already in the map) after ``ref``: inliers matched to a landmark of ``ref``
        observe it; the others in front of both cameras (this pair's depth) start a landmark seen by both
        keyframes, unless the pair ``turned`` on the spot (one centre: its depths are carried, not seen); the
        landmarks of a turn's first keyframe found again (``rejoined``) are observed where the chain did not reach
        them; the pair's metric length becomes a distance prior; then the window is optimised."""
        self.map.forget_old()  # what kf pushed out of the window (0.6 ms on KITTI 07: off the pose's path)
        self._add_landmarks(ref, kf, tracks, create=not turned)
        if rejoined is not None:
            self._observe_again(kf, *rejoined)
        self._window_depths(kf)
        if metric_length is not None and ref is not None and ref.id >= 0 and self.cfg.backend.metric_priors:
            self.map.add_distance(ref.id, kf.id, *metric_length)
        self._run_backend()

    def _add_landmarks(self, ref: Keyframe | None, kf: Keyframe, tracks, create: bool = True) -> None:
        if tracks is None or ref is None or ref.id < 0:
            return
        idx0, idx1, n0, n1 = tracks
        lids = ref.landmarks[idx0]
        known = np.flatnonzero(lids >= 0)
        self.map.observe(lids[known], kf.id, take_rows(n1, known))
        kf.landmarks[idx1[known]] = lids[known]
        if not create:
            return
        rho, sig = kf.inv_depth[idx1], kf.inv_depth_sigma[idx1]
        with np.errstate(invalid="ignore"):  # far points too (min_parallax_deg 0): they hold the rotations
            new = (lids < 0) & np.isfinite(rho) & (rho > 0)
            if self.cfg.backend.min_parallax_deg > 0:
                new &= rho >= np.radians(self.cfg.backend.min_parallax_deg) * sig
        if not new.any():
            return
        new = np.flatnonzero(new)
        n1_new = take_rows(n1, new)
        Xc = bearings(n1_new) / rho[new, None]
        Xw = Xc @ kf.T_world_cam[:3, :3].T + kf.T_world_cam[:3, 3]
        kf.landmarks[idx1[new]] = self.map.add_landmarks(Xw, {ref.id: take_rows(n0, new), kf.id: n1_new})

    def _observe_again(self, kf: Keyframe, anchor: Keyframe, idx_anchor: np.ndarray, idx_kf: np.ndarray,
                       rays: np.ndarray) -> None:
        """``kf``'s keypoints ``idx_kf`` (backend coordinates ``rays``) observe the landmarks of ``anchor``'s
        keypoints ``idx_anchor``, where the chain gave them none and ``kf`` does not observe that landmark yet."""
        lids = anchor.landmarks[idx_anchor]
        _, alive = self.map.rows(lids)
        keep = alive & (kf.landmarks[idx_kf] < 0) & ~np.isin(lids, kf.landmarks)
        if not keep.any():
            return
        self.map.observe(lids[keep], kf.id, rays[keep])
        kf.landmarks[idx_kf[keep]] = lids[keep]

    def _run_backend(self) -> None:
        """Optimise the window after a new keyframe: here, waiting for it (deterministic), or on the worker
        (threaded; the result is taken at a later frame). The worker gets a snapshot only when it is free and its
        last result has been taken (a snapshot taken before a result was applied would undo that result when it
        lands in turn). A keyframe that finds it busy gets no window of its own; the next keyframe's covers it,
        unless the running window lands 2 or more keyframes late (:meth:`finish`: the worker is the bottleneck).

        Not "as soon as the worker is free": that snapshot was taken right after the running window landed, with
        its newest keyframe just moved by that window's similarity guess (:meth:`LocalMap.apply`), and windows
        started from such guesses back to back fed a growing scale into the odometry. When each window landed one
        frame late (the node's worker when the CPU keeps up) KITTI 07's published odometry went from 0.061 to
        0.66 m (SIFT 0.074 to 0.74 m); at a new keyframe instead, 0.066 m (SIFT 0.069 m; docs/results.md, stop 31)."""
        if self.worker is not None and not self.worker.ready():
            self.backend_busy_skips += 1
            self._backend_due = True
            return
        self._backend_due = False
        t0 = time.perf_counter()
        snapshot = self.map.snapshot(self.cfg.backend.noise_px / self._focal, self.k1,
                                     self._self_calibrating(self._raw_camera))
        if isinstance(self.worker, BackendWorker) and snapshot.too_few_keyframes() is None:
            # the worker's process builds the problem (selecting and ordering the window's tracks, ~2 ms), off this
            # thread; a window it skips for its landmarks comes back as a result saying why
            self.worker.submit(snapshot, self._focal)
            self._backend_ms += (time.perf_counter() - t0) * 1e3
            return
        problem = snapshot.problem()
        if not isinstance(problem, WindowProblem):
            self.last_backend = problem
        elif self.worker is not None:
            self.worker.submit(problem, self._focal)
        else:
            result = bundle_adjust(problem, self.cfg.backend, self._focal)
            self._after_backend(result)
        self._backend_ms += (time.perf_counter() - t0) * 1e3

    def _after_backend(self, result: BAResult) -> None:
        """Take an optimised window: keyframe poses and landmarks into the map, the reference's refined pose
        and depths (the next frames' scale rests on them), and the speed prior's distance."""
        self.last_backend = result
        if self.map is None or not self.map.apply(result):
            if result.optimised:  # stale: its keyframes left the window, or an older snapshot
                self._backend_refused = "a late window was not taken (stale)"
            return
        self._backend_refused = ""
        self.backend_lag = self.map.next_keyframe_id - 1 - max(result.poses)
        if result.k1 is not None:
            bc = self.cfg.backend
            self.k1_estimates = (self.k1_estimates + [float(result.k1)])[-bc.k1_windows:]
            self.k1_sigmas = (self.k1_sigmas + [result.k1_sigma])[-bc.k1_windows:]
            if len(self.k1_estimates) >= min(3, bc.k1_windows):
                self.k1 = combine_k1(self.k1_estimates, self.k1_sigmas, bc.k1_average)
        ref = self.ref
        if ref is not None and ref.id in self.map.poses:
            # The next frames are posed against the reference's refined pose: in map they jump by its correction.
            # odom (REP 105) keeps the front end's chain: each frame continues the previous one by the front end's
            # motion between them, so the correction goes into T_world_odom. The same in both backend modes: the
            # threaded worker's window lands while the last frame is posed against the reference; the deterministic
            # one lands at the keyframe's own frame (the reference), whose odom stays its front-end pose.
            correction = self.map.poses[ref.id] @ invert_se3(ref.T_world_cam)
            self.T_world_odom = orthonormalize_se3(correction @ self.T_world_odom)
            # (threaded: the last frame was posed against the reference)
            self.last_pose = orthonormalize_se3(correction @ self.last_pose)
            ref.T_world_cam = self.map.poses[ref.id].copy()
            idx = np.flatnonzero(ref.landmarks >= 0)
            rows, alive = self.map.rows(ref.landmarks[idx])
            ref.landmarks[idx[~alive]] = -1  # culled
            ref.refined[:] = False  # set again below for the depths this window gives
            ref.window_sigma[:] = np.inf
            live = None
            if alive.any():
                idx = idx[alive]
                rho = _inverse_distances(ref.T_world_cam, take_rows(self.map.positions, rows[alive]))
                live = (idx, rows[alive], rho)
                ok = np.isfinite(rho)
                ref.inv_depth[idx[ok]] = rho[ok]
                sig = ref.inv_depth_sigma[idx[ok]]
                ref.inv_depth_sigma[idx[ok]] = np.where(np.isfinite(sig), sig, 1.0)
                # only a reference the window optimised: a follower's pose is the window's guess (moved by its newest
                # step), and depths through it carry that guess into the structure pose (KITTI 07 with every window 3
                # frames late: 0.069 -> 0.081 m when followers counted; stop 41)
                ref.refined[idx[ok]] = ref.id in result.poses
                if ref.id in result.poses:
                    ref.window_sigma[idx[ok]] = self.map.inverse_depth_sigma(ref.landmarks[idx[ok]], ref.id)
            self._window_depths(ref, live)
            ref.held |= ref.id in result.poses
        m = self.motion
        if m is not None and all(k in self.map.poses for k in m.keyframes):
            a, b = (self.map.poses[k][:3, 3] for k in m.keyframes)
            if np.linalg.norm(b - a) > 0:
                m.distance = float(np.linalg.norm(b - a))

    def _window_depths(self, kf: Keyframe,
                       live: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """``kf.window_depth``: the inverse distances of its landmarks that a window refined, through its pose now,
        else its ``checked`` depths. ``live``: (keypoint indices, map rows, inverse distances through its pose now)
        of its landmarks alive in the map, when the caller has them (:meth:`_after_backend`)."""
        kf.window_depth[:] = np.nan
        with np.errstate(invalid="ignore"):
            checked = kf.checked & (kf.inv_depth > 0)
        kf.window_depth[checked] = kf.inv_depth[checked]
        if live is None:
            idx = np.flatnonzero(kf.landmarks >= 0)
            rows, alive = self.map.rows(kf.landmarks[idx])
            if not alive.any():  # (no landmark left in the map: rows are meaningless)
                return
            idx, rows, rho = idx[alive], rows[alive], None
        else:
            idx, rows, rho = live
        refined = self.map.optimised[rows]
        if not refined.any():
            return
        idx = idx[refined]
        rho = (_inverse_distances(kf.T_world_cam, take_rows(self.map.positions, rows[refined])) if rho is None
               else rho[refined])
        with np.errstate(invalid="ignore"):
            ok = rho > 0  # in front of the camera
        kf.window_depth[idx[ok]] = rho[ok]

    def _scale(self, geom: TwoViewGeometry, rho: np.ndarray, sigma: np.ndarray, matches: Matches,
               angular_noise: float, expected: tuple[float, float] | None,
               prior_std: float = np.inf) -> "_ScaleMeasurement | None":
        """Trajectory length of this pair's unit translation, from the structure shared with the reference.

        ``rho``/``sigma``: inverse depths (unit baseline) of the inlier matches along the
        reference-view rays and their standard deviations per unit angular noise;
        ``angular_noise``: expected ray noise (radians), the scale of the robust loss;
        ``expected``: (length, allowed change factor) from the speed prior (:meth:`_prior`), which
        the estimate is clamped to; ``prior_std``: the standard deviation of its logarithm
        (:meth:`_prior_log_std`). The ratio method takes the votes of the points that the speed prior and
        most votes agree on (:func:`~kp2d_ros.geometry.vote_log_scale`), not a median of all.
        Returns None when the reference has too little known structure.
        """
        pc = self.cfg.pipeline
        idx0 = matches.idx0[geom.inliers]
        # a refined depth is judged by the window's baselines too, not only by the pairs' that made it: after a gap
        # (9 m of KITTI 07 dropped) 9 of the 192 refined points passed the pairs' triangulation test, and the pair
        # came out 14 % short (stop 52). The smaller of the two: the window holds only its own keyframes' views, and
        # after a turn on the spot those of a point's depth can be fewer than the pairs' that fused it (stop 53); the
        # structure pose keeps the pairs' sigma as its prior (the window's there: learned TUM 0.0072 -> 0.0130 m)
        rho_ref = self.ref.inv_depth[idx0]
        sig_ref = np.fmin(self.ref.inv_depth_sigma[idx0], self.ref.window_sigma[idx0])  # (window_sigma: inf unrefined)
        known = np.isfinite(rho_ref)
        if known.sum() < pc.min_scale_points:
            return None
        length, change = expected if expected is not None else (1.0, pc.max_scale_change)
        min_angle = np.radians(pc.min_triangulation_deg)
        good = known & (rho_ref > min_angle * sig_ref) & (rho > min_angle * sigma)
        outliers = np.zeros(idx0.size, bool)
        voters = good
        s = None
        if pc.scale_method == "inverse_depth":
            s = scale_from_inverse_depths(rho_ref[known], sig_ref[known], rho[known], sigma[known],
                                          init=length, noise=angular_noise)
        elif good.sum() >= pc.min_scale_points:  # ratios of points seen under a large enough angle in both pairs
            logs = np.log(rho[good] / rho_ref[good])
            stds = angular_noise * np.hypot(sig_ref[good] / rho_ref[good], sigma[good] / rho[good])
            vote = vote_log_scale(logs, stds, float(np.log(length)), prior_std)
            if vote.consistent.sum() >= pc.min_scale_points:
                s = float(np.exp(vote.log_scale))
                outliers[np.flatnonzero(good)[~vote.consistent]] = True
                voters = good & ~outliers
        log_sigma = np.log(change) / 2.0  # without enough well-conditioned points: as uncertain as the prior
        if voters.sum() >= pc.min_scale_points:
            logs = np.log(rho[voters] / rho_ref[voters])
            mad = float(np.median(np.abs(logs - np.median(logs))))
            log_sigma = 1.2533 * 1.4826 * mad / np.sqrt(voters.sum())  # std of a median
        if s is None:
            return None
        clamped = float(np.clip(s, length / change, length * change))
        if clamped != s:
            log_sigma = max(log_sigma, np.log(change) / 2.0)
        return _ScaleMeasurement(clamped, float(log_sigma), clamped != s, outliers)

    def _camera_changed(self, frame: Frame, feats: Features) -> PoseEstimate:
        """The frame's camera (image size, intrinsics, distortion) is not the reference's: its keypoints are pixels
        of another image, so it cannot be matched against the reference. Tracking restarts from this frame at
        the last pose, keeping the scale, as after ``max_lost_frames`` lost frames."""
        old, new = self.ref.camera, self._raw_camera
        log.warning("camera changed (%dx%d fx %.1f -> %dx%d fx %.1f): tracking restarts from the last pose",
                    old.width, old.height, old.K[0, 0], new.width, new.height, new.K[0, 0])
        self.last_motion = None
        self.sharpness = []  # another image size: another scale of sharpness
        empty = Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return self._lost(frame, feats, empty, self._tick(frame), restart=True)

    def _lost(self, frame: Frame, feats: Features, matches: Matches, now: _Tick, restart: bool = False
              ) -> PoseEstimate:
        """No valid pose: hold it; after ``max_lost_frames`` (at once with ``restart``) restart from this frame
        (when it has enough features), keeping the scale. The covariance grows by one unknown motion of the last
        pair's size (1 unit / the rotation floor before the first pair) per lost frame."""
        self.lost_frames += 1
        m = self.motion
        sig_t = m.distance if m is not None else 1.0
        sig_r = max(m.rotation_rad, np.radians(1.0)) if m is not None else np.radians(1.0)
        cov = self.last_cov.copy()
        cov[np.diag_indices(3)] += sig_t ** 2
        cov[3:, 3:][np.diag_indices(3)] += sig_r ** 2
        self.last_cov = cov
        is_kf = False
        if ((restart or self._keyframe_allowed(self.lost_frames >= self.cfg.pipeline.max_lost_frames))
                and len(feats) >= self.cfg.geometry.min_inliers):
            if restart:  # another camera: the old reference's pixels cannot be matched again
                self.before_loss = None
            elif self.before_loss is None and self.cfg.pipeline.rejoin_frames > 0:
                self.before_loss = _BeforeLoss(self.ref, self.ref_cov.copy(), self.motion, self.base,
                                               self.last_motion, now)
            self._promote(Keyframe(features=feats, T_world_cam=self.last_pose.copy()), now, cov, None)
            self.lost_frames = 0
            is_kf = True
        return PoseEstimate(stamp=frame.stamp, T_world_cam=self.last_pose.copy(), status=TrackingStatus.LOST,
                            num_features=len(feats), num_matches=len(matches), num_inliers=0, is_keyframe=is_kf,
                            features=feats, matched=np.zeros(len(feats), bool),
                            ref_keypoints=np.zeros((0, 2), np.float32), cur_keypoints=np.zeros((0, 2), np.float32),
                            quality=0.0, covariance=cov, motion_model="none")

    def _rejoin(self, feats: Features, camera: Camera) -> bool:
        """Take the tracker back to the reference a restart replaced (``self.before_loss``) when this frame sees it
        again: an essential matrix with ``keyframe_min_inliers`` inliers between the two.

        A view filled by something that moves on its own (a person walking past, a door, a vehicle alongside)
        loses the track, and after ``max_lost_frames`` the restart's keyframes follow the occluder: its motion
        became the robot's (1.3 m and 22 deg across 10 frames of the street). Rejoined, the restart's keyframes
        leave the window, the state before the loss comes back, and this frame is posed against the old reference
        across the gap as after dropped frames (the pose on its refined depths is a hypothesis). True when
        rejoined; the chance ends ``rejoin_frames`` frames after the restart."""
        lost, pc = self.before_loss, self.cfg.pipeline
        old = lost.ref
        if (self.frames_seen + 1 - lost.since.count > pc.rejoin_frames or not _same_camera(old.camera, self._raw_camera)
                or (self.map is not None and old.id >= 0 and old.id not in self.map.poses)):
            self.before_loss = None
            return False
        matches = match_features(old.features, feats, self.cfg.matching)
        if len(matches) < pc.keyframe_min_inliers:
            return False
        geom = estimate_relative_pose(old.features.keypoints[matches.idx0], feats.keypoints[matches.idx1], camera,
                                      self.cfg.geometry, ordered=True)
        if geom is None or int(geom.inliers.sum()) < pc.keyframe_min_inliers:
            return False
        log.info("rejoined the keyframe before the loss (%d inliers, %d frames after the restart)",
                 int(geom.inliers.sum()), self.frames_seen + 1 - lost.since.count)
        if self.map is not None and old.id >= 0:
            self.map.forget_after(old.id)
            old.T_world_cam = self.map.poses[old.id].copy()
        self.ref, self.ref_cov, self.motion, self.base, self.last_motion = (old, lost.ref_cov, lost.motion, lost.base,
                                                                            lost.last_motion)
        self.before_loss = self.turn_anchor = None
        self.still = self.turning = False
        self.lost_frames = 0
        return True

    def _estimate(self, frame: Frame, ref_features: Features, feats: Features, matches: Matches,
                  geom: TwoViewGeometry, T_world_cam: np.ndarray, is_keyframe: bool, covariance: np.ndarray,
                  motion_model: str) -> PoseEstimate:
        return self._result(frame, feats, matches, geom.inliers, T_world_cam, TrackingStatus.TRACKING, is_keyframe,
                            covariance, motion_model, ref_features)

    def _result(self, frame: Frame, feats: Features, matches: Matches, inl: np.ndarray, T_world_cam: np.ndarray,
                status: TrackingStatus, is_keyframe: bool, covariance: np.ndarray, motion_model: str,
                ref_features: Features | None = None) -> PoseEstimate:
        """The estimate of a tracked frame; ``inl``: (M,) the matches that support it."""
        ref_features = self.ref.features if ref_features is None else ref_features
        matched = np.zeros(len(feats), bool)
        matched[matches.idx1[inl]] = True
        n_inl = int(inl.sum())
        return PoseEstimate(stamp=frame.stamp, T_world_cam=T_world_cam.copy(), status=status,
                            num_features=len(feats), num_matches=len(matches), num_inliers=n_inl,
                            is_keyframe=is_keyframe, features=feats, matched=matched,
                            ref_keypoints=ref_features.keypoints[matches.idx0[inl]],
                            cur_keypoints=feats.keypoints[matches.idx1[inl]],
                            quality=self._quality(n_inl, len(matches)), covariance=covariance.copy(),
                            motion_model=motion_model)

    def _quality(self, n_inliers: int, n_matches: int) -> float:
        """Inlier ratio times a count term saturating at 10x the minimum inlier count."""
        if n_matches == 0:
            return 0.0
        ratio = n_inliers / n_matches
        count = min(1.0, n_inliers / (10.0 * self.cfg.geometry.min_inliers))
        return float(ratio * count)


def _inverse_distances(T_world_cam: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n,) signed inverse distances (the sign of the depth along the optical axis over the distance) of world points
    (n, 3) from the camera at ``T_world_cam``: ``Keyframe.inv_depth``'s convention; NaN at the camera centre."""
    T_cam_world = invert_se3(T_world_cam)
    xc = points @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    d = np.linalg.norm(xc, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, np.sign(xc[:, 2]) / d, np.nan)


def _carry_depths(src: Keyframe, dst: Keyframe, idx_src: np.ndarray, idx_dst: np.ndarray) -> None:
    """Inverse depths of ``src``'s keypoints ``idx_src`` to ``dst``'s ``idx_dst`` where ``dst`` has none: two
    keyframes of one centre (a turn on the spot), whose rotation keeps each point's distance."""
    unknown = ~np.isfinite(dst.inv_depth[idx_dst])
    dst.inv_depth[idx_dst[unknown]] = src.inv_depth[idx_src[unknown]]
    dst.inv_depth_sigma[idx_dst[unknown]] = src.inv_depth_sigma[idx_src[unknown]]


def _points_in_front(n0: np.ndarray, n1: np.ndarray, R: np.ndarray, t: np.ndarray) -> int:
    """How many correspondences (normalised coordinates) triangulate in front of both cameras of pose (R, t)."""
    rho0, rho1, _, _ = inverse_depths(n0, n1, R, t / np.linalg.norm(t))
    return int(np.sum((rho0 > 0) & (rho1 > 0)))


def _rotation_power(R: np.ndarray, k: float) -> np.ndarray:
    """``R`` to the real power ``k``: the same axis, ``k`` times the angle."""
    rvec, _ = cv2.Rodrigues(np.asarray(R, float))
    return cv2.Rodrigues(rvec * k)[0]


def _same_camera(a: Camera | None, b: Camera | None) -> bool:
    """Whether keypoints of ``a``'s images can be matched with ``b``'s: the same size, model, intrinsics and
    distortion (None: unknown, taken as the same)."""
    if a is None or b is None or a is b:
        return True
    return ((a.width, a.height, a.model) == (b.width, b.height, b.model)
            and np.allclose(a.K, b.K, rtol=1e-6, atol=1e-9)
            and a.dist.shape == b.dist.shape and np.allclose(a.dist, b.dist, rtol=1e-6, atol=1e-9))


def run_pipelined(pipeline: VOPipeline, frames) -> Iterator[PoseEstimate]:
    """:meth:`VOPipeline.process` over ``frames`` with detection one frame ahead on a worker thread.

    While frame i is matched and its pose estimated, frame i + 1 goes through the network, so on a
    multi-core CPU (or with the network on a GPU) the throughput approaches one frame per the
    slower of the two halves instead of their sum. Results are identical to calling ``process``
    in order. Each estimate's ``timings_ms["network"]`` is the detection time of that frame
    (measured on the worker); ``timings_ms["total"]`` is the tracking half only plus that.

    Yields
    ------
    PoseEstimate per frame, in order.
    """
    from concurrent.futures import ThreadPoolExecutor

    def detect(frame, stood):
        t0 = time.perf_counter()
        feats = pipeline.detect(frame, stood)
        return feats, (time.perf_counter() - t0) * 1e3

    it = iter(frames)
    with ThreadPoolExecutor(1, thread_name_prefix="vo_detect") as pool:
        frame = next(it, None)
        pending = pool.submit(detect, frame, None) if frame is not None else None
        while frame is not None:
            feats, net_ms = pending.result()
            nxt = next(it, None)
            # whether the frame before ``frame`` stood, as process() would tell detect() for ``nxt``
            pending = pool.submit(detect, nxt, pipeline._stood[-1]) if nxt is not None else None
            est = pipeline.process(frame, feats)
            est.timings_ms["network"] = net_ms
            est.timings_ms["total"] += net_ms
            yield est
            frame = nxt
