"""IO-Net: point-wise inlier/outlier classifier over putative matches (KP2D, ICLR 2020).

Each match is the 5-vector (u, v, u', v', descriptor distance) with pixel coordinates normalised
to [-1, 1] by :func:`io_net_input`. A 1x1 convolution lifts it to ``channels`` features, residual
blocks of (1x1 conv, InstanceNorm, BatchNorm, ReLU) mix in set context through the instance
normalisation, and a final 1x1 convolution gives one logit per pair.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from kp2d_ros.config import IONetConfig


@dataclass
class IONetOutput:
    """Per-match inlier logits.

    Attributes
    ----------
    logits : (B, N) inlier logits (sigmoid gives the inlier probability).
    """

    logits: torch.Tensor

    @property
    def probabilities(self) -> torch.Tensor:
        """(B, N) inlier probabilities."""
        return torch.sigmoid(self.logits)


class ResidualBlock(nn.Module):
    """Two (1x1 conv, InstanceNorm, BatchNorm, ReLU) layers with an identity shortcut."""

    def __init__(self, channels: int, momentum: float):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=1)
        self.in1 = nn.InstanceNorm1d(channels)
        self.bn1 = nn.BatchNorm1d(channels, momentum=momentum)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)
        self.in2 = nn.InstanceNorm1d(channels)
        self.bn2 = nn.BatchNorm1d(channels, momentum=momentum)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (B, C, N) -> (B, C, N)."""
        y = self.relu(self.bn1(self.in1(self.conv1(x))))
        y = self.relu(self.bn2(self.in2(self.conv2(y))))
        return x + y


class IONet(nn.Module):
    """Inlier/outlier network.

    Parameters
    ----------
    config : input size, width and number of residual blocks.
    """

    default_config = IONetConfig()

    def __init__(self, config: IONetConfig | None = None, **overrides):
        super().__init__()
        self.config = config = replace(config or self.default_config, **overrides)
        self.input_conv = nn.Conv1d(config.in_channels, config.channels, kernel_size=1)
        self.blocks = nn.Sequential(*[ResidualBlock(config.channels, config.bn_momentum) for _ in range(config.num_blocks)])
        self.output_conv = nn.Conv1d(config.channels, 1, kernel_size=1)

    def forward(self, pairs: torch.Tensor) -> IONetOutput:
        """Classify matches.

        Parameters
        ----------
        pairs : (B, 5, N) normalised (u, v, u', v', descriptor distance), see :func:`io_net_input`.
            N >= 2 (instance normalisation needs a set).

        Returns
        -------
        IONetOutput with logits (B, N).
        """
        x = self.input_conv(pairs)
        x = self.blocks(x)
        return IONetOutput(self.output_conv(x)[:, 0])

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> "IONet":
        """Build the network described by a weights file and load its weights (eval mode).

        Raises
        ------
        ModelError
            missing, corrupt or mismatched file.
        """
        from kp2d_ros.networks.weights import load_network

        return load_network(cls, IONetConfig, path, device)


def io_net_input(points0: torch.Tensor, points1: torch.Tensor, distances: torch.Tensor,
                 image_size: tuple[int, int]) -> torch.Tensor:
    """Build the IO-Net input from matched keypoints.

    Parameters
    ----------
    points0, points1 : (B, N, 2) matched pixel coordinates (x, y) in the two images.
    distances : (B, N) descriptor distances of the matches.
    image_size : (H, W) of the images (both the same size).

    Returns
    -------
    (B, 5, N) with coordinates normalised to [-1, 1].
    """
    h, w = image_size
    scale = points0.new_tensor([(w - 1) / 2, (h - 1) / 2])
    p0 = points0 / scale - 1
    p1 = points1 / scale - 1
    return torch.cat([p0, p1, distances[..., None]], dim=-1).transpose(1, 2)
