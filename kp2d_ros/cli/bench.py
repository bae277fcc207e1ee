"""``kp2d bench``: speed of the whole VO pipeline (image -> pose), per stage and end to end.

Runs over the built-in synthetic sequence (rendered at the benchmark resolution, no data folder
needed) or over ``--sequence PATH`` (any folder/bag ``kp2d replay`` reads; frames are resized to
``--resolution`` inside the frontend, which is timed). ``--resolution`` is the camera image size: the
frontend's ``frontend.scale`` applies on top of it as in ``kp2d replay`` (the network of a config with
``scale: 0.75`` works at 920x278 for ``--resolution 1226x370``; ``--set frontend.scale=1.0`` to time it
at the given size). Prints a summary and writes JSON with
``fps``, ``stages_ms`` (medians after warm-up), ``device`` and machine information. ``--repeat N`` runs the
measurement N times: ``fps`` is then the median of the per-run FPS (``fps_runs``), and the load average before
and after is recorded (``load_average_before``/``load_average_after``); run it on an idle machine.

Examples::

    kp2d bench --frontend kp2d --resolution 320x240 --device cpu --model models/keypoint_net_small.pt
    kp2d bench --frontend kp2d --resolution 640x192 --sequence ../shared/data/vo/kitti07_f0000-0159 \\
        --io-net models/io_net_epipolar.pt --out out/bench_kitti.json
    kp2d bench --frontend orb --resolution 320x240
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="time the VO pipeline per stage and end to end", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frontend", choices=("orb", "sift", "kp2d"), default=None,
                   help="overrides the config's frontend.type (default: the config's, kp2d in config/vo.yaml)")
    p.add_argument("--resolution", default="320x240",
                   help="image size WIDTHxHEIGHT the pipeline gets (default 320x240); the frontend works at this "
                        "size times frontend.scale")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="network and matching device (default: the config's)")
    p.add_argument("--model", default=None, help="KeyPointNet weights (default: frontend.model_path)")
    p.add_argument("--io-net", default=None, metavar="PATH|none",
                   help="IO-Net weights, or 'none' to switch it off (default: the config's matching.io_net)")
    p.add_argument("--precision", choices=("half", "fp32"), default=None,
                   help="half = fp16 on CUDA / bf16 on CPU (default: frontend.half_precision)")
    p.add_argument("--frames", type=int, default=50, help="timed frames (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the measurement N times (each with its warm-up); reports per-run FPS and their "
                        "median, and the load average before/after (default 1)")
    p.add_argument("--sequence", default=None, help="dataset folder or bag (default: synthetic sequence)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (pipeline.torch_threads; default: the config's)")
    p.add_argument("--config", default=None, help="VO config YAML (default: config/vo.yaml, else built-in defaults)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--untrained-width", type=float, default=None, metavar="W",
                   help="speed only: a randomly initialised KeyPointNet of width multiplier W (1.0 = paper size) "
                        "instead of --model")
    p.add_argument("--pipelined", action="store_true",
                   help="detect the next frame on a worker thread while the current one is tracked "
                        "(fps = throughput; latency_ms = image -> pose)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    return p


def build_config(args):
    """VOConfig from --config/--set plus the bench options."""
    from kp2d_ros.cli.eval_homography import parse_resolution
    from kp2d_ros.cli.replay import default_config_path
    from kp2d_ros.config import parse_overrides
    from kp2d_ros.config import load_config
    from kp2d_ros.eval.bench import config_for_image_size

    w, h = parse_resolution(args.resolution)
    overrides = parse_overrides(args.set)
    if args.frontend is not None:
        overrides["frontend.type"] = args.frontend
    if args.threads > 0:
        overrides["pipeline.torch_threads"] = args.threads
    if args.device is not None:
        overrides["frontend.device"] = args.device
        overrides["matching.device"] = args.device
    if args.model is not None:
        overrides["frontend.model_path"] = args.model
    if args.precision is not None:
        overrides["frontend.half_precision"] = args.precision == "half"
    if args.io_net is not None:
        if args.io_net.lower() == "none":
            overrides["matching.io_net"] = False
        else:
            overrides["matching.io_net"] = True
            overrides["matching.io_net_path"] = args.io_net
    path = args.config if args.config is not None else default_config_path()
    return config_for_image_size(load_config(path, overrides=overrides), w, h)


def run(args) -> int:
    from kp2d_ros.errors import DataError
    from kp2d_ros.eval.bench import bench_repeated

    if args.frames < 1 or args.warmup < 1 or args.repeat < 1:
        raise DataError("--frames, --warmup and --repeat must be >= 1")
    from kp2d_ros.cli.eval_homography import parse_resolution

    cfg = build_config(args)
    w, h = parse_resolution(args.resolution)  # the image size; the frontend works at cfg.frontend.resolution
    n = args.frames + args.warmup
    if args.sequence is None:
        from kp2d_ros.data.synthetic import synthetic_sequence

        seq = synthetic_sequence(n_frames=max(n, 2), width=w, height=h)
    else:
        from kp2d_ros.data import open_sequence

        seq = open_sequence(args.sequence, max_frames=n, camera=cfg.camera)
    pipeline = None
    if args.untrained_width is not None:
        if cfg.frontend.type != "kp2d":
            raise DataError("--untrained-width needs --frontend kp2d")
        from kp2d_ros.networks.keypoint_net import KeyPointNet
        from kp2d_ros.networks.kp2d_frontend import KP2DFrontend
        from kp2d_ros.pipeline import VOPipeline

        model = KeyPointNet(width_multiplier=args.untrained_width).eval()
        pipeline = VOPipeline(cfg, frontend=KP2DFrontend(cfg.frontend, model=model))
    result = bench_repeated(seq, cfg, args.repeat, frames=args.frames, warmup=args.warmup, pipeline=pipeline,
                            pipelined=args.pipelined)
    report = result.report()
    report["image_size"] = [w, h]  # "resolution" is the frontend's working size
    if args.untrained_width is not None:
        report["model"] = f"untrained KeyPointNet, width multiplier {args.untrained_width} (speed only)"
    st = report["stages_ms"]
    ww, wh = cfg.frontend.resolution
    print(f"{report['frontend']} {w}x{h}" + (f" (working size {ww}x{wh})" if (ww, wh) != (w, h) else "")
          + f" on {report['device']}"
          + (f" ({report['precision']})" if report["precision"] else "")
          + f", {report['frames']} frames of {report['sequence']} after {report['warmup']} warm-up")
    print("  " + "  ".join(f"{k} {st[k]:.1f} ms" for k in ("network", "matching", "io_net", "refine", "pose", "backend", "total")))
    print(f"  {report['fps']:.1f} FPS (median), {report['fps_mean']:.1f} FPS (mean)"
          + (f", pipelined, latency {report['latency_ms']:.1f} ms" if report["pipelined"] else "")
          + (f"; CPU time {report['cpu_ms']:.1f} ms/frame" if report.get("cpu_ms") is not None else "") + "; "
          f"{report['machine']['cpu']}, {report['machine']['logical_cores']} cores, "
          f"load {report['machine'].get('load_average_1m', 'n/a')}")
    if args.repeat > 1:
        print(f"  {args.repeat} runs: " + ", ".join(f"{v:.1f}" for v in report["fps_runs"])
              + f" FPS; median {report['fps']:.1f}; load average (1/5/15 min) before {report['load_average_before']}, "
              f"after {report['load_average_after']}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"  wrote {out}", file=sys.stderr)
    return 0
