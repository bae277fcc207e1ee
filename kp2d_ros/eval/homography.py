"""Homography benchmark (HPatches / Oxford layouts) with the KP2D / SuperPoint metrics.

For every sequence, pairs 1 -> N (N = 2..6) are resized to one working resolution (the
homography is rescaled accordingly) and each method's top-k keypoints are scored by

* repeatability and localization error: keypoints of one image warped into the other (both
  directions, only points visible in both), a keypoint is repeated when the nearest detection lies
  within ``distance_px`` (3 px); the localization error is the mean distance of repeated points;
* homography correctness C1/C3/C5: cross-checked nearest-neighbour matches -> ``cv2.findHomography``
  (RANSAC, 3 px) -> mean distance of the four image corners warped by the estimate and by the
  ground truth, correct under 1/3/5 px;
* matching score: nearest-neighbour matches without cross-check, the fraction of visible keypoints
  whose match is within ``distance_px`` of the true position (averaged over both directions).

Classical methods (ORB, SIFT from OpenCV, top-k by response) run under the same protocol.
``<method>-search`` (e.g. ``kp2d-search``) puts a method behind the test-time similarity search of
:mod:`kp2d_ros.similarity_search` (views of image1 turned by quarter turns and upsampled, the view with the
most RANSAC inliers wins, the ground truth is never looked at); the metrics are then computed as above.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from kp2d_ros.errors import ConfigError, DataError
from kp2d_ros.matching import mutual_nearest
from kp2d_ros.training.homography import scale_homography, warp_points
from kp2d_ros.types import Features

METHODS = ("kp2d", "orb", "sift")
SEARCH_SUFFIX = "-search"  # ``kp2d-search``: a method behind the test-time similarity search

_EXTS = (".ppm", ".png", ".pgm", ".jpg")


def base_method(name: str) -> str:
    """``kp2d-search`` -> ``kp2d``; names without the search suffix are returned as they are."""
    return name[:-len(SEARCH_SUFFIX)] if name.endswith(SEARCH_SUFFIX) else name


@dataclass
class HomographyPair:
    """One image pair of a sequence at full resolution.

    Attributes
    ----------
    sequence : folder name. index : N of the pair 1 -> N.
    image0, image1 : (H, W, 3) uint8 RGB. H : (3, 3) image0 pixels -> image1 pixels.
    """

    sequence: str
    index: int
    image0: np.ndarray
    image1: np.ndarray
    H: np.ndarray


@dataclass
class PairMetrics:
    """Metrics of one method on one pair (NaN where undefined)."""

    sequence: str
    index: int
    num_keypoints0: int
    num_keypoints1: int
    repeatability: float
    localization_error: float
    corner_error: float
    matching_score: float
    num_matches: int
    # ``<method>-search`` only: the view of image1 that the similarity search picked
    view_rotation_deg: int | None = None
    view_zoom: float | None = None


@dataclass
class MethodSummary:
    """Averages over all pairs: repeatability, localization error (px), C1/C3/C5, matching score."""

    repeatability: float
    localization_error: float
    c1: float
    c3: float
    c5: float
    matching_score: float
    num_pairs: int
    pairs: list[PairMetrics] = field(default_factory=list)
    seconds_per_pair: float = float("nan")  # wall time of detection + matching + metrics, on this machine


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def _image_file(folder: Path, i: int) -> Path | None:
    for stem in (f"{i}", f"img{i}"):
        for ext in _EXTS:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def _homography_file(folder: Path, n: int) -> Path | None:
    for name in (f"H_1_{n}", f"H1to{n}p"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_sequence(folder: Path) -> bool:
    return _image_file(folder, 1) is not None and _homography_file(folder, 2) is not None


def find_sequences(root: str | Path) -> list[Path]:
    """``root`` itself when it is a sequence folder, else its sequence sub-folders (sorted).

    Raises
    ------
    DataError
        missing folder or no sequence in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"homography data folder not found: {root}")
    if is_sequence(root):
        return [root]
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and is_sequence(p))
    if not seqs:
        raise DataError(f"no HPatches (1.ppm, H_1_2) or Oxford (img1.png, H1to2p) sequence under {root}")
    return seqs


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_pairs(sequence: Path) -> list[HomographyPair]:
    """Pairs 1 -> N of one sequence (N with both an image and a homography file)."""
    image0 = _read(_image_file(sequence, 1))
    pairs = []
    for n in range(2, 100):
        img, hf = _image_file(sequence, n), _homography_file(sequence, n)
        if img is None or hf is None:
            break
        try:
            H = np.loadtxt(hf, dtype=np.float64).reshape(3, 3)
        except ValueError as e:
            raise DataError(f"{hf}: not a 3x3 homography ({e})") from None
        pairs.append(HomographyPair(sequence.name, n, image0, _read(img), H))
    return pairs


