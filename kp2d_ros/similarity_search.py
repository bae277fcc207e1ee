"""Test-time similarity search: match two images whose relative rotation and zoom are unknown and large.

KeyPointNet, like the paper's, is trained on rotations and zooms of moderate size (here up to +-90 deg and
~3x), so it is not invariant to, say, a 150 deg rotation combined with a 3x zoom, which SIFT handles with its
orientation assignment and scale space. :func:`search_similarity` reaches those cases with the unchanged
network: it detects in *views* of one image (rotations by quarter turns, exact; upsampling by a set of
zoom factors), matches each view with the other image (mutual nearest neighbours), fits the two-view model
with RANSAC and keeps the view with the most inliers. Keypoints always come back in the original pixels.

The grid only has to bring the residual transformation inside what the network tolerates (quarter turns leave
at most +-45 deg; zoom steps of 2x leave at most sqrt(2)). The cost is one detection per view: 4 turns x 3
zooms = 12 detections of the second image, the 4x views at 16x the pixels.

This is not part of the VO pipeline, where consecutive frames barely rotate; it is for image pairs from
unrelated viewpoints (relocalisation, the Oxford/HPatches benchmark's ``kp2d-search`` method).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from kp2d_ros.errors import ConfigError
from kp2d_ros.matching import descriptor_distances, mutual_nearest
from kp2d_ros.types import Features

Detector = Callable[[np.ndarray], Features]
MODELS = ("homography", "fundamental")


@dataclass
class SearchResult:
    """The winning view of :func:`search_similarity`.

    Attributes
    ----------
    features0, features1 : keypoints of image0 / image1 in their original pixels (descriptors from the views).
    quarter_turns : counter-clockwise quarter turns applied to image1 (0..3) relative to image0.
    zoom : relative zoom; > 1: image1 was upsampled by ``zoom``, < 1: image0 by ``1 / zoom``.
    inliers : RANSAC inliers of the winning view.
    candidates : ``{(quarter_turns, zoom): inliers}`` for every view tried.
    """

    features0: Features
    features1: Features
    quarter_turns: int
    zoom: float
    inliers: int
    candidates: dict = field(default_factory=dict)

    @property
    def rotation_deg(self) -> int:
        return 90 * self.quarter_turns


def view_transform(width: int, height: int, quarter_turns: int, zoom: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The 3x3 map from original to view pixels (pixel-centre convention) and the view size (w, h).

    The view is the image upsampled by ``zoom`` (``cv2.resize`` to ``round(w * zoom) x round(h * zoom)``) and
    then turned ``quarter_turns`` times counter-clockwise (``np.rot90``).
    """
    w, h = int(round(width * zoom)), int(round(height * zoom))
    sx, sy = w / width, h / height
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    for _ in range(quarter_turns % 4):
        # np.rot90 (counter-clockwise): pixel (x, y) of a w-wide image goes to (y, w - 1 - x)
        A = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]]) @ A
        w, h = h, w
    return A, (w, h)


