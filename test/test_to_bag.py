"""``kp2d to-bag``: a dataset folder written as a bag reads back as the same sequence (images, stamps, camera,
ground truth), so that a user can feed ``vo_node`` the dev data and score what it published."""
import numpy as np
import pytest
from test_replay_cli import _assert_clean_error, kp2d

from kp2d_ros.data import open_sequence
from kp2d_ros.data.synthetic import write_synthetic_sequence


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return write_synthetic_sequence(tmp_path_factory.mktemp("syn") / "seq", n_frames=6)


@pytest.mark.parametrize("options, offset", [([], 0.0), (["--compressed", "--storage", "sqlite3", "--stamp-offset", "100"], 100.0)])
def test_a_folder_written_as_a_bag_reads_back_the_same(tmp_path, synthetic_dir, options, offset):
    out = tmp_path / "bag"
    res = kp2d("to-bag", synthetic_dir, out, "--max-frames", 5, *options)
    assert res.returncode == 0, res.stderr
    assert "wrote 5 images" in res.stdout
    src, bag = open_sequence(synthetic_dir, max_frames=5), open_sequence(out)
    a, b = list(src), list(bag)
    assert len(b) == 5
    for fa, fb in zip(a, b):
        assert fb.image.shape == fa.image.shape and np.array_equal(fb.image, fa.image)  # raw or PNG: lossless
        assert fb.stamp == pytest.approx(fa.stamp + offset, abs=1e-6)
        assert np.allclose(fb.camera.K, fa.camera.K) and np.allclose(fb.camera.dist, fa.camera.dist)
    gt_a, gt_b = src.ground_truth, bag.ground_truth
    assert gt_b is not None and len(gt_b.stamps) == 5
    for f in a:
        i = int(np.argmin(np.abs(gt_a.stamps - f.stamp)))
        j = int(np.argmin(np.abs(gt_b.stamps - (f.stamp + offset))))
        assert abs(gt_b.stamps[j] - (f.stamp + offset)) < 1e-6
        assert np.allclose(gt_b.poses[j], gt_a.poses[i], atol=1e-9)


def test_to_bag_never_overwrites_and_rejects_bad_options(tmp_path, synthetic_dir):
    out = tmp_path / "bag"
    out.mkdir()
    _assert_clean_error(kp2d("to-bag", synthetic_dir, out), "exists already")
    _assert_clean_error(kp2d("to-bag", synthetic_dir, tmp_path / "b2", "--max-frames", 0), "--max-frames")
    _assert_clean_error(kp2d("to-bag", tmp_path / "missing", tmp_path / "b3"))
