#!/usr/bin/env python3
"""CPU time of KeyPointNet detection (``KP2DFrontend.detect``) per engine and working scale (issue 10).

    python scripts/network_cpu_time.py [IMAGE_DIR] [--scales 1.0,0.75,0.5] [--engines torch,onnxruntime]
                                       [--rounds 9] [--threads 1] [--out out/network_cpu_time.json]

Every (engine, scale) frontend is built once (shipped weights, fp32, ``--threads`` torch/onnxruntime threads,
OpenCV at one thread), then the frontends run in turn on the same frames, ``--rounds`` times, so that a change
in the machine's load hits all of them alike. Each detection is timed with ``time.thread_time`` (CPU time of
this thread: with one thread it is the whole cost, and it barely moves with the load of other processes, unlike
the wall time). Prints the median per frontend (first round left out) and writes JSON. IMAGE_DIR: grey/colour
frames (default: the KITTI 07 clip's ``image_0`` under ../shared/data/vo); ``--synthetic WxH`` uses a rendered
frame instead (no data needed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="?", default=str(REPO.parent / "shared/data/vo/kitti07_f0000-0159/image_0"))
    p.add_argument("--synthetic", default=None, metavar="WxH", help="a rendered synthetic frame instead of IMAGE_DIR")
    p.add_argument("--scales", default="1.0,0.75,0.5")
    p.add_argument("--engines", default="torch,onnxruntime")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-features", type=int, default=2000)
    p.add_argument("--model", default=str(REPO / "models" / "keypoint_net.pt"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch

    from kp2d_ros.config import FrontendConfig
    from kp2d_ros.networks.kp2d_frontend import KP2DFrontend

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    if args.synthetic:
        from kp2d_ros.data.synthetic import synthetic_sequence

        w, h = (int(v) for v in args.synthetic.lower().split("x"))
        frames = [np.asarray(f.image) for _, f in zip(range(3), synthetic_sequence(n_frames=3, width=w, height=h))]
    else:
        files = sorted(Path(args.images).glob("*.png"))[:3]
        if not files:
            print(f"error: no .png frames in {args.images}", file=sys.stderr)
            return 2
        frames = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    fronts = {}
    for engine in args.engines.split(","):
        for scale in (float(s) for s in args.scales.split(",")):
            fe = KP2DFrontend(FrontendConfig(type="kp2d", engine=engine, scale=scale, model_path=args.model,
                                             num_features=args.num_features, half_precision=False, device="cpu"))
            fronts[f"{fe.engine} x{scale}"] = fe
    times = {k: [] for k in fronts}
    for r in range(args.rounds):
        for k, fe in fronts.items():
            c = time.thread_time()
            fe.detect(frames[r % len(frames)])
            times[k].append(1e3 * (time.thread_time() - c))
    h, w = frames[0].shape[:2]
    report = {"image_size": [w, h], "threads": args.threads, "rounds": args.rounds,
              "cpu_ms_median": {k: float(np.median(v[1:])) for k, v in times.items()},
              "cpu_ms": times}
    try:
        import os

        report["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    for k, v in report["cpu_ms_median"].items():
        print(f"{k:>20}: {v:7.1f} ms CPU per detect ({w}x{h} input)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
