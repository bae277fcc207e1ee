"""Offline replay: run :class:`VOPipeline` over a :class:`Sequence` and score it against ground truth.

The report (:meth:`ReplayResult.report`) has exactly these keys:

``frames``          frames processed
``tracked_frames``  frames whose status is ``tracking`` or ``static`` (a valid pose update)
``path_length_m``   ground-truth path length over the evaluated frames (null without GT)
``ate_rmse_m``      ATE RMSE after Sim(3) alignment (monocular scale), metres (null without GT)
``rpe_rot_deg``     per-frame RPE rotation RMSE, degrees (null without GT)
``rpe_trans_m``     per-frame RPE translation RMSE after the Sim(3) scale, metres (null without GT)
``fps``             frames per second of ``VOPipeline.process`` alone (image reading excluded)
``frontend``        ``frontend.type`` of the configuration
``ate_se3_m``       ATE RMSE after an SE(3) alignment, no scale fitted, metres (null without GT)
``sim3_scale``      scale factor of the Sim(3) alignment; 1.0 means metric (null without GT)
``drift_pct``       KITTI-style translational drift over ``segment_m`` sub-trajectories, % (null without GT
                    or with a path too short)
``drift_deg_per_m`` the same for rotation, degrees per metre
``segment_m``       the sub-trajectory length: 100 where the path covers it, else the largest of 50/25/10 m that
                    gives at least 5 segments

The ground-truth keys come from :func:`kp2d_ros.eval.metrics.metrics_report`, which any evaluation of a
saved trajectory uses as well (definitions in :mod:`kp2d_ros.eval.metrics`).

:func:`evaluate_trajectory` builds the same result, and so the same report, for a trajectory that
was estimated elsewhere (``kp2d evaluate``: a node's saved trajectory); what only a replay knows
(``tracked_frames``, ``fps``; ``frontend`` without a config) is then None.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from kp2d_ros.config import VOConfig
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.eval.metrics import TrajectoryMetrics, evaluate, metrics_report
from kp2d_ros.types import TrackingStatus, Trajectory

REPORT_KEYS = ("frames", "tracked_frames", "path_length_m", "ate_rmse_m", "rpe_rot_deg", "rpe_trans_m", "fps",
               "frontend", "ate_se3_m", "sim3_scale", "drift_pct", "drift_deg_per_m", "segment_m", "camera_k1")


@dataclass
class ReplayResult:
    """Outcome of :func:`replay`.

    Attributes
    ----------
    sequence : name of the replayed sequence; frontend : ``frontend.type``.
    estimate : (N) the published odometry of every frame: ``PoseEstimate.T_odom_cam`` (REP 105's odom: continuous,
        without the backend's corrections; ``T_world_cam`` without a backend; first camera = origin).
    statuses : (N,) tracking status per frame (None: not known, a trajectory file).
    process_s : total wall time spent in ``VOPipeline.process`` (s) (None: not measured).
    metrics : ATE/RPE against the sequence's ground truth, None without (enough) ground truth.
    stage_ms : mean per-stage times (ms) over all frames.
    scale : where the translation lengths came from (:class:`ScaleLog.summary`; ``scale.json``), None
        when not replayed.
    camera_k1 : the residual radial distortion the backend's self-calibration ended with
        (``backend.self_calibration``), None without it.
    refined : (N) the trajectory as the node's ``path`` ends up with the backend: every frame re-expressed
        against its keyframe's last refined pose (:class:`RefinedPath`); None without a backend.
    refined_metrics : its ATE/RPE (None without ground truth or without a backend).
    in_map : (N) ``PoseEstimate.T_world_cam`` of every frame: its pose in ``map`` as the node's TF map -> base had it
        at that frame (:attr:`estimate` with the backend's corrections, which jump at the keyframes they land on);
        None without a backend (it is :attr:`estimate` then).
    in_map_metrics : its ATE/RPE (None without ground truth or without a backend).
    backend : how the backend's windows kept up (:meth:`BackendLog.summary`; ``backend.json``), None without a
        backend.
    """

    sequence: str
    frontend: str | None
    estimate: Trajectory
    statuses: list[TrackingStatus] | None
    process_s: float | None
    metrics: TrajectoryMetrics | None
    stage_ms: dict[str, float] = field(default_factory=dict)
    scale: dict | None = None
    camera_k1: float | None = None
    refined: Trajectory | None = None
    refined_metrics: TrajectoryMetrics | None = None
    in_map: Trajectory | None = None
    in_map_metrics: TrajectoryMetrics | None = None
    backend: dict | None = None

    @property
    def frames(self) -> int:
        return len(self.estimate)

    @property
    def tracked_frames(self) -> int | None:
        if self.statuses is None:
            return None
        return sum(s in (TrackingStatus.TRACKING, TrackingStatus.STATIC) for s in self.statuses)

    @property
    def fps(self) -> float | None:
        if self.process_s is None:
            return None
        return self.frames / self.process_s if self.process_s > 0 else 0.0

    def report(self) -> dict:
        """The JSON-ready summary with exactly :data:`REPORT_KEYS` (GT values None without GT)."""
        gt_keys = metrics_report(self.metrics)
        report = {"frames": self.frames, "tracked_frames": self.tracked_frames}
        report.update({k: gt_keys[k] for k in ("path_length_m", "ate_rmse_m", "rpe_rot_deg", "rpe_trans_m")})
        report.update({"fps": self.fps, "frontend": self.frontend})
        report.update({k: gt_keys[k] for k in ("ate_se3_m", "sim3_scale", "drift_pct", "drift_deg_per_m", "segment_m")})
        report["camera_k1"] = self.camera_k1
        return report

    def refined_report(self) -> dict | None:
        """ATE/RPE of :attr:`refined` (``path.json``): ``ate_rmse_m``, ``rpe_rot_deg``, ``rpe_trans_m`` (None
        without ground truth), or None without a backend."""
        return None if self.refined is None else _accuracy(self.refined_metrics)

    def in_map_report(self) -> dict | None:
        """ATE/RPE of :attr:`in_map` (``map.json``), the same keys as :meth:`refined_report`; None without a
        backend."""
        return None if self.in_map is None else _accuracy(self.in_map_metrics)


def _accuracy(metrics: TrajectoryMetrics | None) -> dict:
    """``ate_rmse_m``, ``rpe_rot_deg``, ``rpe_trans_m`` of ``metrics`` (None each without ground truth)."""
    gt_keys = metrics_report(metrics)
    return {k: gt_keys[k] for k in ("ate_rmse_m", "rpe_rot_deg", "rpe_trans_m")}


class RefinedPath:
    """The poses of a replay as the node's ``path`` (in map) ends up: each frame's map pose is published once, against
    the keyframe as it was then (``PoseEstimate.keyframe_id``, ``T_keyframe_cam``); the backend keeps refining that keyframe
    while it is in the window, and the path follows (``T_world_cam = T_world_keyframe @ T_keyframe_cam`` with the
    keyframe's last refined pose). Frames without a keyframe link keep their published pose."""

    def __init__(self):
        self.keyframes: dict[int, np.ndarray] = {}  # keyframe id -> its latest refined T_world_cam
        self.links: list[tuple[int, np.ndarray | None]] = []

    def add(self, est, keyframe_poses: dict[int, np.ndarray]) -> None:
        """One frame's estimate, and the backend's keyframe poses after it (:meth:`VOPipeline.keyframe_poses`)."""
        self.keyframes.update(keyframe_poses)
        link = None if est.T_keyframe_cam is None else np.array(est.T_keyframe_cam, float)
        self.links.append((int(est.keyframe_id), link))

    def rescale(self, k: float) -> None:
        """The trajectory's unit changed (metric scale acquired): what was stored so far, in the new unit."""
        for T in self.keyframes.values():
            T[:3, 3] *= k
        for _, link in self.links:
            if link is not None:
                link[:3, 3] *= k

    def poses(self, published: list[np.ndarray]) -> np.ndarray:
        """(N, 4, 4) refined ``T_world_cam`` of every frame (``published``: the poses as published)."""
        out = []
        for (kid, link), T in zip(self.links, published):
            out.append(self.keyframes[kid] @ link if link is not None and kid in self.keyframes else T)
        return np.asarray(out, np.float64).reshape(-1, 4, 4)


def replay(sequence: Sequence, cfg: VOConfig, *, progress: bool = True, pipeline=None,
           max_diff: float = 0.01, backend_lag: int = 0) -> ReplayResult:
    """Run the VO pipeline over every frame of ``sequence`` and evaluate it.

    Parameters
    ----------
    sequence : frames (+ optional ground truth at the frame stamps).
    cfg : validated VO configuration.
    progress : show a tqdm bar on stderr.
    pipeline : a ready :class:`kp2d_ros.pipeline.VOPipeline` (built from ``cfg`` when None).
    max_diff : stamp tolerance (s) for pairing estimates with ground truth.
    backend_lag : when the pipeline is built here with a backend, each window lands this many frames after its
        keyframe (:class:`kp2d_ros.backend.LaggedWorker`, the node's timing, reproducibly); 0: as ``cfg`` says.

    Raises
    ------
    DataError
        unreadable frames (from the reader).
    """
    from tqdm import tqdm

    from kp2d_ros.pipeline import VOPipeline

    own = pipeline is None
    if own:
        if backend_lag and cfg.backend.window > 0:
            from kp2d_ros.backend import LaggedWorker

            pipeline = VOPipeline(cfg, worker=LaggedWorker(cfg.backend, backend_lag))
        else:
            pipeline = VOPipeline(cfg)
    if hasattr(pipeline, "start_backend"):
        pipeline.start_backend()  # the threaded backend's process starts now, as the node's does at start-up
    stamps, poses, in_map, statuses = [], [], [], []
    refined = RefinedPath() if getattr(pipeline, "map", None) is not None else None
    scale_log = ScaleLog(cfg)
    backend_log = BackendLog(cfg) if refined is not None else None
    stage_sum: dict[str, float] = {}
    process_s = 0.0
    bar = tqdm(total=len(sequence), unit="frame", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for frame in sequence:
            t0 = time.perf_counter()
            est = pipeline.process(frame)
            process_s += time.perf_counter() - t0
            stamps.append(frame.stamp)
            rescale = float(getattr(est, "scale_rescaled", 1.0))
            if rescale != 1.0:  # the scale turned metric: the poses so far in the new unit
                for T in poses + in_map:
                    T[:3, 3] *= rescale
                if refined is not None:
                    refined.rescale(rescale)
            in_map.append(np.array(est.T_world_cam, dtype=np.float64))
            poses.append(est.odometry()[1].copy())
            if refined is not None:
                refined.add(est, pipeline.keyframe_poses())
            statuses.append(TrackingStatus(est.status))
            scale_log.add(len(poses) - 1, est)
            if backend_log is not None:
                backend_log.add(pipeline)
            for k, v in (est.timings_ms or {}).items():
                stage_sum[k] = stage_sum.get(k, 0.0) + float(v)
            bar.update(1)
            bar.set_postfix_str(f"{est.status.value} inl {est.num_inliers}", refresh=False)
    finally:
        bar.close()
        if own:
            pipeline.close()
    calibrated = bool(getattr(pipeline, "k1_estimates", None))
    estimate = Trajectory(stamps=np.asarray(stamps, dtype=np.float64),
                          poses=np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4))
    n = max(len(statuses), 1)
    result = evaluate_trajectory(estimate, sequence.ground_truth, sequence=sequence.name,
                                 frontend=cfg.frontend.type, statuses=statuses, process_s=process_s,
                                 max_diff=max_diff, stage_ms={k: v / n for k, v in stage_sum.items()})
    result.scale = scale_log.summary()
    result.backend = backend_log.summary() if backend_log is not None else None
    result.camera_k1 = float(pipeline.k1) if calibrated else None
    if refined is not None:
        result.refined = Trajectory(stamps=estimate.stamps.copy(), poses=refined.poses(in_map))
        result.refined_metrics = evaluate_trajectory(result.refined, sequence.ground_truth, sequence=sequence.name,
                                                     max_diff=max_diff).metrics
        result.in_map = Trajectory(stamps=estimate.stamps.copy(), poses=np.asarray(in_map, np.float64).reshape(-1, 4, 4))
        result.in_map_metrics = evaluate_trajectory(result.in_map, sequence.ground_truth, sequence=sequence.name,
                                                    max_diff=max_diff).metrics
    return result


class ScaleLog:
    """Counts of each frame's scale source (``PoseEstimate.scale_source``) and of the reasons a metric
    source was not used (``scale_notes``, numbers blanked), for ``scale.json``."""

    def __init__(self, cfg: VOConfig):
        self.camera_height_m = cfg.geometry.camera_height_m
        self.sources: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.metric_from: int | None = None
        self.rescale = 1.0

    def add(self, index: int, est) -> None:
        src = getattr(est, "scale_source", "none")
        self.sources[src] = self.sources.get(src, 0) + 1
        if getattr(est, "scale_metric", False) and self.metric_from is None:
            self.metric_from = index
            self.rescale = float(getattr(est, "scale_rescaled", 1.0))
        for note in filter(None, (getattr(est, "scale_notes", "") or "").split("; ")):
            key = re.sub(r"-?\d+(\.\d+)?", "N", note)
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def summary(self) -> dict:
        """``{camera_height_m, metric, metric_from_frame, rescale, sources, not_used, verdict}``."""
        plane = sum(v for k, v in self.sources.items() if "ground_plane" in k)
        if self.camera_height_m <= 0:
            verdict = "ground plane off (geometry.camera_height_m = 0)"
        elif plane == 0:
            verdict = "ground plane rejected at every pair: propagated scale kept (not metric)"
        else:
            verdict = (f"ground plane used at {plane} frames; metric from frame {self.metric_from}"
                       if self.metric_from is not None else f"ground plane used at {plane} frames")
        return {"camera_height_m": self.camera_height_m, "metric": self.metric_from is not None,
                "metric_from_frame": self.metric_from, "rescale": self.rescale,
                "sources": dict(sorted(self.sources.items())),
                "not_used": dict(sorted(self.reasons.items(), key=lambda kv: -kv[1])), "verdict": verdict}


class BackendLog:
    """How the backend's windows kept up with the keyframes, for ``backend.json``: windows taken, how many
    keyframes late each landed (0: at its own keyframe, the deterministic replay; the node's worker on a busy CPU
    lands later, and late windows cost accuracy: docs/results.md, *Local bundle adjustment → Threads*), their optimisation
    time, and why the others were not taken. Read from the pipeline after every frame."""

    def __init__(self, cfg: VOConfig):
        self.mode = "deterministic"  # each window waited for; "threaded" (the node's worker), "lagged N" (--backend-lag)
        self.window = cfg.backend.window
        self.lags: list[int] = []
        self.times_ms: list[float] = []
        self.not_taken: dict[str, int] = {}
        self.busy_skips = 0  # keyframes whose window found the worker busy (the next keyframe's covers them)
        self.keyframes = 0
        self._map = None
        self._revision = 0
        self._last = None

    def add(self, pipeline) -> None:
        m = pipeline.map
        if m is None:
            return
        worker = getattr(pipeline, "worker", None)
        if worker is not None:
            self.mode = f"lagged {worker.lag}" if hasattr(worker, "lag") else "threaded"
        if m is not self._map:  # the first frame, or a reset: a new map (its keyframe ids continue the old one's)
            self._map, self._revision, self._last = m, 0, None
        self.keyframes = int(m.next_keyframe_id)
        self.busy_skips = int(getattr(pipeline, "backend_busy_skips", 0))
        last = pipeline.last_backend
        if last is None or last is self._last:
            return
        self._last = last
        if m.revision != self._revision:
            self._revision = m.revision
            self.lags.append(int(pipeline.backend_lag))
            self.times_ms.append(float(last.time_ms))
        else:
            reason = pipeline.backend_status().last  # a map exists, so a status does
            key = re.sub(r"[-+]?\d+(\.\d+)?", "N", reason or "not optimised")
            self.not_taken[key] = self.not_taken.get(key, 0) + 1

    def summary(self) -> dict:
        """``{mode, window, keyframes, windows_taken, lag_keyframes: {median, p90, max, counts}, time_ms: {median,
        p90, max}, skipped_busy, not_taken}``."""
        def stats(values, digits):
            if not values:
                return {"median": None, "p90": None, "max": None}
            a = np.asarray(values, np.float64)
            return {"median": round(float(np.median(a)), digits), "p90": round(float(np.percentile(a, 90)), digits),
                    "max": round(float(a.max()), digits)}

        lag = stats(self.lags, 1)
        lag["counts"] = {str(k): int(v) for k, v in zip(*np.unique(np.asarray(self.lags, int), return_counts=True))}
        return {"mode": self.mode, "window": self.window, "keyframes": self.keyframes,
                "windows_taken": len(self.lags), "lag_keyframes": lag, "time_ms": stats(self.times_ms, 1),
                "skipped_busy": self.busy_skips, "not_taken": dict(sorted(self.not_taken.items(), key=lambda kv: -kv[1]))}


def evaluate_trajectory(estimate: Trajectory, ground_truth: Trajectory | None, *, sequence: str,
                        frontend: str | None = None, statuses: list[TrackingStatus] | None = None,
                        process_s: float | None = None, max_diff: float = 0.01,
                        stage_ms: dict[str, float] | None = None) -> ReplayResult:
    """Score ``estimate`` against ``ground_truth`` (Sim(3) ATE and RPE) as :func:`replay` does.

    Metrics are None without ground truth or with fewer than 3 estimated poses that have ground
    truth within ``max_diff`` seconds.
    """
    metrics = None
    gt = ground_truth
    if gt is not None and len(gt) >= 3 and len(estimate) >= 3:
        try:
            metrics = evaluate(estimate, gt, max_diff=max_diff, correct_scale=True)
        except ValueError:  # too few frames with ground truth
            metrics = None
    return ReplayResult(sequence=sequence, frontend=frontend, estimate=estimate, statuses=statuses,
                        process_s=process_s, metrics=metrics, stage_ms=dict(stage_ms or {}))
