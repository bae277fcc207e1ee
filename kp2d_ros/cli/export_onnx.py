"""``kp2d export-onnx``: KeyPointNet weights -> ONNX at a fixed resolution.

Example: ``kp2d export-onnx --model models/keypoint_net.pt --resolution 640x480 --out out/keypoint_net.onnx``
(input ``image`` (1, 3, H, W) normalised as in config keypoint_net.input_mean/std; outputs scores,
keypoints, descriptors as in KeyPointNet.forward).
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="export KeyPointNet to ONNX", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/keypoint_net.pt")
    p.add_argument("--resolution", default="640x480", help="WIDTHxHEIGHT of the exported input")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with torch on a random input")
    return p


def run(args) -> int:
    from kp2d_ros.cli.eval_homography import parse_resolution
    from kp2d_ros.networks.export import export_onnx
    from kp2d_ros.networks.keypoint_net import KeyPointNet

    w, h = parse_resolution(args.resolution)
    net = KeyPointNet.from_file(args.model)
    path = export_onnx(net, args.out, w, h, args.opset)
    print(f"wrote {path} (input 1x{net.config.in_channels}x{h}x{w})", file=sys.stderr)
    if args.check:
        import numpy as np
        import onnxruntime as ort
        import torch

        x = torch.randn(1, net.config.in_channels, h, w)
        with torch.no_grad():
            ref = net(x)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"image": x.numpy()})
        for name, a, b in zip(("scores", "keypoints", "descriptors"), outs, (ref.scores, ref.keypoints, ref.descriptors)):
            print(f"{name}: max |onnx - torch| = {np.abs(a - b.numpy()).max():.2e}")
    return 0
