#!/usr/bin/env python3
"""Whole-pipeline A/B of ``frontend.engine`` (issue 10): onnxruntime against torch, interleaved frame by frame.

    python scripts/engine_ab.py [SEQUENCE] [--frames 24] [--config config/vo.yaml] [--set KEY=VALUE ...]

Two pipelines of the same config (one per engine) process the same frames in turn, so that the load of a
shared machine hits both alike. Prints, per engine, the median over the frames after the third of this
process's CPU time per ``VOPipeline.process`` call (``time.process_time``: all threads) and of the network
stage's wall time. SEQUENCE defaults to the KITTI 07 clip under ../shared/data/vo.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sequence", nargs="?", default=str(REPO.parent / "shared/data/vo/kitti07_f0000-0159"))
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--config", default=str(REPO / "config" / "vo.yaml"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from kp2d_ros.config import load_config, parse_overrides
    from kp2d_ros.data import open_sequence
    from kp2d_ros.pipeline import VOPipeline

    overrides = parse_overrides(args.set)
    cfgs = {e: load_config(args.config, overrides={**overrides, "frontend.type": "kp2d", "frontend.engine": e})
            for e in ("onnxruntime", "torch")}
    frames = list(open_sequence(args.sequence, max_frames=args.frames, camera=cfgs["torch"].camera))
    pipes = {e: VOPipeline(c) for e, c in cfgs.items()}
    cpu = {e: [] for e in pipes}
    net = {e: [] for e in pipes}
    for f in frames:
        for e, pipe in pipes.items():
            c = time.process_time()
            est = pipe.process(f)
            cpu[e].append(1e3 * (time.process_time() - c))
            net[e].append(est.timings_ms.get("network", 0.0))
    for e, pipe in pipes.items():
        print(f"{e:>12} (ran: {pipe.frontend.engine}): CPU {np.median(cpu[e][3:]):.0f} ms/frame, "
              f"network wall {np.median(net[e][3:]):.0f} ms ({len(frames) - 3} frames)")
        pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
