"""Homography benchmark (HPatches / Oxford layouts) with the protocol of the reference KP2D evaluation.

For every sequence, pairs 1 -> N (N = 2..6) are resized to one working resolution (the homography is
rescaled accordingly). Each method detects all its candidates (every cell of KeyPointNet that passes the
border filter, every SIFT/ORB detection) and each metric takes its own top-k by score, as the reference
code (TRI-ML/KP2D ``kp2d/evaluation/``, adapted from SuperPoint's) does:

* repeatability and localization error: each image's keypoints are first filtered to those visible in
  the other image, then the top-k are kept; keypoints of image0 are warped into image1 and a keypoint of
  either set is repeated when the nearest keypoint of the other set lies within ``distance_px`` (3 px).
  Repeatability = repeated / (N0 + N1), localization error = mean distance of the repeated keypoints;
* homography correctness C1/C3/C5: again only the keypoints visible in the other image, then the top-k;
  cross-checked nearest-neighbour matches -> ``cv2.findHomography`` (RANSAC, 3 px, 5000 iterations) ->
  mean distance of the four image corners warped by the estimate and by the truth, correct under 1/3/5 px;
* matching score: the top-k of each image (visible or not); every keypoint is matched to its nearest
  neighbour (no cross-check) in the other image, the match is projected back into the query image with
  the true homography, and among matches whose projection is inside the query image the score is the
  fraction closer than ``distance_px`` to the query keypoint; averaged over both directions.

Rows whose repeatability is undefined (no visible keypoint) are left out of the average (the reference
would average a -1 in; it never happens on the benchmark data).

``<method>-search`` (e.g. ``kp2d-search``) puts a method behind the test-time similarity search of
:mod:`kp2d_ros.similarity_search` (views of image1 turned by quarter turns and upsampled, the view with the
most RANSAC inliers among the top-k wins, the ground truth is never looked at); the candidates of the
winning view are then scored as above.
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
from kp2d_ros.matching import descriptor_distances, mutual_nearest
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
def classical_detector(name: str, max_keypoints: int | None = None) -> Callable[[np.ndarray], Features]:
    """ORB or SIFT (OpenCV): every detection (at most ``max_keypoints``), best response first.

    ORB keeps at most ``max_keypoints`` (default 10000) by its own per-level ranking.
    """
    if name == "orb":
        det = cv2.ORB_create(nfeatures=max_keypoints or 10000)
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
        kps = sorted(kps, key=lambda k: -k.response)[:max_keypoints]
        kps, desc = det.compute(grey, kps)
        if desc is None or len(kps) == 0:
            return Features.empty(32 if binary else 128, binary)
        pts = np.array([k.pt for k in kps], np.float32)
        scores = np.array([k.response for k in kps], np.float32)
        if not binary:
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return Features(pts, desc.astype(np.uint8 if binary else np.float32), scores, binary)

    return detect


def kp2d_detector(model_path: str, max_keypoints: int | None = None,
                  device: str = "cpu") -> Callable[[np.ndarray], Features]:
    """The learned frontend at the input resolution, full precision: every cell's keypoint that passes the
    frontend's border filter (at most ``max_keypoints``), best score first. Any KeyPointNet weights file
    (``model_path``) whose architecture is stored in it loads."""
    from kp2d_ros.config import FrontendConfig
    from kp2d_ros.networks.kp2d_frontend import KP2DFrontend

    cfg = FrontendConfig(type="kp2d", model_path=str(model_path), device=device,
                         num_features=max_keypoints or 10 ** 9, half_precision=False)
    return KP2DFrontend(cfg).detect


# --------------------------------------------------------------------------------------------
# Metrics (the protocol of the reference KP2D evaluation, kp2d/evaluation/ in TRI-ML/KP2D)
# --------------------------------------------------------------------------------------------
def _inside_open(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """0 <= x < W and 0 <= y < H: the visibility test of the reference's repeatability and C1/C3/C5."""
    return (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)