def resize_pair(pair: HomographyPair, width: int, height: int) -> HomographyPair:
    """Both images resized to width x height, the homography rescaled (pixel-centre convention)."""
    def rs(img):
        h, w = img.shape[:2]
        interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
        return cv2.resize(img, (width, height), interpolation=interp), (width / w, height / h)

    i0, s0 = rs(pair.image0)
    i1, s1 = rs(pair.image1)
    return HomographyPair(pair.sequence, pair.index, i0, i1, scale_homography(pair.H, s0, s1))


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------
def classical_detector(name: str, top_k: int) -> Callable[[np.ndarray], Features]:
    """ORB or SIFT (OpenCV) keeping the ``top_k`` strongest keypoints by response."""
    if name == "orb":
        det = cv2.ORB_create(nfeatures=max(top_k * 2, 500))
        binary = True
    elif name == "sift":
        det = cv2.SIFT_create()
        binary = False
    else:
        raise ConfigError(f"methods: unknown method {name!r} (known: {', '.join(METHODS)}, each also "
                          f"with {SEARCH_SUFFIX})")

    def detect(image: np.ndarray) -> Features:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        kps = det.detect(grey, None)
        kps = sorted(kps, key=lambda k: -k.response)[:top_k]
        kps, desc = det.compute(grey, kps)
        if desc is None or len(kps) == 0:
            return Features.empty(32 if binary else 128, binary)
        pts = np.array([k.pt for k in kps], np.float32)
        scores = np.array([k.response for k in kps], np.float32)
        if not binary:
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return Features(pts, desc.astype(np.uint8 if binary else np.float32), scores, binary)

    return detect


def kp2d_detector(model_path: str, top_k: int, device: str = "cpu") -> Callable[[np.ndarray], Features]:
    """The learned frontend at the input resolution, top-k by score, full precision."""
    from kp2d_ros.config import FrontendConfig
    from kp2d_ros.networks.kp2d_frontend import KP2DFrontend

    cfg = FrontendConfig(type="kp2d", model_path=model_path, device=device, num_features=top_k,
                         half_precision=False)
    return KP2DFrontend(cfg).detect


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def repeatability(kp0: np.ndarray, kp1: np.ndarray, H: np.ndarray, shape0: tuple[int, int],
                  shape1: tuple[int, int], distance_px: float = 3.0) -> tuple[float, float]:
    """(repeatability, localization error) of two keypoint sets under H (image0 -> image1).

    Only keypoints visible in the other image count. Returns (nan, nan) when none is visible.
    """
    (h0, w0), (h1, w1) = shape0, shape1
    if len(kp0) == 0 or len(kp1) == 0:
        return 0.0, float("nan")
    w01 = warp_points(kp0.astype(np.float64), H)
    w10 = warp_points(kp1.astype(np.float64), np.linalg.inv(H))
    vis0 = _inside(w01, w1, h1)  # kp0 visible in image1
    vis1 = _inside(w10, w0, h0)  # kp1 visible in image0
    a, b = w01[vis0], kp1[vis1].astype(np.float64)  # both in image1 coordinates
    n = len(a) + len(b)
    if n == 0 or len(a) == 0 or len(b) == 0:
        return (0.0 if n else float("nan")), float("nan")
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    d0, d1 = d.min(axis=1), d.min(axis=0)
    c0, c1 = d0 <= distance_px, d1 <= distance_px
    rep = (c0.sum() + c1.sum()) / n
    loc = np.concatenate([d0[c0], d1[c1]])
    return float(rep), float(loc.mean()) if len(loc) else float("nan")


