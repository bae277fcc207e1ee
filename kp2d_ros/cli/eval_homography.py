"""``kp2d eval-homography``: repeatability, localization error, C1/C3/C5 and matching score.

Example: ``kp2d eval-homography ../shared/data/homography --methods kp2d,orb,sift --resolution 320x240
--top-k 300 --model models/keypoint_net.pt --out out/hpatches.json``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="homography benchmark (HPatches/Oxford layout)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="one sequence folder or a folder of sequences")
    p.add_argument("--methods", default="kp2d,orb,sift",
                   help="comma-separated: kp2d, orb, sift; a -search suffix (kp2d-search) adds the test-time "
                        "similarity search over rotations and zooms")
    p.add_argument("--search-rotations", default="0,90,180,270",
                   help="-search methods: counter-clockwise rotations of image1 to try, multiples of 90 degrees")
    p.add_argument("--search-zooms", default="1,2,4",
                   help="-search methods: relative zooms to try (>1 upsamples image1, <1 image0)")
    p.add_argument("--resolution", default="320x240", help="working WIDTHxHEIGHT")
    p.add_argument("--top-k", type=int, default=300,
                   help="keypoints per image that each metric keeps, by score, after its own visibility filter "
                        "(the reference KP2D protocol)")
    p.add_argument("--model", default="models/keypoint_net.pt",
                   help="KeyPointNet weights: any file written by kp2d train (the architecture is stored in it)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout summary only)")
    return p


def parse_resolution(text: str) -> tuple[int, int]:
    from kp2d_ros.errors import ConfigError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--resolution: expected WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"--resolution: expected positive sizes, got {text!r}")
    return w, h


def parse_search(rotations: str, zooms: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``"0,90,180,270"``, ``"1,2,4"`` -> quarter turns (0, 1, 2, 3), zooms (1.0, 2.0, 4.0)."""
    from kp2d_ros.errors import ConfigError

    try:
        degrees = [int(v) for v in rotations.split(",") if v.strip()]
        zs = tuple(float(v) for v in zooms.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--search-rotations/--search-zooms: expected numbers, got {rotations!r} / {zooms!r}") from None
    if not degrees or any(d % 90 for d in degrees):
        raise ConfigError(f"--search-rotations: expected multiples of 90 degrees, got {rotations!r}")
    return tuple((d // 90) % 4 for d in degrees), zs


def run(args) -> int:
    from kp2d_ros.eval.homography import evaluate_homography, to_json

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    resolution = parse_resolution(args.resolution)
    device = "cpu" if args.device == "cpu" else args.device
    turns, zooms = parse_search(args.search_rotations, args.search_zooms)
    results = evaluate_homography(args.dir, methods, resolution, args.top_k, args.model, device,
                                  search_turns=turns, search_zooms=zooms)
    print(f"{'method':12s} {'rep':>6s} {'loc':>6s} {'C1':>6s} {'C3':>6s} {'C5':>6s} {'MS':>6s}  pairs  s/pair")
    for m, s in results.items():
        print(f"{m:12s} {s.repeatability:6.3f} {s.localization_error:6.3f} {s.c1:6.3f} {s.c3:6.3f} {s.c5:6.3f} "
              f"{s.matching_score:6.3f}  {s.num_pairs:5d}  {s.seconds_per_pair:6.2f}")
    if args.out:
        settings = {"dir": str(args.dir), "resolution": list(resolution), "top_k": args.top_k,
                    "protocol": "KP2D reference (visibility before top-k; matching score in the query image)",
                    "model": args.model if any(m.startswith("kp2d") for m in methods) else None}
        if any(m.endswith("-search") for m in methods):
            settings["search"] = {"rotations_deg": [90 * k for k in turns], "zooms": list(zooms),
                                  "model": "homography", "ransac_px": 3.0}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(to_json(results, settings))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