def _inside_closed(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """0 <= x <= W - 1 and 0 <= y <= H - 1: the visibility test of the reference's matching score."""
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def top_k_indices(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (all of them, sorted, when ``k`` is None)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return order if k is None else order[:k]


def take_top_k(f: Features, k: int | None) -> Features:
    """The ``k`` best-scoring features of ``f``, best first (all of them when ``k`` is None)."""
    i = top_k_indices(f.scores, k)
    return Features(f.keypoints[i], f.descriptors[i], f.scores[i], f.binary)


def visible_top_k(f: Features, H: np.ndarray, width: int, height: int, k: int | None) -> Features:
    """The features whose image under ``H`` lies inside the other (``width`` x ``height``) image, then the
    ``k`` best of those: the reference's ``keep_true_keypoints`` followed by ``select_k_best``."""
    vis = _inside_open(warp_points(f.keypoints.astype(np.float64), H), width, height)
    return take_top_k(Features(f.keypoints[vis], f.descriptors[vis], f.scores[vis], f.binary), k)


def repeatability(f0: Features, f1: Features, H: np.ndarray, shape0: tuple[int, int], shape1: tuple[int, int],
                  top_k: int | None = None, distance_px: float = 3.0) -> tuple[float, float]:
    """(repeatability, localization error) of two keypoint sets under H (image0 -> image1).

    Each set is first filtered to the keypoints visible in the other image, then its ``top_k`` best by
    score are kept. Those of image0 are warped into image1; a keypoint (of either set) is repeated when the
    nearest keypoint of the other set lies within ``distance_px``. Repeatability = repeated / (N0 + N1);
    the localization error is the mean distance over all repeated keypoints (pooled over both sets).
    Returns (nan, nan) when no keypoint is visible and (0, nan) when only one set has any.
    """
    (h0, w0), (h1, w1) = shape0, shape1
    a = warp_points(visible_top_k(f0, H, w1, h1, top_k).keypoints.astype(np.float64), H)  # image1 coordinates
    b = visible_top_k(f1, np.linalg.inv(H), w0, h0, top_k).keypoints.astype(np.float64)
    n = len(a) + len(b)
    if n == 0:
        return float("nan"), float("nan")
    if len(a) == 0 or len(b) == 0:
        return 0.0, float("nan")
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    d0, d1 = d.min(axis=1), d.min(axis=0)
    c0, c1 = d0 <= distance_px, d1 <= distance_px
    loc = np.concatenate([d0[c0], d1[c1]])
    return float((c0.sum() + c1.sum()) / n), float(loc.mean()) if len(loc) else float("nan")


def corner_error(H_est: np.ndarray | None, H_true: np.ndarray, width: int, height: int) -> float:
    """Mean distance of the four image corners warped by the estimate and by the truth (inf if none)."""
    if H_est is None:
        return float("inf")
    c = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], np.float64)
    return float(np.linalg.norm(warp_points(c, H_est) - warp_points(c, H_true), axis=1).mean())


def homography_estimate(f0: Features, f1: Features, H: np.ndarray, shape0: tuple[int, int],
                        shape1: tuple[int, int], top_k: int | None = None,
                        ransac_px: float = 3.0) -> tuple[np.ndarray | None, int]:
    """(estimated homography or None, number of matches) as the reference's C1/C3/C5 computes it.

    Both sets keep only their keypoints visible in the other image, then their ``top_k`` best; the
    cross-checked nearest-neighbour matches go to ``cv2.findHomography`` (RANSAC, ``ransac_px``, 5000
    iterations). None when fewer than 4 matches or RANSAC fails.
    """
    (h0, w0), (h1, w1) = shape0, shape1
    s0 = visible_top_k(f0, H, w1, h1, top_k)
    s1 = visible_top_k(f1, np.linalg.inv(H), w0, h0, top_k)
    if len(s0) == 0 or len(s1) == 0:
        return None, 0
    i0, i1 = mutual_nearest(descriptor_distances(s0, s1)[0])
    if len(i0) < 4:
        return None, int(len(i0))
    H_est, _ = cv2.findHomography(s0.keypoints[i0].astype(np.float64), s1.keypoints[i1].astype(np.float64),
                                  cv2.RANSAC, ransac_px, maxIters=5000)
    return H_est, int(len(i0))


def matching_score(f0: Features, f1: Features, H: np.ndarray, shape0: tuple[int, int], shape1: tuple[int, int],
                   top_k: int | None = None, distance_px: float = 3.0) -> float:
    """The reference's matching score, averaged over both directions.

    Each set keeps its ``top_k`` best keypoints (visible or not). Every keypoint of the query image is
    matched to its nearest neighbour (descriptor distance, no cross-check) in the other image; the match
    is projected back into the query image with the true homography. Among the matches whose projection
    lies inside the query image, the score is the fraction within ``distance_px`` (strictly) of the query
    keypoint: the error is measured in the query image, with the matched point's visibility.
    """
    (h0, w0), (h1, w1) = shape0, shape1
    s0, s1 = take_top_k(f0, top_k), take_top_k(f1, top_k)
    if len(s0) == 0 or len(s1) == 0:
        return 0.0
    dist = descriptor_distances(s0, s1)[0]
    scores = []
    for query, other, d, H_back, (h, w) in ((s0, s1, dist, np.linalg.inv(H), (h0, w0)),
                                            (s1, s0, dist.T, H, (h1, w1))):
        back = warp_points(other.keypoints[d.argmin(axis=1)].astype(np.float64), H_back)
        vis = _inside_closed(back, w, h)
        correct = np.linalg.norm(back - query.keypoints.astype(np.float64), axis=1) < distance_px
        scores.append(float((correct & vis).sum() / max(vis.sum(), 1)))
    return float(np.mean(scores))