def make_view(image: np.ndarray, quarter_turns: int, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """``(view, A)``: the rotated/upsampled image and the 3x3 map from original to view pixels."""
    h, w = image.shape[:2]
    A, _ = view_transform(w, h, quarter_turns, zoom)
    view = image
    if zoom != 1.0:
        view = cv2.resize(image, (int(round(w * zoom)), int(round(h * zoom))),
                          interpolation=cv2.INTER_LINEAR if zoom > 1 else cv2.INTER_AREA)
    if quarter_turns % 4:
        view = np.ascontiguousarray(np.rot90(view, quarter_turns % 4))
    return view, A


def detect_in_view(detect: Detector, image: np.ndarray, quarter_turns: int, zoom: float) -> Features:
    """Run ``detect`` on a view of ``image`` and map the keypoints back to the original pixels."""
    view, A = make_view(image, quarter_turns, zoom)
    f = detect(view)
    if len(f) == 0:
        return f
    pts = cv2.perspectiveTransform(f.keypoints.astype(np.float64)[None], np.linalg.inv(A))[0]
    return Features(pts.astype(np.float32), f.descriptors, f.scores, f.binary)


def count_inliers(f0: Features, f1: Features, model: str = "homography", threshold_px: float = 3.0) -> int:
    """RANSAC inliers among the mutual nearest-neighbour matches of two feature sets (0 when too few)."""
    if len(f0) == 0 or len(f1) == 0:
        return 0
    i0, i1 = mutual_nearest(descriptor_distances(f0, f1)[0])
    p0, p1 = f0.keypoints[i0].astype(np.float64), f1.keypoints[i1].astype(np.float64)
    if model == "homography":
        if len(i0) < 4:
            return 0
        _, mask = cv2.findHomography(p0, p1, cv2.RANSAC, threshold_px)
    elif model == "fundamental":
        if len(i0) < 8:
            return 0
        _, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, threshold_px, 0.999)
    else:
        raise ConfigError(f"similarity search: model must be one of {MODELS}, got {model!r}")
    return int(mask.sum()) if mask is not None else 0


def search_similarity(detect: Detector, image0: np.ndarray, image1: np.ndarray,
                      quarter_turns: Sequence[int] = (0, 1, 2, 3), zooms: Sequence[float] = (1.0, 2.0, 4.0),
                      model: str = "homography", threshold_px: float = 3.0) -> SearchResult:
    """Detect and describe both images under the view of image1 (or image0) that matches best.

    Parameters
    ----------
    detect : image -> Features (any frontend; the point is one that is not rotation/scale invariant).
    image0, image1 : (H, W[, 3]) uint8 images.
    quarter_turns : counter-clockwise quarter turns of image1 to try (0..3).
    zooms : relative zooms to try; ``z >= 1`` upsamples image1 by ``z``, ``z < 1`` upsamples image0 by ``1 / z``
        (views are only ever upsampled, so no detail is lost).
    model : ``homography`` (planar scenes, the benchmark) or ``fundamental`` (general scenes).
    threshold_px : RANSAC threshold in original pixels of image1.

    Returns
    -------
    SearchResult; ties keep the earlier view in the order (zoom, quarter turn) as given, so put the
    identity first.

    Raises
    ------
    ConfigError
        empty grid, a quarter turn outside 0..3, a non-positive zoom or an unknown model.
    """
    turns, zs = [int(k) for k in quarter_turns], [float(z) for z in zooms]
    if not turns or not zs:
        raise ConfigError("similarity search: quarter_turns and zooms must not be empty")
    if any(k not in (0, 1, 2, 3) for k in turns):
        raise ConfigError(f"similarity search: quarter turns must be in 0..3, got {turns}")
    if any(not np.isfinite(z) or z <= 0 for z in zs):
        raise ConfigError(f"similarity search: zooms must be positive, got {zs}")
    if model not in MODELS:
        raise ConfigError(f"similarity search: model must be one of {MODELS}, got {model!r}")
    plain = {}  # detections of the unchanged images, computed once

    def unchanged(i: int, image: np.ndarray) -> Features:
        if i not in plain:
            plain[i] = detect(image)
        return plain[i]

    best, candidates = None, {}
    for z in zs:
        for k in turns:
            if z >= 1.0:
                f0 = unchanged(0, image0)
                f1 = unchanged(1, image1) if (k, z) == (0, 1.0) else detect_in_view(detect, image1, k, z)
            else:  # upsample image0 instead, turned the opposite way: the same relative view
                f0 = detect_in_view(detect, image0, (4 - k) % 4, 1.0 / z)
                f1 = unchanged(1, image1)
            n = count_inliers(f0, f1, model, threshold_px)
            candidates[(k, z)] = n
            if best is None or n > best.inliers:
                best = SearchResult(f0, f1, k, z, n)
    best.candidates = candidates
    return best
