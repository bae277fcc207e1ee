#!/usr/bin/env python3
"""Run any ``kp2d`` command with KeyPointNet in half precision (bf16 on a CPU with native bf16, fp16 on CUDA; whatever
``frontend.half_precision`` says) except chosen modules in fp32: which part of the network's low precision moves the VO
results.

    python scripts/precision_parts.py --fp32 loc_a,loc_b -- replay ../shared/data/vo/tum_fr2_desk_20f --out out/p/loc
    python scripts/precision_parts.py --fp32 conv1a,conv1b,conv2a,conv2b,conv3a,conv3b,conv4a,conv4b -- \
        stress ../shared/data/vo/kitti07_f0000-0159 --no-progress --out out/p/k07_encoder
    python scripts/precision_parts.py -- stress ...                     # all of it in half precision
    python scripts/precision_parts.py --fp32 all --jitter-px 0.02 --seed 1 -- stress ...   # fp32, keypoints jittered
    python scripts/precision_parts.py --fp32 all --half-outputs scores -- stress ...  # fp32, bf16's scores

``--fp32`` names modules of :class:`~kp2d_ros.networks.keypoint_net.KeyPointNet` (``conv1a`` ... ``conv4b``,
``score_a``, ``score_b``, ``loc_a``, ``loc_b``, ``desc_a``, ``desc_up``, ``desc_b``, ``desc_c``). Each named module of
the frontend's inference copy (BatchNorm folded) runs in fp32 on its input cast up, and its output is cast back to
the network's dtype (the heads' last convolutions, whose outputs are read in fp32, keep it in fp32); the rest is
unchanged. On a CPU without native bf16 the whole network runs in fp32 (as ``frontend.half_precision`` does there).
``--fp32 all`` runs the whole network in fp32. ``--jitter-px SIGMA`` moves every keypoint the network gives by a
Gaussian offset of SIGMA px per axis, drawn from ``--seed`` and the image (the same offsets for the same image in
every run): a control for a precision's keypoint shift (bf16 moves the shipped network's by a median 0.02 px).
``--jitter-mode descriptor`` draws each keypoint's offset from its descriptor instead (a fixed random linear map
from descriptors to offsets, from ``--seed``, SIGMA px per axis): the same point moves alike in every frame that
sees it, as bf16's shift presumably does, while ``image`` (the default) draws it afresh for each image.
``--half-outputs scores,locations,descriptors`` (with ``--fp32 all``): the network runs twice, in fp32 and in half
precision, and the named outputs of its dense body (score logits: which keypoints are kept and in which order;
the location head's raw output: where they are; the descriptor features that the last convolution reads, applied
in fp32) come from the half-precision run, the others from fp32: which of the network's outputs carries the VO
cost of the low precision.
Stop 56 (AMX Xeon, KITTI 07, ``kp2d stress --variants clean,lag2,drops0,drops2,drops0+lag2,stop``, odometry ATE
geometric mean): encoder in fp32 0.086 m, descriptor head 0.091 m, score and location heads 0.102 m; all bf16 0.100 m,
all fp32 0.063 m; all fp32 with the keypoints jittered by 0.02 px, seeds 1 and 2: 0.066, 0.066 m (docs/results.md,
*KeyPointNet in bf16*). Stop 57, the same 6 variants, ``--fp32 all --half-outputs NAME``: locations 0.083 m,
descriptors 0.072 m (*KeyPointNet in bf16, continued*).
"""
from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import replace

import numpy as np
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


BODY_OUTPUTS = ("scores", "locations", "descriptors")  # what the frontend's dense body returns, in its order


class MixedBody:
    """A frontend's dense body whose ``outputs`` (names of :data:`BODY_OUTPUTS`) come from a second body (the network
    in ``other_dtype``, which its input is cast to), cast to the first body's dtypes."""

    def __init__(self, body, other, other_dtype: torch.dtype, outputs: list[str]):
        if body is None or other is None:
            raise SystemExit("error: --half-outputs needs the frontend's torchscript or onnxruntime engine")
        self.body, self.other, self.other_dtype = body, other, other_dtype
        self.take = [n in outputs for n in BODY_OUTPUTS]

    def __call__(self, image: torch.Tensor):
        mine = self.body(image)
        theirs = self.other(image.to(self.other_dtype))
        return tuple(t.to(m.dtype) if take else m for m, t, take in zip(mine, theirs, self.take))