def _distances(f0: Features, f1: Features) -> np.ndarray:
    if f0.binary:
        a = np.unpackbits(f0.descriptors, axis=1).astype(np.float32)
        b = np.unpackbits(f1.descriptors, axis=1).astype(np.float32)
        return a @ (1 - b).T + (1 - a) @ b.T  # Hamming
    sim = f0.descriptors.astype(np.float32) @ f1.descriptors.astype(np.float32).T
    return np.sqrt(np.clip(2 - 2 * sim, 0, None))


def corner_error(H_est: np.ndarray | None, H_true: np.ndarray, width: int, height: int) -> float:
    """Mean distance of the four image corners warped by the estimate and by the truth (inf if none)."""
    if H_est is None:
        return float("inf")
    c = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], np.float64)
    return float(np.linalg.norm(warp_points(c, H_est) - warp_points(c, H_true), axis=1).mean())


def matching_score(f0: Features, f1: Features, dist: np.ndarray, H: np.ndarray, shape0, shape1,
                   distance_px: float = 3.0) -> float:
    """Fraction of visible keypoints whose (non cross-checked) nearest neighbour is correct, both ways."""
    (h0, w0), (h1, w1) = shape0, shape1
    if len(f0) == 0 or len(f1) == 0:
        return 0.0
    scores = []
    for kp_a, kp_b, d, Hab, (ha, wa), (hb, wb) in (
            (f0.keypoints, f1.keypoints, dist, H, (h0, w0), (h1, w1)),
            (f1.keypoints, f0.keypoints, dist.T, np.linalg.inv(H), (h1, w1), (h0, w0))):
        warped = warp_points(kp_a.astype(np.float64), Hab)
        vis = _inside(warped, wb, hb)
        if vis.sum() == 0:
            scores.append(0.0)
            continue
        nn = d.argmin(axis=1)
        err = np.linalg.norm(warped - kp_b[nn], axis=1)
        scores.append(float(((err <= distance_px) & vis).sum() / vis.sum()))
    return float(np.mean(scores))


def evaluate_features(pair: HomographyPair, f0: Features, f1: Features, distance_px: float = 3.0,
                      ransac_px: float = 3.0) -> PairMetrics:
    """All metrics of one pair from the keypoints/descriptors of its two (already resized) images."""
    shape0, shape1 = pair.image0.shape[:2], pair.image1.shape[:2]
    rep, loc = repeatability(f0.keypoints, f1.keypoints, pair.H, shape0, shape1, distance_px)
    dist = _distances(f0, f1) if len(f0) and len(f1) else np.zeros((len(f0), len(f1)))
    i0, i1 = mutual_nearest(dist)
    H_est = None
    if len(i0) >= 4:
        H_est, _ = cv2.findHomography(f0.keypoints[i0].astype(np.float64), f1.keypoints[i1].astype(np.float64),
                                      cv2.RANSAC, ransac_px)
    err = corner_error(H_est, pair.H, shape0[1], shape0[0])
    ms = matching_score(f0, f1, dist, pair.H, shape0, shape1, distance_px)
    return PairMetrics(pair.sequence, pair.index, len(f0), len(f1), rep, loc, err, ms, int(len(i0)))


def evaluate_pair(pair: HomographyPair, detect: Callable[[np.ndarray], Features], distance_px: float = 3.0,
                  ransac_px: float = 3.0) -> PairMetrics:
    """All metrics of one method on one (already resized) pair."""
    return evaluate_features(pair, detect(pair.image0), detect(pair.image1), distance_px, ransac_px)


