"""What every frontend shares, classical and learned: the image checks and the resize to the working resolution
on the way in, and the keypoint selection and the map back to input pixels on the way out. A leaf module: the
frontends import it, and it imports none of them."""
from __future__ import annotations

from pathlib import Path

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


class DetectionMask:
    """Where keypoints may be detected (``frontend.mask_ratios`` and ``frontend.mask_image``): a (h, w) uint8 mask per
    working size, 255 where detection is allowed, built once per input and working size.

    Raises
    ------
    DataError
        a mask image that cannot be read, or one that allows nothing.
    """

    def __init__(self, ratios=(0.0, 0.0, 0.0, 0.0), image_path: str = ""):
        self.ratios = tuple(float(r) for r in ratios)
        self.image = None
        if image_path:
            self.image = cv2.imread(str(Path(image_path).expanduser()), cv2.IMREAD_GRAYSCALE)
            if self.image is None or self.image.size == 0:
                raise DataError(f"frontend.mask_image: cannot read {image_path} as an image")
            if not self.image.any():
                raise DataError(f"frontend.mask_image: {image_path} is black everywhere: no keypoint could be detected")
        self.active = any(self.ratios) or self.image is not None
        self._cache: dict[tuple[int, int, int, int], np.ndarray] = {}
        # (H, W) uint8 of the next input image, 255 where allowed, set from frame to frame (:class:`StillBlocks`)
        self.dynamic: np.ndarray | None = None

    def at(self, input_size: tuple[int, int], working_size: tuple[int, int]) -> np.ndarray | None:
        """(h, w) uint8 mask of the working image (255: keypoints allowed) for an input image of ``input_size``
        (w, h) seen at ``working_size`` (w, h); None when nothing is masked."""
        fixed = self._fixed(input_size, working_size)
        dynamic = self.dynamic
        if dynamic is None or dynamic.shape != (input_size[1], input_size[0]):
            return fixed
        if tuple(working_size) != tuple(input_size):
            dynamic = cv2.resize(dynamic, tuple(working_size), interpolation=cv2.INTER_NEAREST)
        return dynamic if fixed is None else np.minimum(fixed, dynamic)

    def _fixed(self, input_size: tuple[int, int], working_size: tuple[int, int]) -> np.ndarray | None:
        """The configured part of :meth:`at` (ratios and image), built once per sizes."""
        if not self.active:
            return None
        key = (*input_size, *working_size)
        if key not in self._cache:
            (w_in, h_in), (w, h) = input_size, working_size
            mask = np.full((h_in, w_in), 255, np.uint8)
            left, right, top, bottom = self.ratios
            mask[:, :int(round(left * w_in))] = 0
            mask[:, w_in - int(round(right * w_in)):] = 0
            mask[:int(round(top * h_in))] = 0
            mask[h_in - int(round(bottom * h_in)):] = 0
            if self.image is not None:
                mask[cv2.resize(self.image, (w_in, h_in), interpolation=cv2.INTER_NEAREST) == 0] = 0
            if (w, h) != (w_in, h_in):
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
            mask.flags.writeable = False
            self._cache[key] = mask
        return self._cache[key]