def descriptor_jittered(points: torch.Tensor, descriptors: torch.Tensor, sigma_px: float, seed: int) -> torch.Tensor:
    """(N, 2) ``points`` moved by ``descriptors @ W``, W (D, 2) drawn N(0, ``sigma_px``) from ``seed``: for unit
    descriptors an offset of ``sigma_px`` per axis, the same for the same descriptor in every image."""
    w = np.random.default_rng(seed).normal(0, sigma_px, (descriptors.shape[1], 2)).astype(np.float32)
    return points + descriptors.float() @ torch.from_numpy(w).to(descriptors.device)


def jittered(points: torch.Tensor, image: np.ndarray, sigma_px: float, seed: int) -> torch.Tensor:
    """(N, 2) ``points`` moved by N(0, ``sigma_px``) per axis, drawn from ``seed`` and the image's content."""
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image[::7, ::7]).tobytes())])
    return points + torch.from_numpy(rng.normal(0, sigma_px, tuple(points.shape)).astype(np.float32)).to(points.device)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: precision_parts.py --fp32 NAME[,NAME...] -- KP2D_COMMAND [ARGS...]", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", default="", help="comma-separated KeyPointNet modules to run in fp32, or 'all'")
    p.add_argument("--jitter-px", type=float, default=0.0, help="Gaussian keypoint jitter per axis (px; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="the jitter's seed")
    p.add_argument("--jitter-mode", choices=("image", "descriptor"), default="image",
                   help="draw each keypoint's offset afresh per image, or from its descriptor (the same in every frame)")
    p.add_argument("--half-outputs", default="",
                   help="with --fp32 all: comma-separated body outputs (scores, locations, descriptors) taken from "
                        "the network in half precision")
    args = p.parse_args(argv[:split])
    names = [n for n in args.fp32.split(",") if n]
    half = names != ["all"]
    outputs = [n for n in args.half_outputs.split(",") if n]
    if outputs and half:
        p.error("--half-outputs needs --fp32 all")
    if set(outputs) - set(BODY_OUTPUTS):
        p.error(f"--half-outputs: choose from {', '.join(BODY_OUTPUTS)}")

    import kp2d_ros.networks.kp2d_frontend as frontend_module
    from kp2d_ros.cli import main as kp2d_main

    original = frontend_module.inference_copy
    original_init = frontend_module.KP2DFrontend.__init__

    def init(self, config=None, model=None):
        from kp2d_ros.config import FrontendConfig

        config = config or FrontendConfig(type="kp2d")
        original_init(self, replace(config, half_precision=half), model)
        if outputs:  # (half is off) the named outputs from a second copy of the network in half precision
            low = object.__new__(frontend_module.KP2DFrontend)
            original_init(low, replace(config, half_precision=True), self.model)
            self._body = MixedBody(self._body, low._body, low.dtype, outputs)

    def inference_copy(model, device, dtype):
        return with_fp32_parts(original(model, device, dtype), names if half else [])

    original_detect = frontend_module.KP2DFrontend.detect_tensors

    def detect_tensors(self, image):
        points, scores, descriptors = original_detect(self, image)
        if args.jitter_mode == "descriptor":
            return descriptor_jittered(points, descriptors, args.jitter_px, args.seed), scores, descriptors
        return jittered(points, image, args.jitter_px, args.seed), scores, descriptors

    frontend_module.inference_copy = inference_copy
    frontend_module.KP2DFrontend.__init__ = init
    if args.jitter_px > 0:
        frontend_module.KP2DFrontend.detect_tensors = detect_tensors
    sys.argv = ["kp2d"] + argv[split + 1:]
    return kp2d_main()


if __name__ == "__main__":
    sys.exit(main())
