"""Probe: a weight file on the line between two KeyPointNet weight files of one architecture (a "model soup"):

    python scripts/interpolate_weights.py A.pt B.pt ALPHA OUT.pt      # (1 - ALPHA) * A + ALPHA * B

Every floating-point tensor (weights, BatchNorm statistics) is interpolated; integer ones (BatchNorm's batch
counters) are A's. The output keeps A's metadata plus an ``interpolated`` record, and loads like any shipped file
(``KeyPointNet.from_file``). Used to ask whether a fine-tune's gain can be had part of the way from the weights it
started from (``models/README.md``, stop 72).
"""
from __future__ import annotations

import argparse
import sys


def interpolate(a: str, b: str, alpha: float, out: str) -> None:
    """Write ``(1 - alpha) * a + alpha * b`` to ``out``; raises ModelError / ValueError on unlike files."""
    import torch

    from kp2d_ros.networks.keypoint_net import KeyPointNet
    from kp2d_ros.networks.weights import read_weights, save_network

    sa, meta = read_weights(a)
    sb, meta_b = read_weights(b)
    if meta.get("config") != meta_b.get("config") or sa.keys() != sb.keys():
        raise ValueError(f"{a} and {b} are not the same architecture")
    mix = {}
    for k, t in sa.items():
        if torch.is_floating_point(t):
            mix[k] = ((1.0 - alpha) * t.double() + alpha * sb[k].double()).to(t.dtype)
        else:
            mix[k] = t.clone()
    net = KeyPointNet.from_file(a)
    net.load_state_dict(mix)
    kept = {k: v for k, v in meta.items() if k not in ("network", "config")}
    save_network(net, out, **kept, interpolated={"a": str(a), "b": str(b), "alpha": alpha})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("alpha", type=float)
    ap.add_argument("out")
    args = ap.parse_args(argv)
    from kp2d_ros.errors import Kp2dError

    try:
        interpolate(args.a, args.b, args.alpha, args.out)
    except (Kp2dError, ValueError, OSError) as e:
        print(f"interpolate_weights: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: (1 - {args.alpha}) * {args.a} + {args.alpha} * {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
