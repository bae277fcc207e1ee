#!/usr/bin/env python3
"""LK refinement error on zoomed KITTI frames (known mapping): plain translation against the patch pre-warped by
the zoom (``refine_matches(..., warps=...)``, docs/results.md *Motion-predicted patch warps*).

    python scripts/refine_zoom.py [--data ../shared/data/vo/kitti07_f0000-0159] [--config config/vo.yaml]

Every 40th frame is magnified by 3 / 6 / 12 % about a point near the image centre; the default frontend's
keypoints in the original frame are mapped through it (the truth), seeded with 0.7 px Gaussian noise and refined
against the magnified frame. Prints the median and RMS distance to the truth of the refined matches.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from kp2d_ros.config import load_config
from kp2d_ros.frontend import build_frontend
from kp2d_ros.refine import refine_matches


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/vo/kitti07_f0000-0159")
    p.add_argument("--config", default="config/vo.yaml")
    args = p.parse_args()
    cfg = load_config(args.config)
    frontend = build_frontend(cfg.frontend)
    files = sorted(Path(args.data).glob("image_0/*.png"))[::40]
    if not files:
        print(f"no images under {args.data}/image_0", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    for s in (1.03, 1.06, 1.12):
        errors = {"plain": [], "warped": []}
        for f in files:
            im = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            h, w = im.shape
            c = np.array([w / 2, h / 2 - 20])
            A = np.array([[s, 0, c[0] * (1 - s)], [0, s, c[1] * (1 - s)]])
            im2 = cv2.warpAffine(im, A, (w, h), flags=cv2.INTER_LINEAR)
            kp = frontend.detect(im).keypoints
            truth = kp * s + c * (1 - s)
            ok = ((truth > 10) & (truth < np.array([w - 10, h - 10]))).all(axis=1)
            kp, truth = kp[ok], truth[ok]
            seeds = (truth + rng.normal(0, 0.7, truth.shape)).astype(np.float32)
            for name, warps in (("plain", None), ("warped", np.tile(np.eye(2) * s, (len(kp), 1, 1)))):
                r = refine_matches(im, im2, kp, seeds, cfg.refine, warps)
                errors[name].append(np.linalg.norm(r.keypoints - truth, axis=1)[r.refined])
        for name, e in errors.items():
            e = np.concatenate(e)
            rms = np.sqrt((e ** 2).mean())
            print(f"zoom {s:.2f} {name:<6} refined {len(e):>5}  median {np.median(e):.3f} px  rms {rms:.3f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
