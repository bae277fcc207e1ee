"""What every frontend shares, classical and learned: the image checks and the resize to the working resolution
on the way in, and the keypoint selection and the map back to input pixels on the way out. A leaf module: the
frontends import it, and it imports none of them."""
from __future__ import annotations

import cv2
import numpy as np

from kp2d_ros.errors import DataError


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


def exposed(image: np.ndarray, gain: float) -> np.ndarray:
    """``image`` with its intensities multiplied by ``gain``: an integer image rounded and clipped to its dtype's
    range (saturation), a float image only scaled; ``gain == 1`` returns it as is."""
    if gain == 1.0:
        return image
    out = image.astype(np.float32) * np.float32(gain)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)


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
