"""Speed benchmark of the whole VO pipeline (image -> pose), per stage and end to end.

Frames are read into memory first, so only :meth:`VOPipeline.process` is timed: resizing and the
network (``network``), descriptor matching (``matching``), IO-Net scoring and filtering
(``io_net``) and the essential matrix, pose and scale (``pose``). Figures are medians over the
frames after ``warmup`` frames (the first frame only initialises and is never counted).

``cpu_ms`` is the median CPU time of this process (all its threads, ``time.process_time``) per timed frame:
on a machine shared with other jobs the wall times stretch with the load, the CPU time much less, so it
is the figure to compare between runs made under different loads (for a one-thread configuration
1000 / ``cpu_ms`` approximates the FPS of an idle machine). Not counted: CPU time of child processes
(the threaded backend's optimiser).

The JSON written by ``kp2d bench`` (:meth:`BenchResult.report`)::

    {"fps": ..., "fps_mean": ..., "pipelined": bool, "latency_ms": ..., "cpu_ms": ...,
     "stages_ms": {"network", "matching", "io_net", "refine", "pose", "backend", "total"},
     "device": "cpu" | "cuda", "frontend": ..., "resolution": [w, h], "frames": ..., "warmup": ...,
     "sequence": ..., "model": ..., "io_net": ..., "precision": ..., "machine": {...}}
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np

from kp2d_ros.config import VOConfig
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.errors import DataError
from kp2d_ros.pipeline import STAGES as _PIPELINE_STAGES
from kp2d_ros.pipeline import VOPipeline, run_pipelined
from kp2d_ros.types import TrackingStatus

STAGES = (*_PIPELINE_STAGES, "total")


def machine_info() -> dict:
    """CPU model, core count, load average, library versions, torch threads and the GPU (if any)."""
    info = {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    import cv2

    info["opencv"] = cv2.__version__
    info["opencv_threads"] = cv2.getNumThreads()
    try:
        from threadpoolctl import threadpool_info

        info["blas_threads"] = {p["internal_api"] + ":" + p["prefix"]: p["num_threads"] for p in threadpool_info()}
    except ImportError:
        info["blas_threads"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def config_for_image_size(cfg: VOConfig, width: int, height: int) -> VOConfig:
    """A copy of ``cfg`` whose frontend works on images of ``width`` x ``height`` as ``kp2d replay`` would: at that
    size times ``frontend.scale`` (``frontend_common.resize_to_working``)."""
    import copy

    out = copy.deepcopy(cfg)
    scale = out.frontend.scale
    out.frontend.resolution = [max(8, int(round(width * scale))), max(8, int(round(height * scale)))]
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class BenchResult:
    """Per-frame stage times of a benchmark run.

    Attributes
    ----------
    stage_ms : {stage: (F,) milliseconds} for the F timed frames.
    device : where the network ran (``cpu``/``cuda``; ``cpu`` for ORB/SIFT).
    config : the effective configuration. sequence : its name.
    warmup : frames run before timing. machine : :func:`machine_info` at the end of the run.
    """

    stage_ms: dict[str, np.ndarray]
    device: str
    config: VOConfig
    sequence: str
    warmup: int
    tracked: int
    machine: dict = field(default_factory=dict)
    pipelined: bool = False
    interval_ms: np.ndarray | None = None  # wall time between consecutive results (pipelined throughput)
    cpu_ms: np.ndarray | None = None  # this process's CPU time (all threads) per timed frame
    precision: str = "fp32"  # the network's dtype as run: fp16 / bf16 / fp32

    @property
    def frames(self) -> int:
        return int(len(self.stage_ms["total"]))

    def report(self) -> dict:
        total = self.stage_ms["total"]
        fe, mc = self.config.frontend, self.config.matching
        learned = fe.type == "kp2d"
        period = self.interval_ms if self.pipelined and self.interval_ms is not None else total
        return {
            "fps": 1000.0 / float(np.median(period)),
            "fps_mean": 1000.0 * len(period) / float(np.sum(period)),
            "pipelined": self.pipelined,
            "latency_ms": float(np.median(total)),
            "cpu_ms": float(np.median(self.cpu_ms)) if self.cpu_ms is not None and len(self.cpu_ms) else None,
            "stages_ms": {k: float(np.median(v)) for k, v in self.stage_ms.items()},
            "stages_ms_p90": {k: float(np.percentile(v, 90)) for k, v in self.stage_ms.items()},
            "device": self.device,
            "frontend": fe.type,
            "resolution": list(fe.resolution),
            "num_features": fe.num_features,
            "precision": self.precision if learned else None,
            "model": fe.model_path if learned else None,
            "io_net": mc.io_net_path if mc.io_net else None,
            "frames": self.frames,
            "warmup": self.warmup,
            "tracked_frames": self.tracked,
            "sequence": self.sequence,
            "machine": self.machine,
        }


def bench(sequence: Sequence, cfg: VOConfig, frames: int = 50, warmup: int = 5, pipeline=None,
          pipelined: bool = False) -> BenchResult:
    """Time :meth:`VOPipeline.process` over the first ``warmup + frames`` frames of ``sequence``.

    Parameters
    ----------
    sequence : frames (read into memory before timing).
    cfg : validated configuration (frontend type, resolution, device, IO-Net...).
    frames : frames to time (after ``warmup``); fewer if the sequence is shorter.
    warmup : untimed frames first (network and allocator warm-up; the first frame only initialises).
    pipeline : a ready pipeline (built from ``cfg`` when None).
    pipelined : detect frame i + 1 on a worker thread while frame i is tracked
        (:func:`~kp2d_ros.pipeline.run_pipelined`); ``fps`` is then the throughput (median wall time
        between consecutive poses) and ``latency_ms`` the per-frame image -> pose time.

    Raises
    ------
    DataError
        fewer than ``warmup + 2`` frames, or bad counts.
    """
    if frames < 1 or warmup < 1:
        raise DataError(f"bench: frames and warmup must be >= 1, got {frames}, {warmup}")
    images = []
    for frame in sequence:
        images.append(frame)
        if len(images) >= warmup + frames:
            break
    if len(images) < warmup + 2:
        raise DataError(f"bench: sequence {sequence.name} has {len(images)} frames, need at least {warmup + 2}")
    pipe = pipeline if pipeline is not None else VOPipeline(cfg)
    try:
        return _timed_run(pipe, cfg, sequence, images, warmup, pipelined)
    finally:
        if pipeline is None:
            pipe.close()  # the backend's worker thread


def _timed_run(pipe, cfg: VOConfig, sequence: Sequence, images: list, warmup: int, pipelined: bool) -> "BenchResult":
    times = {k: [] for k in STAGES}
    tracked = 0
    estimates = run_pipelined(pipe, images) if pipelined else (pipe.process(f) for f in images)
    intervals, cpu = [], []
    t_last, c_last = time.perf_counter(), time.process_time()
    for i, est in enumerate(estimates):
        now, c_now = time.perf_counter(), time.process_time()
        interval, t_last = (now - t_last) * 1e3, now
        cpu_interval, c_last = (c_now - c_last) * 1e3, c_now
        if i < warmup:
            continue
        intervals.append(interval)
        cpu.append(cpu_interval)
        for k in STAGES:
            times[k].append(float(est.timings_ms.get(k, 0.0)))
        tracked += est.status in (TrackingStatus.TRACKING, TrackingStatus.STATIC)
    device = "cpu"
    fe_device = getattr(pipe.frontend, "device", None)
    if fe_device is not None:
        device = str(getattr(fe_device, "type", fe_device))
    result = BenchResult({k: np.asarray(v) for k, v in times.items()}, device, cfg, sequence.name, warmup, tracked,
                         machine_info(), pipelined, np.asarray(intervals), np.asarray(cpu))
    dtype = getattr(pipe.frontend, "dtype", None)  # what the network really ran in (bf16 only where native)
    result.precision = {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), "fp32")
    return result


def _load_average() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 min), rounded; None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


@dataclass
class RepeatedBench:
    """``repeat`` runs of :func:`bench` on the same frames and pipeline.

    Attributes
    ----------
    runs : one :class:`BenchResult` per run, in order.
    load_before, load_after : ``os.getloadavg()`` (1, 5, 15 min) before the first and after the last run
        (None where the platform has none).
    """

    runs: list[BenchResult]
    load_before: list[float] | None = None
    load_after: list[float] | None = None

    @property
    def fps_runs(self) -> list[float]:
        return [r.report()["fps"] for r in self.runs]

    def report(self) -> dict:
        """The single-run JSON (:meth:`BenchResult.report`, stage medians over the frames of all runs) with
        ``fps`` = median of the per-run FPS, plus ``repeat``, ``fps_runs``, ``runs`` (per-run ``fps``,
        ``fps_mean``, ``stages_ms``) and ``load_average_before``/``load_average_after``."""
        first = self.runs[0]
        pooled = BenchResult({k: np.concatenate([r.stage_ms[k] for r in self.runs]) for k in first.stage_ms},
                             first.device, first.config, first.sequence, first.warmup,
                             sum(r.tracked for r in self.runs), self.runs[-1].machine, first.pipelined,
                             None if first.interval_ms is None else
                             np.concatenate([r.interval_ms for r in self.runs]),
                             None if first.cpu_ms is None else np.concatenate([r.cpu_ms for r in self.runs]))
        pooled.precision = first.precision
        out = pooled.report()
        per_run = [r.report() for r in self.runs]
        out["fps"] = float(np.median([r["fps"] for r in per_run]))
        out["fps_mean"] = float(np.mean([r["fps_mean"] for r in per_run]))
        out["frames"] = first.frames  # per run
        out["tracked_frames"] = first.tracked
        out["repeat"] = len(self.runs)
        out["fps_runs"] = [r["fps"] for r in per_run]
        out["runs"] = [{k: r[k] for k in ("fps", "fps_mean", "latency_ms", "cpu_ms", "stages_ms", "tracked_frames")}
                       for r in per_run]
        out["load_average_before"] = self.load_before
        out["load_average_after"] = self.load_after
        return out


def bench_repeated(sequence: Sequence, cfg: VOConfig, repeat: int = 1, frames: int = 50, warmup: int = 5,
                   pipeline=None, pipelined: bool = False) -> RepeatedBench:
    """:func:`bench` ``repeat`` times on one pipeline (reset between runs, each run with its own warm-up),
    with the load average recorded before and after, so that a speed figure comes with its spread and the
    machine's load.

    Raises
    ------
    DataError
        ``repeat`` < 1, or as :func:`bench`.
    """
    return bench_interleaved({"": (sequence, cfg)}, repeat, frames, warmup,
                             pipelines=None if pipeline is None else {"": pipeline}, pipelined=pipelined)[""]


def bench_interleaved(setups: dict[str, tuple[Sequence, VOConfig]], repeat: int = 1, frames: int = 50,
                      warmup: int = 5, pipelines: dict | None = None,
                      pipelined: bool = False) -> dict[str, RepeatedBench]:
    """:func:`bench_repeated` for several configurations (``label -> (sequence, cfg)``) whose runs alternate:
    round 1 of each, in order, then round 2, ..., so that a load that drifts during the measurement weighs on all
    alike. ``pipelines`` (``label -> ready pipeline``) are used as they are; the others are built here and closed.
    One load average before the first and one after the last run, shared by every result.

    Raises
    ------
    DataError
        ``repeat`` < 1, or as :func:`bench`.
    """
    if repeat < 1:
        raise DataError(f"bench: repeat must be >= 1, got {repeat}")
    given = pipelines or {}
    pipes = {}
    runs: dict[str, list[BenchResult]] = {label: [] for label in setups}
    try:
        for label, (_, cfg) in setups.items():
            pipes[label] = given[label] if label in given else VOPipeline(cfg)
        load_before = _load_average()
        for _ in range(repeat):
            for label, (sequence, cfg) in setups.items():
                pipes[label].reset()
                # the same frames each round, read before timing
                runs[label].append(bench(sequence, cfg, frames, warmup, pipes[label], pipelined))
    finally:
        for label, pipe in pipes.items():
            if label not in given:
                pipe.close()  # the backend's worker
    load_after = _load_average()
    return {label: RepeatedBench(r, load_before, load_after) for label, r in runs.items()}
