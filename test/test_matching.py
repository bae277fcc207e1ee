"""Descriptor matching on synthetic descriptors with a known correspondence."""
import numpy as np
import pytest

from kp2d_ros.config import MatchingConfig
from kp2d_ros.errors import DataError
from kp2d_ros.matching import MatchScorer, filter_matches, hamming_distances, match_features, match_near
from kp2d_ros.types import Features


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def float_features(desc):
    n = desc.shape[0]
    return Features(np.zeros((n, 2), np.float32), desc, np.ones(n, np.float32), binary=False)


def binary_features(desc):
    n = desc.shape[0]
    return Features(np.zeros((n, 2), np.float32), desc, np.ones(n, np.float32), binary=True)


def test_mutual_nn_recovers_permutation_float():
    rng = np.random.default_rng(0)
    d0 = unit(rng.normal(size=(200, 128)))
    perm = rng.permutation(200)
    d1 = unit(d0[perm] + 0.05 * rng.normal(size=(200, 128)))  # d1[j] ~ d0[perm[j]]
    m = match_features(float_features(d0), float_features(d1), MatchingConfig())
    assert len(m) == 200
    np.testing.assert_array_equal(perm[m.idx1], m.idx0)
    assert m.idx0.dtype == np.int64 and m.distances.dtype == np.float32 and m.scores.dtype == np.float32
    assert np.all((m.scores >= 0) & (m.scores <= 1))
    np.testing.assert_allclose(m.scores, 1 - m.distances / 2, atol=1e-6)
    assert np.all(np.diff(m.scores) <= 0)  # sorted best first


def test_mutual_check_drops_one_sided_matches():
    # two reference descriptors both closest to the same current one: only the closer survives
    d0 = unit(np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]))
    d1 = unit(np.array([[1.0, 0.02, 0.0], [0.0, 0.1, 1.0]]))
    m = match_features(float_features(d0), float_features(d1), MatchingConfig(mutual=True))
    assert sorted(zip(m.idx0.tolist(), m.idx1.tolist())) == [(0, 0), (2, 1)]
    m = match_features(float_features(d0), float_features(d1), MatchingConfig(mutual=False))
    assert len(m) == 3


@pytest.mark.parametrize("binary", [False, True])
def test_a_guided_search_matches_near_the_prediction_and_nowhere_else(binary):
    """:func:`match_near`: each keypoint takes the nearest descriptor among the keypoints within the radius of where it
    is predicted; a twin of its descriptor farther away is not a candidate, a keypoint without a prediction is not
    searched, and two keypoints that want the same one leave it to the nearer descriptor."""
    rng = np.random.default_rng(3)
    n = 60
    if binary:
        d0 = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
        d1 = d0.copy()
        d1[:, 0] ^= 1  # one bit off
    else:
        d0 = unit(rng.normal(size=(n, 64)))
        d1 = unit(d0 + 0.05 * rng.normal(size=(n, 64)))
    make = binary_features if binary else float_features
    p1 = rng.uniform(0, 600, size=(n, 2))
    perm = rng.permutation(n)  # keypoint j of f1 is keypoint perm[j] of f0
    f0, f1 = make(d0), make(d1[perm])
    pts1 = p1[perm]
    predicted = p1 + rng.normal(scale=1.0, size=(n, 2))
    predicted[5] = np.nan  # not searched
    predicted[7] += 40.0  # predicted far from its keypoint
    # a twin of keypoint 9's descriptor 100 px from its prediction
    f1 = make(np.concatenate([f1.descriptors, d0[9:10]]))
    pts1 = np.concatenate([pts1, predicted[9:10] + [100.0, 0.0]])
    m = match_near(f0, f1, predicted, pts1, 6.0, MatchingConfig())
    truth = {int(perm[j]): j for j in range(n)}
    pairs = dict(zip(m.idx0.tolist(), m.idx1.tolist()))
    assert 5 not in pairs and 7 not in pairs
    assert pairs[9] == truth[9]
    assert all(pairs[i] == truth[i] for i in pairs)
    assert len(pairs) >= n - 2 - 3  # at most a few lost where two predictions share their candidates
    assert np.all(np.diff(m.scores) <= 0)
    # two keypoints predicted at the same place: the one whose descriptor is nearer keeps it
    twin = predicted.copy()
    twin[11] = pts1[truth[10]]
    m = match_near(f0, f1, twin, pts1, 6.0, MatchingConfig())
    pairs = dict(zip(m.idx0.tolist(), m.idx1.tolist()))
    assert pairs.get(10) == truth[10] and pairs.get(11, -1) != truth[10]
    assert len(match_near(f0, f1, np.full((n, 2), np.nan), pts1, 6.0, MatchingConfig())) == 0


def test_ratio_test_drops_ambiguous():
    rng = np.random.default_rng(1)
    d0 = unit(rng.normal(size=(100, 64)))
    d1 = unit(d0 + 0.05 * rng.normal(size=(100, 64)))
    # make current descriptors 0..9 ambiguous: a near-duplicate of each is added
    dup = unit(d1[:10] + 0.01 * rng.normal(size=(10, 64)))
    d1 = np.concatenate([d1, dup])
    no_ratio = match_features(float_features(d0), float_features(d1), MatchingConfig(ratio=0.0))
    with_ratio = match_features(float_features(d0), float_features(d1), MatchingConfig(ratio=0.8))
    assert set(range(10)) <= set(no_ratio.idx0.tolist())
    assert not set(range(10)) & set(with_ratio.idx0.tolist())
    assert set(range(10, 100)) == set(with_ratio.idx0.tolist())