class StillBlocks:
    """Blocks of the image that stay still while the view moves: the robot's own body in view (a bonnet, a bumper, a
    mount) or an overlay burned into the image, found from the images alone (``frontend.still_mask_frames``).

    Images are compared at quarter resolution in blocks of 16 x 16 input pixels. A block's mean absolute change over
    its mean gradient is the displacement that change implies (in quarter-resolution pixels). Each time the view has
    moved by :attr:`VIEW_MOVE` since the last such time (the median textured block's implied displacement), every
    textured block is judged: still when it has moved by less than :attr:`STILL` since its run of still judgements
    began (so that a slow drift adds up), else its run restarts. Blocks still in ``frames`` judgements in a row are
    masked where they reach the image's border (a body comes into the view from outside it; points far ahead, near
    the focus of expansion of a straight drive, hardly move either, but they lie inside the view), with their 8
    neighbours (keypoints near a body's edge see it too), until a judgement finds them moved. Regions of fewer than
    :attr:`MIN_BLOCKS` blocks are left (a roof's corner against the sky at the border). A stop or a covered lens
    judges nothing; a slow creep judges once it has moved the view by :attr:`VIEW_MOVE`. A mask that would cover more
    than :attr:`MAX_FRACTION` of the textured blocks is not applied: a body does not fill most of the view, and what
    stands still then is the scene (a stopped robot before something large that moves). Where that something fills
    more of the textured view than the scene, only the pipeline can tell: ``update(..., judge=False)`` while it finds
    the camera standing (:meth:`kp2d_ros.pipeline.VOPipeline.detect`).
    """

    BLOCK = 4  # quarter-resolution pixels per block side (16 input pixels)
    VIEW_MOVE = 1.0  # median implied displacement between two judgements (quarter-resolution px: 4 input px)
    STILL = 0.25  # a block's implied displacement since its run began below which it is still (1 input px)
    TEXTURE = 1.0  # mean absolute x and y gradients (grey levels per quarter-resolution px) of a textured block
    MAX_FRACTION = 0.4
    MIN_BLOCKS = 6  # the smallest region masked (6 blocks: 1536 px^2)

    def __init__(self, frames: int):
        self.frames = int(frames)
        self._ref: np.ndarray | None = None  # the image at the last judgement (quarter resolution)
        self._anchor: np.ndarray | None = None  # each block as it was when its run began
        self._run: np.ndarray | None = None  # still judgements in a row, per block
        self.judgements = 0
        self.masked_blocks = 0  # blocks masked after the last image
        self.mask: np.ndarray | None = None  # (H, W) uint8 of the last image, 255 where keypoints are allowed

    @property
    def masked_fraction(self) -> float:
        """The fraction of the last image without keypoints (0 when nothing is masked)."""
        return 0.0 if self.mask is None else float(np.count_nonzero(self.mask == 0)) / self.mask.size

    def update(self, grey: np.ndarray, judge: bool = True) -> np.ndarray | None:
        """Take the next (H, W) uint8 grey image; returns its (H, W) uint8 mask (255: keypoints allowed), or None
        when no block is masked. ``judge`` False: the camera is known to stand, so a moving view is something else's
        motion: nothing is judged and the mask stays as it is."""
        h, w = grey.shape[:2]
        b = self.BLOCK
        q = cv2.resize(grey, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA).astype(np.float32)
        hb, wb = q.shape[0] // b, q.shape[1] // b
        if hb == 0 or wb == 0:
            return None
        q = q[:hb * b, :wb * b]
        if self._ref is None or self._ref.shape != q.shape:  # the first image, or another size: start again
            self._ref, self._anchor, self._run = q, q.copy(), np.zeros((hb, wb), np.int32)
            self.mask, self.masked_blocks = None, 0
            return None
        gx = cv2.Sobel(q, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(q, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        gradient = cv2.magnitude(gx, gy).reshape(hb, b, wb, b).mean(axis=(1, 3))
        # texture in both directions: an edge alone (a roof line against the sky) shows motion along it as none
        textured = np.minimum(np.abs(gx).reshape(hb, b, wb, b).mean(axis=(1, 3)),
                              np.abs(gy).reshape(hb, b, wb, b).mean(axis=(1, 3))) >= self.TEXTURE
        if not textured.any():
            return self.mask
        scale = 1.0 / np.maximum(gradient, 1e-6)
        view = np.abs(q - self._ref).reshape(hb, b, wb, b).mean(axis=(1, 3)) * scale
        if not judge or float(np.median(view[textured])) < self.VIEW_MOVE:
            return self.mask
        self._ref = q
        self.judgements += 1
        drift = np.abs(q - self._anchor).reshape(hb, b, wb, b).mean(axis=(1, 3)) * scale
        still_now = textured & (drift < self.STILL)
        self._run = np.where(still_now, self._run + 1, 0)
        restart = np.repeat(np.repeat(~still_now, b, axis=0), b, axis=1)
        self._anchor[restart] = q[restart]
        still = (self._run >= self.frames).astype(np.uint8)
        if still.any():  # only regions that reach the image's border (a body comes into the view from outside it)
            n, labels = cv2.connectedComponents(still, connectivity=8)  # and are not a corner or an edge's end
            edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            sizes = np.bincount(labels.ravel(), minlength=n)
            keep = [k for k in edge if k > 0 and sizes[k] >= self.MIN_BLOCKS]
            still = np.isin(labels, keep).astype(np.uint8)
        if not still.any() or still.sum() > self.MAX_FRACTION * textured.sum():
            self.mask, self.masked_blocks = None, 0
            return None
        still = cv2.dilate(still, np.ones((3, 3), np.uint8))
        self.masked_blocks = int(still.sum())
        side = b * 4  # input pixels per block side
        allowed = np.where(still > 0, 0, 255).astype(np.uint8).repeat(side, axis=0).repeat(side, axis=1)
        # the rows and columns past the last whole block follow it
        self.mask = np.pad(allowed, ((0, h - allowed.shape[0]), (0, w - allowed.shape[1])), mode="edge")
        return self.mask


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
