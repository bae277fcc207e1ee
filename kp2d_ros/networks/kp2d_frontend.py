"""The learned KP2D frontend: image -> :class:`~kp2d_ros.types.Features` with KeyPointNet."""
from __future__ import annotations

import contextlib

import cv2
import numpy as np
import torch

from kp2d_ros.config import FrontendConfig
from kp2d_ros.errors import DataError
from kp2d_ros.networks.keypoint_net import KeyPointNet, preprocess, select_top_k
from kp2d_ros.types import Features, Frontend


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA falls back to CPU."""
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


class KP2DFrontend(Frontend):
    """KeyPointNet detector/descriptor behind the common frontend interface.

    Parameters
    ----------
    config : ``frontend`` section: model_path, device, resolution ([w, h] working size, [0, 0] =
        input size), num_features (top-k), nms_radius, score_threshold, half_precision.
    model : an already loaded network (tests, evaluation); default loads ``config.model_path``.

    Raises
    ------
    ModelError
        missing/corrupt/mismatched weights.
    """

    name = "kp2d"

    def __init__(self, config: FrontendConfig | None = None, model: KeyPointNet | None = None):
        self.config = config or FrontendConfig(type="kp2d")
        self.device = pick_device(self.config.device)
        self.model = (model or KeyPointNet.from_file(self.config.model_path, self.device)).to(self.device).eval()

    def detect(self, image: np.ndarray) -> Features:
        """Keypoints, descriptors and scores of one image.

        Parameters
        ----------
        image : (H, W) uint8 grey or (H, W, 3) uint8 RGB.

        Returns
        -------
        Features with keypoints (N, 2) float32 in input pixels, descriptors (N, 256) float32
        L2-normalised, scores (N,) float32, best first, N <= num_features.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3) \
                or (image.ndim == 3 and image.shape[2] not in (1, 3)) or min(image.shape[:2]) < 8:
            raise DataError(f"KP2DFrontend.detect: expected an (H, W) or (H, W, 3) uint8 image >= 8 px, got "
                            f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        h, w = image.shape[:2]
        rw, rh = self.config.resolution
        if rw > 0 and (rw, rh) != (w, h):
            interp = cv2.INTER_AREA if rw < w else cv2.INTER_LINEAR
            work = cv2.resize(image, (rw, rh), interpolation=interp)
        else:
            work, rw, rh = image, w, h
        cfg = self.model.config
        x = preprocess(work, cfg, self.device)
        with torch.inference_mode(), self._autocast():
            out = self.model(x)
            (kps, scores, desc), = select_top_k(out, self.config.num_features, border_px=cfg.border_px,
                                                score_threshold=self.config.score_threshold,
                                                nms_radius=self.config.nms_radius)
        kps = kps.float().cpu().numpy()
        # working pixels -> input pixels (pixel-centre convention)
        kps[:, 0] = (kps[:, 0] + 0.5) * (w / rw) - 0.5
        kps[:, 1] = (kps[:, 1] + 0.5) * (h / rh) - 0.5
        desc = desc.float()
        desc = torch.nn.functional.normalize(desc, dim=-1).cpu().numpy()
        return Features(kps.astype(np.float32), desc.astype(np.float32), scores.float().cpu().numpy().astype(np.float32))

    def _autocast(self):
        if not self.config.half_precision:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)
