"""Image-folder readers (KITTI, TUM RGB-D, EuRoC) on ../shared/data, and their error cases."""
import cv2
import numpy as np
import pytest
from conftest import data_path

from kp2d_ros.config import CameraConfig
from kp2d_ros.data import detect_layout, open_sequence, read_camera_yaml, read_kitti_poses, read_tum, write_camera_yaml
from kp2d_ros.data.trajectory_io import poses_from_tq
from kp2d_ros.errors import DataError
from kp2d_ros.eval.metrics import path_length
from kp2d_ros.types import Camera


def test_kitti07(data_dir):
    path = data_path("vo", "kitti07_f0000-0159")
    seq = open_sequence(path)
    assert (seq.layout, len(seq)) == ("kitti", 160)
    assert (seq.camera.width, seq.camera.height) == (1226, 370)
    assert seq.camera.K[0, 0] == pytest.approx(707.0912) and not seq.camera.has_distortion
    times = np.loadtxt(path / "times_07.txt")
    np.testing.assert_array_equal(seq.stamps, times[:160])
    gt = seq.ground_truth
    np.testing.assert_array_equal(gt.stamps, seq.stamps)
    np.testing.assert_array_equal(gt.poses, read_kitti_poses(path / "poses_07.txt")[:160])
    assert path_length(gt) == pytest.approx(91, abs=1.5)  # SOURCE.txt: 91 m
    frames = list(open_sequence(path, max_frames=3))
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].image.shape == (370, 1226) and frames[0].image.dtype == np.uint8
    expected = cv2.imread(str(path / "image_0" / "000002.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(frames[2].image, expected)


def test_kitti06_pairs_use_file_numbers(data_dir):
    path = data_path("vo", "kitti06_pairs")
    seq = open_sequence(path)
    assert len(seq) == 5
    times = np.loadtxt(path / "times_06.txt")
    ids = [1, 12, 13, 435, 436]
    np.testing.assert_array_equal(seq.stamps, times[ids])
    poses = read_kitti_poses(path / "poses_06.txt")
    np.testing.assert_array_equal(seq.ground_truth.poses, poses[ids])
    step = np.linalg.norm(seq.ground_truth.poses[2, :3, 3] - seq.ground_truth.poses[1, :3, 3])
    assert step == pytest.approx(1.19, abs=0.01)  # SOURCE.txt: pair 12-13 is 1.19 m
    assert seq.frame(3).image.shape == (370, 1226)


def test_tum_desk(data_dir):
    path = data_path("vo", "tum_fr2_desk_20f")
    seq = open_sequence(path)
    assert (seq.layout, len(seq)) == ("tum", 20)
    assert seq.camera.has_distortion and seq.camera.dist[0] == pytest.approx(0.231222)
    img = seq.frame(0).image
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    first = sorted((path / "rgb").iterdir())[0]
    np.testing.assert_array_equal(img, cv2.cvtColor(cv2.imread(str(first)), cv2.COLOR_BGR2RGB))  # RGB order
    gt = seq.ground_truth
    assert len(gt) == 20
    np.testing.assert_array_equal(gt.stamps, seq.stamps)
    raw = read_tum(path / "groundtruth.txt")
    for s, P in zip(gt.stamps, gt.poses):
        j = np.argmin(np.abs(raw.stamps - s))
        assert abs(raw.stamps[j] - s) < 1e-3  # SOURCE.txt: GT within 1 ms of every frame
        assert np.linalg.norm(raw.poses[j][:3, 3] - P[:3, 3]) < 2e-3  # interpolation stays near it


def test_euroc_static(data_dir):
    path = data_path("vo", "euroc_v101_static_19f")
    seq = open_sequence(path)
    assert (seq.layout, len(seq)) == ("euroc", 19)
    assert (seq.camera.width, seq.camera.height) == (752, 480)
    np.testing.assert_allclose(seq.camera.dist, [-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05])
    assert seq.frame(0).image.shape == (480, 752)
    assert seq.stamps[0] == pytest.approx(1403715273.262142976)
    gt = seq.ground_truth
    assert len(gt) == 19  # the vicon2gt file covers every frame
    # camera pose = T_world_body @ T_BS
    body = read_tum(path / "mav0" / "state_groundtruth_estimate0" / "V1_01_easy_groundtruth_vicon2gt_tum.txt")
    j = int(np.argmin(np.abs(body.stamps - gt.stamps[0])))
    assert abs(body.stamps[j] - gt.stamps[0]) < 1e-3
    T_BS = np.array([[0.0148655429818, -0.999880929698, 0.00414029679422, -0.0216401454975],
                     [0.999557249008, 0.0149672133247, 0.025715529948, -0.064676986768],
                     [-0.0257744366974, 0.00375618835797, 0.999660727178, 0.00981073058949],
                     [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(gt.poses[0], body.poses[j] @ T_BS, atol=1e-4)
    # static camera: < 2 mm motion over the whole excerpt (SOURCE.txt)
    assert np.linalg.norm(gt.poses[:, :3, 3] - gt.poses[0, :3, 3], axis=1).max() < 5e-3


def test_camera_yaml_round_trip(tmp_path):
    cam = Camera.from_intrinsics(500.0, 501.0, 320.5, 240.25, 640, 480, dist=[0.1, -0.2, 0.001, 0.002, 0.05])
    write_camera_yaml(cam, tmp_path / "camera.yaml")
    back = read_camera_yaml(tmp_path / "camera.yaml")
    np.testing.assert_array_equal(back.K, cam.K)
    np.testing.assert_array_equal(back.dist, cam.dist)
    assert (back.width, back.height) == (640, 480)


# ---------------------------------------------------------------------------------------------
# error cases on small hand-made folders
# ---------------------------------------------------------------------------------------------
def _tum_folder(root, n=3, with_camera=True, bad=None):
    (root / "rgb").mkdir(parents=True)
    lines = []
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"rgb/{i:03d}.png"
        if i == bad:
            (root / name).write_bytes(b"this is not a png")
        else:
            cv2.imwrite(str(root / name), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        lines.append(f"{10 + 0.1 * i:.6f} {name}")
    (root / "rgb.txt").write_text("# timestamp filename\n" + "\n".join(lines) + "\n")
    gt = "\n".join(f"{10 + 0.01 * i:.6f} {0.001 * i} 0 0 0 0 0 1" for i in range(40))
    (root / "groundtruth.txt").write_text(gt + "\n")
    if with_camera:
        write_camera_yaml(Camera.from_intrinsics(60, 60, 32, 24, 64, 48), root / "camera.yaml")
    return root


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_sequence(tmp_path / "nope")


def test_unknown_layout(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown input layout"):
        detect_layout(tmp_path)


def test_unreadable_image_during_iteration(tmp_path):
    seq = open_sequence(_tum_folder(tmp_path / "d", bad=2))
    it = iter(seq)
    next(it), next(it)
    with pytest.raises(DataError, match="cannot decode image"):
        next(it)


def test_unreadable_first_image(tmp_path):
    with pytest.raises(DataError, match="cannot decode image"):
        open_sequence(_tum_folder(tmp_path / "d", bad=0))


def test_no_intrinsics_and_config_fallback(tmp_path):
    root = _tum_folder(tmp_path / "d", with_camera=False)
    with pytest.raises(DataError, match="no intrinsics"):
        open_sequence(root)
    seq = open_sequence(root, camera=CameraConfig(fx=60.0, fy=61.0, cx=32.0, cy=24.0))
    assert seq.camera.K[1, 1] == 61.0 and (seq.camera.width, seq.camera.height) == (64, 48)
    # GT interpolated at the frame stamps: x = 0.1 * (t - 10)
    np.testing.assert_allclose(seq.ground_truth.poses[:, 0, 3], [0.0, 0.01, 0.02], atol=1e-9)


def test_topic_options_rejected_for_folders(tmp_path):
    with pytest.raises(DataError, match="only apply to bags"):
        open_sequence(_tum_folder(tmp_path / "d"), image_topic="/cam")


def test_pose_helpers_quaternion_order():
    P = poses_from_tq(np.array([[1.0, 2.0, 3.0]]), np.array([[0.0, 0.0, np.sin(0.25), np.cos(0.25)]]))[0]
    np.testing.assert_allclose(P[:2, :2], [[np.cos(0.5), -np.sin(0.5)], [np.sin(0.5), np.cos(0.5)]], atol=1e-12)
    np.testing.assert_array_equal(P[:3, 3], [1, 2, 3])


def test_euroc_partial_ground_truth(tmp_path, data_dir):
    """With only the original ASL ground truth (starts 1.04 s after the first image), the early
    frames have no ground truth and the rest do."""
    src = data_path("vo", "euroc_v101_static_19f", "mav0")
    mav = tmp_path / "V1_01" / "mav0"
    (mav / "state_groundtruth_estimate0").mkdir(parents=True)
    (mav / "cam0").symlink_to(src / "cam0", target_is_directory=True)
    name = "V1_01_easy_groundtruth_asl_tum.txt"
    (mav / "state_groundtruth_estimate0" / name).symlink_to(src / "state_groundtruth_estimate0" / name)
    seq = open_sequence(tmp_path / "V1_01")
    assert seq.name == "V1_01" and len(seq) == 19
    gt = seq.ground_truth
    assert len(gt) == 14
    np.testing.assert_array_equal(gt.stamps, seq.stamps[5:])
    assert gt.stamps[0] >= 1403715274.30214 - 0.02
