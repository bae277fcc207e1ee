"""Descriptor matching (mutual nearest neighbour, ratio test) and the learned-filtering hook.

Matches come out sorted by descending score, so a guided sampler (PROSAC) can use their order.
"""
from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from kp2d_ros.config import MatchingConfig
from kp2d_ros.errors import DataError
from kp2d_ros.types import Features, Matches


def _empty_matches() -> Matches:
    return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))


def hamming_distances(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of packed binary descriptors.

    Parameters
    ----------
    d0 : (N0, B) uint8, d1 : (N1, B) uint8 (B bytes = 8 B bits).

    Returns
    -------
    (N0, N1) float32 number of differing bits.
    """
    b0 = np.unpackbits(d0, axis=1).astype(np.float32)
    b1 = np.unpackbits(d1, axis=1).astype(np.float32)
    return b0.sum(1, keepdims=True) + b1.sum(1)[None, :] - 2.0 * (b0 @ b1.T)


def l2_distances(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances (N0, N1) float32 of (N0, D) and (N1, D) float descriptors."""
    d0 = d0.astype(np.float32, copy=False)
    d1 = d1.astype(np.float32, copy=False)
    sq = (d0 * d0).sum(1, keepdims=True) + (d1 * d1).sum(1)[None, :] - 2.0 * (d0 @ d1.T)
    return np.sqrt(np.maximum(sq, 0.0))


def descriptor_distances(f0: Features, f1: Features) -> tuple[np.ndarray, float]:
    """Pairwise distance matrix and the largest possible distance (for score normalisation).

    Returns
    -------
    dist : (N0, N1) float32; Hamming bits for binary descriptors, L2 otherwise.
    max_dist : bits per descriptor (binary) or 2 (unit-norm float descriptors).

    Raises
    ------
    DataError
        the two sets have different descriptor kinds or sizes.
    """
    _check_compatible(f0, f1)
    distances = hamming_distances if f0.binary else l2_distances
    return distances(f0.descriptors, f1.descriptors), _max_distance(f0)


def _max_distance(f: Features) -> float:
    """The largest possible descriptor distance: bits per descriptor (binary) or 2 (unit-norm float descriptors)."""
    return 8.0 * f.descriptors.shape[1] if f.binary else 2.0


def _match_scores(d: np.ndarray, max_dist: float) -> np.ndarray:
    """Match scores ``1 - distance / max_dist`` in [0, 1], float32."""
    return np.clip(1.0 - d / max_dist, 0.0, 1.0).astype(np.float32)


def _check_compatible(f0: Features, f1: Features) -> None:
    """Raise DataError unless both sets have the same descriptor kind and size."""
    if f0.binary != f1.binary or f0.descriptors.shape[1] != f1.descriptors.shape[1]:
        raise DataError(f"matching: incompatible descriptors {f0.descriptors.shape}/{f0.binary} "
                        f"and {f1.descriptors.shape}/{f1.binary}")


def mutual_nearest(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-checked nearest neighbours of a (N0, N1) distance matrix -> (idx0, idx1), ascending idx0."""
    if dist.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    nn01, nn10 = dist.argmin(axis=1), dist.argmin(axis=0)
    idx0 = np.nonzero(nn10[nn01] == np.arange(len(nn01)))[0]
    return idx0, nn01[idx0]


def match_features(f0: Features, f1: Features, cfg: MatchingConfig) -> Matches:
    """Nearest-neighbour matching from ``f0`` (reference) to ``f1`` (current).

    Parameters
    ----------
    f0, f1 : feature sets with N0 and N1 keypoints.
    cfg : ``mutual`` keeps only mutual nearest neighbours; ``ratio`` > 0 applies Lowe's ratio test
        (best / second-best distance < ratio); ``max_distance`` > 0 drops matches farther than it.

    Returns
    -------
    Matches with M <= min(N0, N1) entries sorted by descending score, where
    ``scores = 1 - distance / max_distance_possible`` (in [0, 1]).
    """
    if len(f0) == 0 or len(f1) == 0:
        return _empty_matches()
    device = torch_matching_device(cfg.device, f0, f1)
    if device is not None:
        return match_features_torch(f0, f1, cfg, device)
    if f0.binary or f1.binary:
        dist, max_dist = descriptor_distances(f0, f1)
        n0, n1 = dist.shape
        rows = np.arange(n0)
        nn01 = np.argmin(dist, axis=1)
        best = dist[rows, nn01]
        keep = np.ones(n0, bool)
        if cfg.mutual:
            nn10 = np.argmin(dist, axis=0)
            keep &= nn10[nn01] == rows
        if cfg.ratio > 0 and n1 >= 2:
            second = np.partition(dist, 1, axis=1)[:, 1]
            keep &= best < cfg.ratio * second
    else:
        rows, nn01, best, keep, second = _float_nearest(f0, f1, cfg.mutual, cfg.ratio > 0)
        max_dist = _max_distance(f0)
        if second is not None:
            keep &= best < cfg.ratio * second
    if cfg.max_distance > 0:
        keep &= best <= cfg.max_distance
    idx0 = rows[keep].astype(np.int64)
    idx1 = nn01[keep].astype(np.int64)
    d = best[keep].astype(np.float32)
    order = np.argsort(d, kind="stable")
    idx0, idx1, d = idx0[order], idx1[order], d[order]
    return Matches(idx0=idx0, idx1=idx1, distances=d, scores=_match_scores(d, max_dist))


def match_near(f0: Features, f1: Features, predicted: np.ndarray, points1: np.ndarray, radius: float,
               cfg: MatchingConfig) -> Matches:
    """Matches of ``f0``'s keypoints to those of ``f1`` near where a known motion puts them (a projection-guided search).

    Parameters
    ----------
    f0, f1 : feature sets with N0 and N1 keypoints.
    predicted : (N0, 2) where each keypoint of ``f0`` is predicted in ``f1``'s view (NaN: not searched).
    points1 : (N1, 2) ``f1``'s keypoints in the same units as ``predicted``.
    radius : search radius, in those units.
    cfg : ``max_distance`` > 0 drops matches farther than it in descriptor space.

    Returns
    -------
    Matches sorted by descending score (as :func:`match_features`): each keypoint of ``f0`` takes the nearest
    descriptor among ``f1``'s keypoints within ``radius`` of its prediction, kept when it is also the nearest of every
    ``f0`` keypoint that has that ``f1`` keypoint among its candidates (mutual within the search).
    """
    searched = np.flatnonzero(np.isfinite(predicted).all(axis=1))
    if searched.size == 0 or len(f1) == 0:
        return _empty_matches()
    _check_compatible(f0, f1)
    near = cKDTree(np.asarray(points1, float)).query_ball_point(predicted[searched], radius)
    counts = np.fromiter(map(len, near), np.int64, len(near))
    if counts.sum() == 0:
        return _empty_matches()
    i0 = np.repeat(searched, counts)
    i1 = np.concatenate([np.asarray(c, np.int64) for c in near if c])
    a, b = f0.descriptors[i0], f1.descriptors[i1]
    if f0.binary:
        d = np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(1).astype(np.float32)
    else:
        d = np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=1)
    order = np.argsort(d, kind="stable")
    i0, i1, d = i0[order], i1[order], d[order]
    first0 = np.zeros(d.size, bool)
    first0[np.unique(i0, return_index=True)[1]] = True
    first1 = np.zeros(d.size, bool)
    first1[np.unique(i1, return_index=True)[1]] = True
    keep = first0 & first1
    if cfg.max_distance > 0:
        keep &= d <= cfg.max_distance
    i0, i1, d = i0[keep], i1[keep], d[keep].astype(np.float32)
    return Matches(idx0=i0, idx1=i1, distances=d, scores=_match_scores(d, _max_distance(f0)))


def _float_nearest(f0: Features, f1: Features, mutual: bool, want_second: bool):
    """Nearest neighbours of float descriptors without the full (N0, N1) distance matrix.

    ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``: the nearest b of each a maximises ``a.b - |b|^2 / 2``, the
    nearest a of each b maximises ``a.b - |a|^2 / 2`` (for unit-norm descriptors both are the plain
    similarity). Only one matrix product, a row arg-max and a column *max* (numpy's column arg-max is
    ~10x slower than its max) are full-size; distances are computed for the picked pairs only, with the
    formula of :func:`l2_distances`.

    Returns
    -------
    rows (N0,), nn01 (N0,) nearest index in ``f1``, best (N0,) float32 distance to it, keep (N0,) bool
    (mutual check when ``mutual``), second (N0,) distance to the second nearest or None.
    """
    d0 = f0.descriptors.astype(np.float32, copy=False)
    d1 = f1.descriptors.astype(np.float32, copy=False)
    if d0.shape[1] != d1.shape[1]:
        raise DataError(f"matching: incompatible descriptors {d0.shape} and {d1.shape}")
    n0, n1 = len(d0), len(d1)
    sq0, sq1 = (d0 * d0).sum(1), (d1 * d1).sum(1)
    unit = bool(np.all(np.abs(sq0 - 1.0) < 1e-3) and np.all(np.abs(sq1 - 1.0) < 1e-3))
    sim = _similarity(d0, d1)
    row_score = sim if unit else sim - 0.5 * sq1[None, :]
    rows = np.arange(n0)
    nn01 = np.argmax(row_score, axis=1)
    keep = np.ones(n0, bool)
    if mutual:
        col_score = sim if unit else sim - 0.5 * sq0[:, None]
        col_best = col_score.max(axis=0)
        keep &= col_score[rows, nn01] >= col_best[nn01]
        # a tie in a column: keep the first row, as an arg-max would
        cand = np.nonzero(keep)[0]
        _, first = np.unique(nn01[cand], return_index=True)
        keep[:] = False
        keep[cand[first]] = True

    def dist(i, j):
        return np.sqrt(np.maximum(sq0[i] + sq1[j] - 2.0 * sim[i, j], 0.0)).astype(np.float32)

    best = dist(rows, nn01)
    second = None
    if want_second and n1 >= 2:
        j2 = np.argpartition(-row_score, 1, axis=1)[:, :2]
        # the one of the top two that is not nn01
        other = np.where(j2[:, 0] == nn01, j2[:, 1], j2[:, 0])
        second = dist(rows, other)
    return rows, nn01, best, keep, second


def _similarity(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """``d0 @ d1.T`` (N0, N1) float32, by torch where it is loaded already (a learned frontend), else by numpy. numpy's
    BLAS is held to ``pipeline.library_threads`` (1 in the learned default: its spinning workers stole the network's
    cores); torch's matrix product runs on the network's own ``pipeline.torch_threads``. 2000 x 2000 x 256 on the
    2-core Xeon of stop 30: 19.6 ms with numpy and one BLAS thread, 8.3 ms with torch's two (15.4 ms with one); the
    ``matching`` stage of ``kp2d bench`` at 1226x370 fell from 17-24 to 11-15 ms. A classical pipeline does not load
    torch for it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return d0 @ d1.T
    with torch.inference_mode():
        return (torch.as_tensor(d0) @ torch.as_tensor(d1).T).numpy()


@lru_cache(maxsize=None)
def _resolve_device(name: str):
    from kp2d_ros.networks.kp2d_frontend import select_device  # torch only for learned matching

    return select_device(name, key="matching.device")


def torch_matching_device(name: str, f0: Features, f1: Features):
    """The torch device for mutual-NN matching of float descriptors, or None for the numpy path.

    Binary descriptors and ``matching.device: cpu`` use numpy; ``auto``/``cuda`` use torch on CUDA
    when it is available (``cuda`` without CUDA logs one line and stays on numpy/CPU).
    """
    if f0.binary or f1.binary or name == "cpu":
        return None
    device = _resolve_device(name)
    return device if device.type != "cpu" else None


def match_features_torch(f0: Features, f1: Features, cfg: MatchingConfig, device) -> Matches:
    """:func:`match_features` for unit-norm float descriptors, computed with torch on ``device``.

    Same rules and output as the numpy path (distances from the similarity matrix:
    ``|a - b| = sqrt(2 - 2 a.b)`` for unit vectors).
    """
    import torch

    _check_compatible(f0, f1)
    d0 = torch.as_tensor(f0.descriptors, dtype=torch.float32).to(device, non_blocking=True)
    d1 = torch.as_tensor(f1.descriptors, dtype=torch.float32).to(device, non_blocking=True)
    with torch.inference_mode():
        sim = d0 @ d1.T
        best_sim, nn01 = sim.max(dim=1)
        keep = torch.ones_like(nn01, dtype=torch.bool)
        rows = torch.arange(len(nn01), device=device)
        if cfg.mutual:
            keep &= sim.argmax(dim=0)[nn01] == rows
        best = torch.sqrt((2.0 - 2.0 * best_sim).clamp(min=0.0))
        if cfg.ratio > 0 and sim.shape[1] >= 2:
            second = torch.sqrt((2.0 - 2.0 * sim.topk(2, dim=1).values[:, 1]).clamp(min=0.0))
            keep &= best < cfg.ratio * second
        if cfg.max_distance > 0:
            keep &= best <= cfg.max_distance
        idx0, idx1, d = rows[keep], nn01[keep], best[keep]
        order = torch.argsort(d, stable=True)
        idx0, idx1, d = (x[order].cpu().numpy() for x in (idx0, idx1, d))
    return Matches(idx0=idx0.astype(np.int64), idx1=idx1.astype(np.int64), distances=d.astype(np.float32),
                   scores=_match_scores(d, _max_distance(f0)))


class MatchScorer:
    """Interface of a learned match filter (IO-Net): inlier probability of each putative match."""

    name: str = "base"

    def score(self, kp0: np.ndarray, kp1: np.ndarray, distances: np.ndarray,
              image_size: tuple[int, int]) -> np.ndarray:  # pragma: no cover - interface
        """Inlier probabilities of M matches.

        Parameters
        ----------
        kp0, kp1 : (M, 2) float32 matched keypoints in pixels (reference, current).
        distances : (M,) float32 descriptor distances.
        image_size : (width, height) of the images, for coordinate normalisation.

        Returns
        -------
        (M,) float32 probabilities in [0, 1].
        """
        raise NotImplementedError


def filter_matches(matches: Matches, scores: np.ndarray, threshold: float) -> Matches:
    """Replace match scores, drop those below ``threshold`` and sort by descending score.

    Parameters
    ----------
    matches : M matches.
    scores : (M,) new scores (e.g. inlier probabilities from a :class:`MatchScorer`).
    threshold : keep matches with ``score >= threshold``.

    Returns
    -------
    Matches with K <= M entries, ordered best first (for a PROSAC-ordered sampler).
    """
    scores = np.asarray(scores, np.float32).ravel()
    if scores.shape[0] != len(matches):
        raise DataError(f"filter_matches: {scores.shape[0]} scores for {len(matches)} matches")
    m = Matches(matches.idx0, matches.idx1, matches.distances, scores)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return m.subset(keep)
