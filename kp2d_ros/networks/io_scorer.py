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
            probs = self.model(io_net_input(p0, p1, d, (h, w))).probabilities[0]
        return probs.float().cpu().numpy()


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
