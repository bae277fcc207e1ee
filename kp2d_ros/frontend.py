"""Image -> :class:`Features`: classical OpenCV detectors (ORB, SIFT) and the learned KP2D network.

Every frontend takes an (H, W) uint8 grey or (H, W, 3) uint8 RGB image and returns keypoints in
that image's pixel coordinates, whatever working resolution it runs at internally.
"""
from __future__ import annotations

import cv2
import numpy as np

from kp2d_ros.config import FrontendConfig
from kp2d_ros.errors import ConfigError, ModelError
from kp2d_ros.frontend_common import DetectionMask, grid_select, resize_to_working, to_grey, to_input_pixels
from kp2d_ros.types import Features, Frontend


class OpenCVFrontend(Frontend):
    """ORB or SIFT from OpenCV behind the :class:`Frontend` interface.

    SIFT descriptors are returned as float32 with unit L2 norm (RootSIFT when
    ``cfg.root_sift``); ORB descriptors as packed uint8 bits with ``binary=True``.
    """

    def __init__(self, cfg: FrontendConfig):
        self.cfg = cfg
        self.name = cfg.type
        self.bucketing = cfg.grid_cols > 0 and cfg.grid_rows > 0
        # With bucketing, detect more than needed and keep the best per cell.
        n_detect = cfg.num_features * 3 if self.bucketing else cfg.num_features
        if cfg.type == "orb":
            self.detector = cv2.ORB_create(nfeatures=n_detect, scaleFactor=cfg.orb_scale_factor,
                                           nlevels=cfg.orb_levels, fastThreshold=cfg.orb_fast_threshold)
            self.binary = True
        elif cfg.type == "sift":
            self.detector = cv2.SIFT_create(nfeatures=n_detect, contrastThreshold=cfg.sift_contrast_threshold,
                                            edgeThreshold=cfg.sift_edge_threshold)
            self.binary = False
        else:
            raise ConfigError(f"frontend.type: {cfg.type!r} is not an OpenCV frontend")
        self.mask = DetectionMask(cfg.mask_ratios, cfg.mask_image)

    def detect(self, image: np.ndarray) -> Features:
        """Keypoints, descriptors and scores of one image.

        Parameters
        ----------
        image : (H, W) uint8 grey or (H, W, 3) uint8 RGB.

        Returns
        -------
        Features with keypoints (N, 2) float32 in input pixels, N <= ``num_features``.
        """
        grey = to_grey(image)
        work, scale = resize_to_working(grey, self.cfg.resolution, self.cfg.scale)
        mask = self.mask.at((grey.shape[1], grey.shape[0]), (work.shape[1], work.shape[0]))
        kps, desc = self.detector.detectAndCompute(work, mask)
        dim = 32 if self.binary else 128
        if desc is None or len(kps) == 0:
            return Features.empty(dim=dim, binary=self.binary)
        xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        scores = np.array([k.response for k in kps], np.float32)
        if self.bucketing:
            keep = grid_select(xy, scores, (work.shape[1], work.shape[0]), self.cfg.grid_cols,
                               self.cfg.grid_rows, self.cfg.num_features, fill=True)
        else:
            keep = np.argsort(-scores, kind="stable")[: self.cfg.num_features]
        xy, scores, desc = xy[keep], scores[keep], desc[keep]
        if not self.binary:
            desc = self._normalise(desc.astype(np.float32))
        return Features(keypoints=to_input_pixels(xy, scale), descriptors=np.ascontiguousarray(desc),
                        scores=scores, binary=self.binary)

    def _normalise(self, desc: np.ndarray) -> np.ndarray:
        """(N, 128) float32 SIFT -> unit L2 norm (RootSIFT: L1-normalise then square root)."""
        if self.cfg.root_sift:
            desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))
        return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def build_frontend(cfg: FrontendConfig) -> Frontend:
    """The frontend named by ``cfg.type`` (``orb``, ``sift`` or the learned ``kp2d``).

    Raises
    ------
    ConfigError
        unknown type.
    ModelError
        ``kp2d`` requested but the network module is not available in this build.
    """
    if cfg.type in ("orb", "sift"):
        return OpenCVFrontend(cfg)
    if cfg.type == "kp2d":
        try:
            from kp2d_ros.networks.kp2d_frontend import KP2DFrontend
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("kp2d_ros.networks"):
                raise ModelError("frontend.type 'kp2d': kp2d_ros.networks.kp2d_frontend is not available") from None
            raise
        return KP2DFrontend(cfg)
    raise ConfigError(f"frontend.type: must be one of orb, sift, kp2d; got {cfg.type!r}")
