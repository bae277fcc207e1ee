"""``kp2d train-io``: train IO-Net for two-view epipolar geometry (VO with parallax).

Synthesises piecewise-planar parallax pairs from the training images, matches them with the
frozen KeyPointNet (mutual nearest neighbours, as at inference), labels each match by its Sampson
distance to the true fundamental matrix and fits IO-Net on those sets (see
:mod:`kp2d_ros.training.epipolar`). The network pass is cached in ``--cache`` so that retraining
IO-Net takes seconds per epoch.

Example (the shipped models/io_net_epipolar.pt)::

    kp2d train-io --data ../shared/data/train_images --model models/keypoint_net.pt \\
        --init models/io_net.pt --out models/io_net_epipolar.pt --cache runs/io_epipolar/matches.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="train IO-Net on synthetic parallax (epipolar) pairs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--model", default="models/keypoint_net.pt", help="frozen KeyPointNet weights")
    p.add_argument("--frontend", choices=("kp2d", "sift"), default="kp2d", help="features to match (default kp2d)")
    p.add_argument("--init", default=None, help="start from these IO-Net weights (e.g. models/io_net.pt)")
    p.add_argument("--out", default="models/io_net_epipolar.pt", help="output IO-Net weights")
    p.add_argument("--cache", default=None, help="match-set cache file (built when missing)")
    p.add_argument("--pairs", type=int, default=400, help="synthetic training pairs (default 400)")
    p.add_argument("--val-pairs", type=int, default=40, help="held-out validation pairs (default 40)")
    p.add_argument("--steps", type=int, default=3000, help="IO-Net optimiser steps (default 3000)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resolution", default="640x192", help="pair size WIDTHxHEIGHT (default 640x192)")
    p.add_argument("--num-features", type=int, default=1000, help="KeyPointNet top-k per view (default 1000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="KeyPointNet device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    return p


def run(args) -> int:
    import torch

    from kp2d_ros.cli.eval_homography import parse_resolution
    from kp2d_ros.networks.io_net import IONet
    from kp2d_ros.networks.weights import save_network
    from kp2d_ros.training.dataset import list_images
    from kp2d_ros.training.epipolar import (EpipolarPairConfig, build_match_sets, evaluate_io_net, load_match_sets,
                                            save_match_sets, train_io_net)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    w, h = parse_resolution(args.resolution)
    cfg = EpipolarPairConfig(width=w, height=h, num_features=args.num_features)
    images = list_images(args.data)
    n_total = args.pairs + args.val_pairs
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        sets = load_match_sets(cache)
        print(f"loaded {len(sets)} match sets from {cache}", file=sys.stderr)
    else:
        def progress(i, n):
            if i % 20 == 0 or i == n:
                print(f"  pairs {i}/{n}", file=sys.stderr, flush=True)

        sets = build_match_sets(images, args.model, n_total, cfg, seed=args.seed, device=args.device,
                                progress=progress, frontend_type=args.frontend)
        if cache is not None:
            save_match_sets(sets, cache)
            print(f"cached {len(sets)} match sets in {cache}", file=sys.stderr)
    n_val = min(args.val_pairs, len(sets) // 5)
    val, train = sets[:n_val], sets[n_val:]
    init = IONet.from_file(args.init) if args.init else None
    if init is not None and val:
        print("before: " + json.dumps({k: round(v, 4) for k, v in evaluate_io_net(init, val, cfg).items()}),
              file=sys.stderr)

    def log(row):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), file=sys.stderr,
              flush=True)

    net = train_io_net(train, cfg, steps=args.steps, lr=args.lr, init=init, seed=args.seed, log=log, val=val)
    metrics = evaluate_io_net(net, val, cfg) if val else {}
    kp_step = -1
    if args.frontend == "kp2d":
        from kp2d_ros.networks.weights import read_weights

        kp_step = int(read_weights(args.model)[1].get("step", -1))
    save_network(net, args.out, training="epipolar", frontend=args.frontend,
                 keypoint_net=str(args.model) if args.frontend == "kp2d" else "", keypoint_net_step=kp_step, init=args.init or "",
                 pairs=len(train), val_pairs=len(val), steps=args.steps, resolution=[w, h],
                 inlier_px=cfg.inlier_px, outlier_px=cfg.outlier_px, seed=args.seed,
                 val_metrics={k: float(v) for k, v in metrics.items()})
    print(f"wrote {args.out}: " + json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0
