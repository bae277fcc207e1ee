#!/usr/bin/env python3
"""Run any ``kp2d`` command with KeyPointNet in half precision (bf16 on a CPU with native bf16, fp16 on CUDA; whatever
``frontend.half_precision`` says) except chosen modules in fp32: which part of the network's low precision moves the VO
results.

    python scripts/precision_parts.py --fp32 loc_a,loc_b -- replay ../shared/data/vo/tum_fr2_desk_20f --out out/p/loc
    python scripts/precision_parts.py --fp32 conv1a,conv1b,conv2a,conv2b,conv3a,conv3b,conv4a,conv4b -- \
        stress ../shared/data/vo/kitti07_f0000-0159 --no-progress --out out/p/k07_encoder
    python scripts/precision_parts.py -- stress ...                     # all of it in half precision

``--fp32`` names modules of :class:`~kp2d_ros.networks.keypoint_net.KeyPointNet` (``conv1a`` ... ``conv4b``,
``score_a``, ``score_b``, ``loc_a``, ``loc_b``, ``desc_a``, ``desc_up``, ``desc_b``, ``desc_c``). Each named module of
the frontend's inference copy (BatchNorm folded) runs in fp32 on its input cast up, and its output is cast back to
the network's dtype (the heads' last convolutions, whose outputs are read in fp32, keep it in fp32); the rest is
unchanged. On a CPU without native bf16 the whole network runs in fp32 (as ``frontend.half_precision`` does there).
Stop 56 (AMX Xeon, KITTI 07, ``kp2d stress --variants clean,lag2,drops0,drops2,drops0+lag2,stop``, odometry ATE
geometric mean): encoder in fp32 0.086 m, descriptor head 0.091 m, score and location heads 0.102 m; all bf16 0.100 m,
all fp32 0.063 m (docs/results.md, *KeyPointNet in bf16*).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from torch import nn


# the heads' last convolutions: their outputs are read in fp32 (KeyPointNet's heads leave the low precision)
HEAD_OUTPUTS = ("score_b", "loc_b", "desc_c")


class InFloat32(nn.Module):
    """``module`` in fp32: input cast up, output cast back to ``dtype`` (None: left in fp32)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.module = module.float()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.float())
        return y if self.dtype is None else y.to(self.dtype)


def with_fp32_parts(net: nn.Module, names: list[str]) -> nn.Module:
    """``net`` (an inference copy in a low precision) with the modules ``names`` run in fp32."""
    dtype = next(net.parameters()).dtype
    for name in names:
        if not isinstance(getattr(net, name, None), nn.Module):
            raise SystemExit(f"error: KeyPointNet has no module {name!r}")
        if dtype == torch.float32:
            continue
        if name == "desc_c":  # applied at the keypoints only, to taps cast to its weight's dtype
            net.desc_c = net.desc_c.float()
        else:
            setattr(net, name, InFloat32(getattr(net, name), None if name in HEAD_OUTPUTS else dtype))
    return net


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: precision_parts.py --fp32 NAME[,NAME...] -- KP2D_COMMAND [ARGS...]", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", default="", help="comma-separated KeyPointNet modules to run in fp32")
    args = p.parse_args(argv[:split])
    names = [n for n in args.fp32.split(",") if n]

    import kp2d_ros.networks.kp2d_frontend as frontend_module
    from kp2d_ros.cli import main as kp2d_main

    original = frontend_module.inference_copy
    original_init = frontend_module.KP2DFrontend.__init__

    def init(self, config=None, model=None):
        from kp2d_ros.config import FrontendConfig

        original_init(self, replace(config or FrontendConfig(type="kp2d"), half_precision=True), model)

    def inference_copy(model, device, dtype):
        return with_fp32_parts(original(model, device, dtype), names)

    frontend_module.inference_copy = inference_copy
    frontend_module.KP2DFrontend.__init__ = init
    sys.argv = ["kp2d"] + argv[split + 1:]
    return kp2d_main()


if __name__ == "__main__":
    sys.exit(main())
