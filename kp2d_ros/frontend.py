"""Image -> :class:`Features`: classical OpenCV detectors (ORB, SIFT) and the learned KP2D network.

Every frontend takes an (H, W) uint8 grey or (H, W, 3) uint8 RGB image and returns keypoints in
that image's pixel coordinates, whatever working resolution it runs at internally.
"""
from __future__ import annotations

import cv2
import numpy as np

from kp2d_ros.config import FrontendConfig
from kp2d_ros.errors import ConfigError, DataError, ModelError
from kp2d_ros.types import Features, Frontend


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey view of an (H, W), (H, W, 1) or (H, W, 3) RGB uint8 image.

    Raises
    ------
    DataError
        unsupported shape or dtype.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise DataError(f"image: expected a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise DataError(f"image: expected (H, W) grey or (H, W, 3) RGB, got shape {image.shape}")


EMPTY_IMAGE_STD = 2.0  # grey levels: an image whose standard deviation is below this has no content (black)


def has_content(image: np.ndarray) -> bool:
    """Whether the (H, W) grey or (H, W, 3) RGB image has anything to detect: its levels vary by at least
    :data:`EMPTY_IMAGE_STD` in one channel (a covered lens or a black frame does not). No grey conversion."""
    return float(cv2.meanStdDev(image)[1].max()) >= EMPTY_IMAGE_STD


def resize_to_working(grey: np.ndarray, resolution: list[int], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Resize to the working resolution ``[width, height]``; ``[0, 0]``: the input size times ``scale``.

    Returns
    -------
    work : (h, w) uint8 image the detector sees.
    scale : (2,) float64 (sx, sy) factors from working to input pixels.
    """
    h_in, w_in = grey.shape[:2]
    w, h = int(resolution[0]), int(resolution[1])
    if (w <= 0 or h <= 0) and scale != 1.0:
        w, h = max(8, int(round(w_in * scale))), max(8, int(round(h_in * scale)))
    if w <= 0 or h <= 0 or (w == w_in and h == h_in):
        return grey, np.ones(2)
    interp = cv2.INTER_AREA if w * h < w_in * h_in else cv2.INTER_LINEAR
    return cv2.resize(grey, (w, h), interpolation=interp), np.array([w_in / w, h_in / h])


def to_input_pixels(xy: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Map (N, 2) working-resolution pixel centres back to input pixels (0-based centres)."""
    return ((xy + 0.5) * scale - 0.5).astype(np.float32)


def grid_select(xy: np.ndarray, scores: np.ndarray, size: tuple[int, int], cols: int, rows: int,
                max_total: int, fill: bool = False) -> np.ndarray:
    """Indices of the best keypoints per grid cell, for an even spatial spread.

    Parameters
    ----------
    xy : (N, 2) pixel coordinates in an image of ``size = (width, height)``.
    scores : (N,) higher is better.
    cols, rows : grid size; each cell keeps at most ``ceil(max_total / (cols * rows))``.
    max_total : overall cap; the per-cell picks are ordered by descending score.
    fill : when sparse cells leave part of the budget unused, add the best remaining keypoints.

    Returns
    -------
    (K,) int64 indices into ``xy``, K <= max_total.
    """
    n = xy.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    w, h = size
    per_cell = int(np.ceil(max_total / (cols * rows)))
    cx = np.clip((xy[:, 0] * cols / w).astype(np.int64), 0, cols - 1)
    cy = np.clip((xy[:, 1] * rows / h).astype(np.int64), 0, rows - 1)
    cell = cy * cols + cx
    order = np.lexsort((-scores, cell))  # by cell, then by descending score
    sorted_cells = cell[order]
    first = np.searchsorted(sorted_cells, sorted_cells, side="left")
    rank = np.arange(n) - first
    kept = order[rank < per_cell]
    kept = kept[np.argsort(-scores[kept], kind="stable")][:max_total]
    if fill and kept.shape[0] < max_total:  # sparse cells: spend the rest of the budget on the best others
        rest = np.setdiff1d(np.arange(n), kept)
        rest = rest[np.argsort(-scores[rest], kind="stable")][: max_total - kept.shape[0]]
        kept = np.concatenate([kept, rest])
    return kept


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
        kps, desc = self.detector.detectAndCompute(work, None)
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