def test_binary_hamming_matching():
    rng = np.random.default_rng(2)
    d0 = rng.integers(0, 256, size=(150, 32), dtype=np.uint8)
    perm = rng.permutation(150)
    bits = np.unpackbits(d0[perm], axis=1)
    flips = np.zeros_like(bits)
    n_flip = rng.integers(0, 20, size=150)
    for i, k in enumerate(n_flip):
        flips[i, rng.choice(256, k, replace=False)] = 1
    d1 = np.packbits(bits ^ flips, axis=1)
    m = match_features(binary_features(d0), binary_features(d1), MatchingConfig())
    assert len(m) == 150
    np.testing.assert_array_equal(perm[m.idx1], m.idx0)
    np.testing.assert_array_equal(m.distances, n_flip[m.idx1].astype(np.float32))
    np.testing.assert_allclose(m.scores, 1 - m.distances / 256)
    # max distance (in bits)
    m = match_features(binary_features(d0), binary_features(d1), MatchingConfig(max_distance=10))
    assert np.all(m.distances <= 10) and len(m) == int(np.sum(n_flip <= 10))


def test_hamming_distances_match_bit_count():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(5, 32), dtype=np.uint8)
    b = rng.integers(0, 256, size=(7, 32), dtype=np.uint8)
    ref = np.array([[np.unpackbits(x ^ y).sum() for y in b] for x in a])
    np.testing.assert_array_equal(hamming_distances(a, b), ref)


def test_empty_and_incompatible():
    f = float_features(unit(np.ones((3, 8))))
    assert len(match_features(f, Features.empty(dim=8), MatchingConfig())) == 0
    with pytest.raises(DataError):
        match_features(f, binary_features(np.zeros((3, 1), np.uint8)), MatchingConfig())


class _ByDistance(MatchScorer):
    name = "by-distance"

    def score(self, kp0, kp1, distances, image_size):
        return np.exp(-distances)


def test_filter_matches_drops_and_orders():
    rng = np.random.default_rng(4)
    d0 = unit(rng.normal(size=(50, 32)))
    d1 = unit(d0 + 0.1 * rng.normal(size=(50, 32)))
    m = match_features(float_features(d0), float_features(d1), MatchingConfig())
    probs = rng.uniform(size=len(m)).astype(np.float32)
    f = filter_matches(m, probs, 0.5)
    assert len(f) == int(np.sum(probs >= 0.5))
    assert np.all(f.scores >= 0.5) and np.all(np.diff(f.scores) <= 0)
    # the kept matches keep their index pairs
    pairs = dict(zip(m.idx0.tolist(), m.idx1.tolist()))
    assert all(pairs[a] == b for a, b in zip(f.idx0.tolist(), f.idx1.tolist()))
    with pytest.raises(DataError):
        filter_matches(m, probs[:-1], 0.5)
    s = _ByDistance().score(None, None, m.distances, (640, 480))
    assert filter_matches(m, s, 0.0).idx0.tolist() == m.idx0[np.argsort(-s, kind="stable")].tolist()


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize("mutual,ratio,max_q", [(True, 0.0, 0), (False, 0.0, 0), (True, 0.9, 0), (False, 0.8, 0),
                                                 (True, 0.0, 40)])
def test_float_matching_equals_the_full_distance_matrix(unit, mutual, ratio, max_q, engine, monkeypatch):
    """The float path never builds the (N0, N1) distance matrix; it must pick the same pairs, with the same
    distances, as arg-mins over :func:`l2_distances` (unit-norm learned and unnormalised SIFT-like vectors), whether
    its similarities come from numpy or, with torch loaded (a learned frontend), from torch."""
    import sys

    from kp2d_ros.matching import l2_distances

    if engine == "torch":
        pytest.importorskip("torch")
    else:
        monkeypatch.delitem(sys.modules, "torch", raising=False)

    rng = np.random.default_rng(3)
    d0 = rng.normal(size=(300, 64)).astype(np.float32)
    d1 = np.concatenate([d0[:150] + 0.3 * rng.normal(size=(150, 64)), rng.normal(size=(120, 64))]).astype(np.float32)
    if unit:
        d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
        d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    else:
        d0, d1 = np.abs(40 * d0), np.abs(40 * d1)
    f0 = Features(np.zeros((300, 2), np.float32), d0, np.ones(300, np.float32))
    f1 = Features(np.zeros((270, 2), np.float32), d1, np.ones(270, np.float32))
    dist = l2_distances(d0, d1)
    max_distance = float(np.percentile(dist.min(1), max_q)) if max_q else 0.0  # 0 = off
    m = match_features(f0, f1, MatchingConfig(mutual=mutual, ratio=ratio, max_distance=max_distance, device="cpu"))
    rows = np.arange(300)
    nn01 = dist.argmin(1)
    best = dist[rows, nn01]
    keep = np.ones(300, bool)
    if mutual:
        keep &= dist.argmin(0)[nn01] == rows
    if ratio:
        keep &= best < ratio * np.partition(dist, 1, axis=1)[:, 1]
    if max_distance:
        keep &= best <= max_distance
    expected = dict(zip(zip(rows[keep].tolist(), nn01[keep].tolist()), best[keep].tolist()))
    got = dict(zip(zip(m.idx0.tolist(), m.idx1.tolist()), m.distances.tolist()))
    assert len(expected) > 20 and set(got) == set(expected)
    # both sides expand |a|^2 + |b|^2 - 2 a.b in float32, whose cancellation grows with the norms (the x40 descriptors
    # differ by up to 8 float32 steps between CPUs' matrix-product kernels: AVX2 against AVX-512)
    norm = float(np.sqrt(max((d0 * d0).sum(1).max(), (d1 * d1).sum(1).max())))
    assert max(abs(got[k] - expected[k]) for k in expected) < 1e-5 * max(1.0, norm)