def evaluate_features(pair: HomographyPair, f0: Features, f1: Features, top_k: int | None = None,
                      distance_px: float = 3.0, ransac_px: float = 3.0) -> PairMetrics:
    """All metrics of one pair from the candidate keypoints/descriptors of its two (already resized) images.

    ``f0``/``f1`` are all the candidates of a detector; each metric selects its own ``top_k`` by score as
    the reference protocol does (None: use every candidate).
    """
    shape0, shape1 = pair.image0.shape[:2], pair.image1.shape[:2]
    rep, loc = repeatability(f0, f1, pair.H, shape0, shape1, top_k, distance_px)
    H_est, n_matches = homography_estimate(f0, f1, pair.H, shape0, shape1, top_k, ransac_px)
    err = corner_error(H_est, pair.H, shape0[1], shape0[0])
    ms = matching_score(f0, f1, pair.H, shape0, shape1, top_k, distance_px)
    return PairMetrics(pair.sequence, pair.index, len(f0), len(f1), rep, loc, err, ms, n_matches)


def evaluate_pair(pair: HomographyPair, detect: Callable[[np.ndarray], Features], top_k: int | None = None,
                  distance_px: float = 3.0, ransac_px: float = 3.0) -> PairMetrics:
    """All metrics of one method on one (already resized) pair; ``detect`` returns the candidates from
    which each metric takes its ``top_k`` (None: all of them)."""
    return evaluate_features(pair, detect(pair.image0), detect(pair.image1), top_k, distance_px, ransac_px)


def evaluate_pair_search(pair: HomographyPair, detect: Callable[[np.ndarray], Features], top_k: int | None = None,
                         quarter_turns=(0, 1, 2, 3), zooms=(1.0, 2.0, 4.0), distance_px: float = 3.0,
                         ransac_px: float = 3.0) -> PairMetrics:
    """The metrics of ``detect`` behind the test-time similarity search
    (:func:`kp2d_ros.similarity_search.search_similarity`; it sees the images only, never ``pair.H``).

    The search runs on the ``top_k`` best features of every view (what a user of the search would run);
    the candidates of the view it picks by RANSAC-homography inliers are then scored like any method's.
    """
    from kp2d_ros.similarity_search import detect_in_view, search_similarity

    res = search_similarity(lambda image: take_top_k(detect(image), top_k), pair.image0, pair.image1,
                            quarter_turns, zooms, "homography", ransac_px)
    k, z = res.quarter_turns, res.zoom
    if z >= 1.0:  # the same views as the search: image1 turned and upsampled, or image0 upsampled
        f0, f1 = detect(pair.image0), detect_in_view(detect, pair.image1, k, z)
    else:
        f0, f1 = detect_in_view(detect, pair.image0, (4 - k) % 4, 1.0 / z), detect(pair.image1)
    row = evaluate_features(pair, f0, f1, top_k, distance_px, ransac_px)
    row.view_rotation_deg, row.view_zoom = res.rotation_deg, z
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
    top_k : keypoints per image that each metric keeps, chosen by score after its own visibility filter
        (the reference protocol): repeatability and C1/C3/C5 among the keypoints visible in the other image,
        the matching score among all.
    model_path : KeyPointNet weights of the ``kp2d`` method (any trained file; the architecture is stored
        in it).
    detectors : optional extra/override detectors ``name -> detect(image) -> Features``; each returns all
        its candidates (best first is not required), the metrics take the top-k.

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
    if top_k < 1:
        raise ConfigError(f"top_k: expected a positive number of keypoints, got {top_k}")
    dets = dict(detectors or {})
    for m in methods:
        base = base_method(m)
        if base in dets:
            continue
        dets[base] = kp2d_detector(model_path, device=device) if base == "kp2d" else classical_detector(base)
    pairs = [resize_pair(p, width, height) for seq in find_sequences(root) for p in read_pairs(seq)]
    results = {}
    for m in methods:
        rows, start = [], time.perf_counter()
        for p in pairs:
            if progress is not None:
                progress(m, p)
            if m not in dets:  # only <method>-search names lack a detector of their own
                rows.append(evaluate_pair_search(p, dets[base_method(m)], top_k, search_turns, search_zooms))
            else:
                rows.append(evaluate_pair(p, dets[m], top_k))
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
