"""ONNX export of KeyPointNet at a fixed input resolution."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from kp2d_ros.errors import ModelError
from kp2d_ros.networks.keypoint_net import KeyPointNet

OUTPUT_NAMES = ("scores", "keypoints", "descriptors")


class KeyPointNetTuple(nn.Module):
    """KeyPointNet with a tuple output (scores, keypoints, descriptors) for tracing."""

    def __init__(self, net: KeyPointNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        """image (1, C, H, W) normalised -> scores (1, 1, Hc, Wc), keypoints (1, 2, Hc, Wc), descriptors (1, D, 2Hc, 2Wc)."""
        out = self.net(image)
        return out.scores, out.keypoints, out.descriptors


def export_onnx(net: KeyPointNet, path: str | os.PathLike, width: int, height: int, opset: int = 17) -> Path:
    """Write ``net`` (eval mode) as ONNX with input ``image`` of shape (1, C, height, width).

    Raises
    ------
    ModelError
        when the export fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = KeyPointNetTuple(net.cpu()).eval()  # the wrapper too: the exporter reads its mode
    dummy = torch.zeros(1, net.config.in_channels, height, width)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["image"], output_names=list(OUTPUT_NAMES),
                              opset_version=opset, dynamo=False)
    except Exception as e:  # noqa: BLE001 - exporter raises many types
        raise ModelError(f"ONNX export failed: {type(e).__name__}: {e}") from None
    os.replace(tmp, path)
    return path