def evaluate_pair_search(pair: HomographyPair, detect: Callable[[np.ndarray], Features],
                         quarter_turns=(0, 1, 2, 3), zooms=(1.0, 2.0, 4.0), distance_px: float = 3.0,
                         ransac_px: float = 3.0) -> PairMetrics:
    """The metrics of ``detect`` behind the test-time similarity search
    (:func:`kp2d_ros.similarity_search.search_similarity`; it sees the images only, never ``pair.H``):
    the view it picks by RANSAC-homography inliers gives the features, scored like any method's."""
    from kp2d_ros.similarity_search import search_similarity

    res = search_similarity(detect, pair.image0, pair.image1, quarter_turns, zooms, "homography", ransac_px)
    row = evaluate_features(pair, res.features0, res.features1, distance_px, ransac_px)
    row.view_rotation_deg, row.view_zoom = res.rotation_deg, res.zoom
    return row


def summarise(rows: list[PairMetrics]) -> MethodSummary:
    def mean(values):
        v = np.array([x for x in values if np.isfinite(x)], np.float64)
        return float(v.mean()) if len(v) else float("nan")

    errs = np.array([r.corner_error for r in rows])
    return MethodSummary(
        repeatability=mean(r.repeatability for r in rows),
        localization_error=mean(r.localization_error for r in rows),
        c1=float((errs <= 1).mean()), c3=float((errs <= 3).mean()), c5=float((errs <= 5).mean()),
        matching_score=mean(r.matching_score for r in rows),
        num_pairs=len(rows), pairs=rows)


def evaluate_homography(root: str | Path, methods: list[str] | tuple[str, ...] = METHODS,
                        resolution: tuple[int, int] = (320, 240), top_k: int = 300,
                        model_path: str = "models/keypoint_net.pt", device: str = "cpu",
                        detectors: dict[str, Callable[[np.ndarray], Features]] | None = None,
                        search_turns=(0, 1, 2, 3), search_zooms=(1.0, 2.0, 4.0),
                        progress: Callable[[str, HomographyPair], None] | None = None) -> dict[str, MethodSummary]:
    """Run every method on every pair 1 -> N under ``root``.

    Parameters
    ----------
    root : one sequence folder or a folder of them (HPatches or Oxford layout).
    methods : names among ``kp2d``, ``orb``, ``sift`` (or keys of ``detectors``), each optionally with the
        suffix ``-search`` (``kp2d-search``): the same detector behind the test-time similarity search over
        ``search_turns`` (counter-clockwise quarter turns) x ``search_zooms`` (relative upsampling) of image1.
    resolution : working (width, height); the homographies are rescaled to it.
    top_k : keypoints per image.
    detectors : optional extra/override detectors ``name -> detect(image) -> Features``.

    Returns
    -------
    {method: MethodSummary} with the per-pair rows in ``.pairs``.

    Raises
    ------
    DataError / ConfigError / ModelError
    """
    width, height = resolution
    if width <= 0 or height <= 0:
        raise ConfigError(f"resolution: expected positive width x height, got {resolution}")
    dets = dict(detectors or {})
    for m in methods:
        base = base_method(m)
        if base in dets:
            continue
        dets[base] = kp2d_detector(model_path, top_k, device) if base == "kp2d" else classical_detector(base, top_k)
    pairs = [resize_pair(p, width, height) for seq in find_sequences(root) for p in read_pairs(seq)]
    results = {}
    for m in methods:
        rows, start = [], time.perf_counter()
        for p in pairs:
            if progress is not None:
                progress(m, p)
            if m not in dets:  # only <method>-search names lack a detector of their own
                rows.append(evaluate_pair_search(p, dets[base_method(m)], search_turns, search_zooms))
            else:
                rows.append(evaluate_pair(p, dets[m]))
        results[m] = summarise(rows)
        results[m].seconds_per_pair = (time.perf_counter() - start) / max(len(pairs), 1)
    return results


def to_json(results: dict[str, MethodSummary], settings: dict | None = None) -> str:
    """``{method: {repeatability, localization_error, c1, c3, c5, matching_score, num_pairs, seconds_per_pair, pairs: [...]}}``
    (+ ``settings`` under each method when given); non-finite numbers become null."""
    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    out = {}
    for m, s in results.items():
        d = asdict(s)
        if settings:
            d["settings"] = settings
        out[m] = clean(d)
    return json.dumps(out, indent=1)
