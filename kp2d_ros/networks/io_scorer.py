"""IO-Net at inference: a :class:`~kp2d_ros.matching.MatchScorer` giving each putative match its
inlier probability.

The input is built exactly as in training (:func:`kp2d_ros.networks.io_net.io_net_input`):
``(u, v, u', v', descriptor distance)`` with pixel coordinates mapped to [-1, 1] by the image
size, the distance being the L2 distance of the unit-norm descriptors. The pipeline drops matches
under ``matching.io_threshold`` and hands the rest, best first, to the essential-matrix step
(``geometry.method: prosac`` samples in that order).
"""
from __future__ import annotations

import numpy as np
import torch

from kp2d_ros.config import MatchingConfig
from kp2d_ros.errors import DataError
from kp2d_ros.matching import MatchScorer
from kp2d_ros.networks.io_net import IONet, io_net_input
from kp2d_ros.networks.kp2d_frontend import select_device


class IOScorer(MatchScorer):
    """Inlier probabilities from a trained IO-Net.

    Parameters
    ----------
    model : the network (eval mode is enforced).
    device : ``auto`` | ``cpu`` | ``cuda`` (``cuda`` without CUDA falls back to the CPU with one
        log line).
    """

    name = "io_net"

    def __init__(self, model: IONet, device: str = "auto"):
        self.device = select_device(device, key="matching.device")
        self.model = model.to(self.device).eval()
        self._layers = _matmul_layers(self.model)

    def logits(self, pairs: torch.Tensor) -> torch.Tensor:
        """IO-Net logits (N,) of one (5, N) input as plain matrix products: the eval-mode network with
        each BatchNorm folded into an affine map after its InstanceNorm and the convolution biases
        that InstanceNorm cancels dropped (equal to ``model(pairs[None]).logits[0]``, tested; about
        3x faster than the module on a CPU, where the 1x1 convolutions and norms are op-overhead bound)."""
        w_in, b_in, blocks, w_out, b_out = self._layers
        x = torch.addmm(b_in, w_in, pairs)  # (C, N)
        for (w1, a1, c1), (w2, a2, c2) in blocks:
            y = x
            for w, a, c in ((w1, a1, c1), (w2, a2, c2)):
                # InstanceNorm over the N matches of each channel row (layer_norm on rows: one fused op)
                y = torch.nn.functional.layer_norm(w @ y, y.shape[1:], eps=_IN_EPS)
                y = torch.relu_(torch.addcmul(c, y, a))
            x = x + y
        return (w_out @ x)[0] + b_out

    @classmethod
    def from_file(cls, path, device: str = "auto") -> "IOScorer":
        """Load an IO-Net weights file (homography- or epipolar-trained, same format).

        Raises
        ------
        ModelError
            missing, corrupt or mismatched file.
        """
        return cls(IONet.from_file(path, "cpu"), device)

    def score(self, kp0: np.ndarray, kp1: np.ndarray, distances: np.ndarray,
              image_size: tuple[int, int]) -> np.ndarray:
        """Inlier probabilities of M matches.

        Parameters
        ----------
        kp0, kp1 : (M, 2) matched keypoints in pixels (reference, current).
        distances : (M,) descriptor distances (L2 of unit-norm descriptors, in [0, 2]).
        image_size : (width, height) of the images.

        Returns
        -------
        (M,) float32 probabilities in [0, 1]; fewer than 2 matches (no set to normalise over) get 0.5.
        """
        kp0 = np.asarray(kp0, np.float32).reshape(-1, 2)
        kp1 = np.asarray(kp1, np.float32).reshape(-1, 2)
        distances = np.asarray(distances, np.float32).ravel()
        m = kp0.shape[0]
        if kp1.shape[0] != m or distances.shape[0] != m:
            raise DataError(f"IOScorer.score: {m} / {kp1.shape[0]} keypoints and {distances.shape[0]} distances")
        if m < 2:
            return np.full(m, 0.5, np.float32)
        w, h = image_size
        with torch.inference_mode():
            p0 = torch.from_numpy(kp0).to(self.device)[None]
            p1 = torch.from_numpy(kp1).to(self.device)[None]
            d = torch.from_numpy(distances).to(self.device)[None]
            probs = torch.sigmoid(self.logits(io_net_input(p0, p1, d, (h, w))[0]))
        return probs.float().cpu().numpy()


_IN_EPS = 1e-5  # torch.nn.InstanceNorm1d's default


def _matmul_layers(model: IONet):
    """Weights for :meth:`IOScorer.logits`: (w_in, b_in, [((w, a, c), (w, a, c)) per block], w_out, b_out);
    ``a, c`` (C, 1) = the eval BatchNorm as y * a + c."""
    def bn(m):
        a = m.weight / torch.sqrt(m.running_var + m.eps)
        return a[:, None].detach(), (m.bias - m.running_mean * a)[:, None].detach()

    for block in model.blocks:
        for norm in (block.in1, block.in2):
            if norm.affine or norm.track_running_stats or norm.eps != _IN_EPS:
                raise ValueError("IOScorer.logits assumes plain InstanceNorm1d(eps=1e-5)")
    blocks = [((b.conv1.weight[..., 0].detach(), *bn(b.bn1)), (b.conv2.weight[..., 0].detach(), *bn(b.bn2)))
              for b in model.blocks]
    return (model.input_conv.weight[..., 0].detach(), model.input_conv.bias[:, None].detach(), blocks,
            model.output_conv.weight[..., 0].detach(), model.output_conv.bias.detach())


def build_scorer(cfg: MatchingConfig) -> IOScorer | None:
    """The IO-Net scorer named by ``matching.io_net`` / ``matching.io_net_path``, or None when off.

    Raises
    ------
    ModelError
        the weights file is missing or invalid.
    """
    if not cfg.io_net:
        return None
    return IOScorer.from_file(cfg.io_net_path, cfg.device)
