"""What the backend's optimisation on the other core costs the front end, without DDS or the node: the front end's
time per frame alone, and while a process optimises windows without pause at the worker's priority (issue 13: the
node's latency with the backend on).

    python scripts/backend_contention.py ../shared/data/vo/kitti07_f0000-0159 [--config config/vo.yaml] [--set KEY=VALUE ...]
        [--frames 30] [--rounds 4] [--out out/backend_contention.json]

First records the windows of a deterministic replay of the first frames (the default config's backend). Then, in
interleaved rounds, replays the same frames with ``backend.window=0`` (front end only, in this process): alone, and
while a spawned process started exactly as the node's worker (``backend.worker_nice``, ``backend.worker_idle``)
optimises the recorded windows in a loop, as the node's worker does on a busy CPU (always a window due). Prints and
saves the per-frame wall and CPU medians of each kind of round and their ratio. The front end's frames are the
same in both kinds, so the difference is the other core's work: shared caches, memory bandwidth, and whatever the
hypervisor shares between the two vCPUs.

Then the other part of what the node pays, in its own thread: the pipeline in the node's mode (``backend.threaded``,
the worker process optimising), with the window and with ``backend.window=0``, in interleaved rounds; the mean
``pose`` + ``backend`` stages per frame of each (the map's bookkeeping of every keyframe, the window's snapshot, and
taking a result: ``in_thread_ms``, their difference), and the part of it before the pose goes out
(``before_pose_ms``: the rest is done in ``VOPipeline.finish()``, which the node calls after publishing).
``--threaded-only`` runs only this second part.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np


def _interleaved(rounds: int, a: str, b: str):
    """(round, kind) for ``rounds`` rounds of the two kinds, alternating which goes first."""
    for r in range(rounds):
        for kind in ((a, b) if r % 2 == 0 else (b, a)):
            yield r, kind


def _front_end_round(cfg, frames) -> tuple[float, float]:
    from kp2d_ros.pipeline import VOPipeline

    vo = VOPipeline(cfg)
    wall, cpu = [], []
    for i, f in enumerate(frames):
        t, c = time.perf_counter(), time.process_time()
        vo.process(f)
        if i >= 3:  # warm-up
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    vo.close()
    return float(np.median(wall)) * 1e3, float(np.median(cpu)) * 1e3


def _threaded_round(cfg, frames) -> dict[str, float]:
    """The pipeline as the node runs it (``backend.threaded``: windows on the worker process; ``finish()`` after each
    frame's pose, where the node calls it after publishing, when the pipeline has it): the mean of each stage of
    ``PoseEstimate.timings_ms`` per frame after warm-up, ``after_pose`` (the time in ``finish()``, counted in the next
    frame's ``backend`` stage), ``before_pose`` (``pose`` + ``backend`` without it: the node's thread before the
    odometry goes out), and the windows taken."""
    from kp2d_ros.pipeline import VOPipeline

    vo = VOPipeline(cfg)
    vo.start_backend()
    time.sleep(2.0 if cfg.backend.window > 0 else 0.0)  # the worker's imports, as the node's start-up
    finish = getattr(vo, "finish", lambda: None)  # earlier code: none, all of it before the pose
    stages: dict[str, list[float]] = {}
    after = 0.0
    for i, f in enumerate(frames):
        est = vo.process(f)
        if i >= 3:
            for k, v in est.timings_ms.items():
                stages.setdefault(k, []).append(v)
            stages.setdefault("before_pose", []).append(est.timings_ms["pose"] + est.timings_ms["backend"] - after)
        t = time.perf_counter()
        finish()
        after = (time.perf_counter() - t) * 1e3
        if i >= 3:
            stages.setdefault("after_pose", []).append(after)
    windows = vo.backend_revision
    vo.close()
    return {**{k: float(np.mean(v)) for k, v in stages.items()}, "windows": windows}


def main(argv: list[str] | None = None) -> int:
    import copy

    import kp2d_ros.pipeline as pipeline_module
    from kp2d_ros.config import load_config, parse_overrides
    from kp2d_ros.data import open_sequence
    from kp2d_ros.pipeline import VOPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="dataset folder or bag")
    p.add_argument("--config", default="config/vo.yaml")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default=None)
    p.add_argument("--threaded-only", action="store_true",
                   help="only the second part: the front end's own thread in the node's mode")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, as kp2d replay's")
    args = p.parse_args(argv)

    cfg = load_config(args.config, overrides=parse_overrides(args.set))
    frames = list(open_sequence(args.path, max_frames=args.frames))

    problems = []  # the windows of a deterministic replay: what the node's worker would optimise
    record = copy.deepcopy(cfg)
    record.backend.threaded = False
    original = pipeline_module.bundle_adjust

    def recording(problem, bcfg, focal=1.0):
        problems.append((problem, focal))
        return original(problem, bcfg, focal)

    pipeline_module.bundle_adjust = recording
    try:
        vo = VOPipeline(record)
        for f in frames:
            vo.process(f)
        vo.close()
    finally:
        pipeline_module.bundle_adjust = original
    if not problems:
        print("error: no backend window in these frames (backend.window 0?)", file=sys.stderr)
        return 2

    front = copy.deepcopy(cfg)
    front.backend.window = 0
    ctx = multiprocessing.get_context("spawn")
    rows = {"alone": [], "with_backend": []}
    for r, kind in _interleaved(0 if args.threaded_only else args.rounds, "alone", "with_backend"):
        stop, proc = ctx.Event(), None
        if kind == "with_backend":
            proc = ctx.Process(target=_child, args=(problems[-8:], cfg.backend, stop,
                                                    cfg.backend.worker_nice, cfg.backend.worker_idle))
            proc.start()
            time.sleep(2.0)  # imports done, optimising
        try:
            rows[kind].append(_front_end_round(front, frames))
        finally:
            if proc is not None:
                stop.set()
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        print(f"round {r} {kind}: wall {rows[kind][-1][0]:.1f} ms, cpu {rows[kind][-1][1]:.1f} ms per frame",
              flush=True)
    # the front end's own share: the map's bookkeeping and the window's snapshot / result, in the node's thread
    threaded = {"window_on": [], "window_0": []}
    for r, kind in _interleaved(args.rounds, "window_on", "window_0"):
        c = copy.deepcopy(cfg)
        c.backend.threaded = True
        if kind == "window_0":
            c.backend.window = 0
        threaded[kind].append(_threaded_round(c, frames))
        t = threaded[kind][-1]
        print(f"round {r} threaded {kind}: total {t['total']:.1f} ms, pose {t['pose']:.2f} ms, backend "
              f"{t['backend']:.2f} ms per frame ({t['before_pose']:.2f} ms of pose + backend before the pose, "
              f"{t['after_pose']:.2f} after), {t['windows']} windows", flush=True)
    summary = {}
    if not args.threaded_only:
        summary = {k: {"wall_ms_median": float(np.median([w for w, _ in v])),
                       "cpu_ms_median": float(np.median([c for _, c in v])),
                       "rounds": [{"wall_ms": w, "cpu_ms": c} for w, c in v]} for k, v in rows.items()}
        summary["wall_ratio"] = summary["with_backend"]["wall_ms_median"] / summary["alone"]["wall_ms_median"]
        summary["cpu_ratio"] = summary["with_backend"]["cpu_ms_median"] / summary["alone"]["cpu_ms_median"]
    summary["threaded"] = {k: {s: float(np.median([t[s] for t in v])) for s in v[0]} | {"rounds": v}
                           for k, v in threaded.items()}
    on, off = summary["threaded"]["window_on"], summary["threaded"]["window_0"]
    summary["in_thread_ms"] = (on["pose"] + on["backend"]) - (off["pose"] + off["backend"])
    summary["before_pose_ms"] = on["before_pose"] - off["before_pose"]  # what the node's odometry waits for
    summary["windows"] = len(problems)
    summary["config"] = args.config
    summary["frames"] = len(frames)
    if not args.threaded_only:
        print(f"front end per frame: alone {summary['alone']['wall_ms_median']:.1f} ms, with the backend's process "
              f"{summary['with_backend']['wall_ms_median']:.1f} ms (x{summary['wall_ratio']:.3f}); "
              f"CPU x{summary['cpu_ratio']:.3f}")
    print(f"in the front end's thread (threaded, the node's mode): pose + backend stages "
          f"{on['pose'] + on['backend']:.2f} ms per frame with the window, {off['pose'] + off['backend']:.2f} ms "
          f"without ({summary['in_thread_ms']:+.2f} ms); before the pose goes out {summary['before_pose_ms']:+.2f} ms")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


def _child(problems, bcfg, stop, nice: int, idle: bool) -> None:
    """The spawned process: the worker's priority (its own initializer), then the windows in a loop until ``stop``."""
    from kp2d_ros.backend import _lower_priority, bundle_adjust

    _lower_priority(nice, idle)
    while not stop.is_set():
        for problem, focal in problems:
            bundle_adjust(problem, bcfg, focal)
            if stop.is_set():
                return


if __name__ == "__main__":
    raise SystemExit(main())
