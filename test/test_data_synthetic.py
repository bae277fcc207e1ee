"""The synthetic sequence: deterministic, geometrically consistent, readable by open_sequence."""
import numpy as np
import pytest

from kp2d_ros.data import open_sequence
from kp2d_ros.data.synthetic import (render, synthetic_camera, synthetic_matches, synthetic_sequence,
                                     synthetic_trajectory, write_synthetic_sequence)
from kp2d_ros.eval.metrics import path_length


def test_trajectory_shape():
    gt = synthetic_trajectory(80)
    np.testing.assert_allclose(gt.poses[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.diff(gt.stamps), 0.1)
    assert path_length(gt) == pytest.approx(80 * 0.2, rel=0.02)
    yaw = np.degrees(np.arctan2(gt.poses[-1, 0, 2], gt.poses[-1, 2, 2]))
    assert yaw == pytest.approx(25.0, abs=0.5)  # a right turn: heading towards +x
    assert gt.poses[-1, 0, 3] > 2.0 and gt.poses[-1, 2, 3] > 10.0


def test_render_is_deterministic_and_textured():
    cam = synthetic_camera(160, 120)
    T = synthetic_trajectory(10).poses[3]
    a = render(T, cam, noise_seed=1)
    b = render(T, cam, noise_seed=1)
    c = render(T, cam, noise_seed=2)
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)  # the seed drives the pixel noise
    assert a.std() > 20  # not a blank image


def test_render_matches_projective_geometry():
    """A pure rotation about the optical centre maps the image by the homography K R K^-1."""
    import cv2

    cam = synthetic_camera(320, 240)
    T0 = np.eye(4)
    T0[:3, 3] = [0.0, 0.0, 2.0]
    T1 = T0.copy()
    ang = np.radians(3.0)
    T1[:3, :3] = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    im0 = render(T0, cam, noise_seed=None).astype(np.float32)
    im1 = render(T1, cam, noise_seed=None).astype(np.float32)
    # pixel of camera 1 -> camera 0: x0 ~ K R_01 K^-1 x1 with R_01 = R_w0^T R_w1
    H = cam.K @ (T0[:3, :3].T @ T1[:3, :3]) @ np.linalg.inv(cam.K)
    warped = cv2.warpPerspective(im0, H, (320, 240), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    valid = cv2.warpPerspective(np.ones((240, 320), np.float32), H, (320, 240),
                                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    err_rot = np.abs(warped - im1)[valid].mean()
    err_none = np.abs(im0 - im1)[valid].mean()
    assert err_rot < 0.35 * err_none


def test_written_folder_reads_back(tmp_path):
    out = write_synthetic_sequence(tmp_path / "syn", n_frames=4, seed=3, width=160, height=120)
    assert synthetic_matches(out, n_frames=4, seed=3, width=160, height=120)
    assert not synthetic_matches(out, n_frames=4, seed=4, width=160, height=120)
    seq = open_sequence(out)
    mem = synthetic_sequence(4, seed=3, width=160, height=120)
    assert (seq.layout, len(seq)) == ("synthetic", 4)
    np.testing.assert_allclose(seq.camera.K, mem.camera.K)
    np.testing.assert_allclose(seq.stamps, mem.stamps, atol=1e-6)
    np.testing.assert_allclose(seq.ground_truth.poses, mem.ground_truth.poses, atol=1e-8)
    for a, b in zip(seq, mem):
        np.testing.assert_array_equal(a.image, b.image)  # PNG is lossless


def test_slow_street_follows_the_same_path():
    fast, slow = synthetic_trajectory(80), synthetic_trajectory(317, speed=0.05)
    np.testing.assert_allclose(np.diff(slow.stamps), 0.1)  # still 10 Hz: 0.5 m/s instead of 2 m/s
    assert path_length(slow) == pytest.approx(316 * 0.05, rel=0.01)
    # frame 4k of the slow camera is where frame k of the fast one is (the turn happens at the same place)
    np.testing.assert_allclose(slow.poses[::4, :3, :3], fast.poses[:, :3, :3], atol=1e-9)
    np.testing.assert_allclose(slow.poses[::4, :3, 3], fast.poses[:, :3, 3], atol=0.1)


def test_a_robot_on_rough_ground_shakes_about_its_path_frame_by_frame():
    """``robot_trajectory``'s shake: the nominal path's centres lifted or lowered only (the optical y axis), the
    attitudes tilted about the camera's x and z axes by the given standard deviation, independently per frame,
    the first frame untouched; without shake the path is the nominal one, bit for bit."""
    from scipy.spatial.transform import Rotation

    from kp2d_ros.data.synthetic import robot_trajectory

    steps = [(300, 0.2, 0, 0), (100, 0.2, 0, 1)]
    plain = robot_trajectory(steps)
    np.testing.assert_array_equal(robot_trajectory(steps, 0.0, 0.0, seed=5).poses, plain.poses)
    shaky = robot_trajectory(steps, shake_deg=1.0, shake_m=0.01, seed=5)
    np.testing.assert_array_equal(shaky.poses[0], plain.poses[0])
    np.testing.assert_array_equal(shaky.stamps, plain.stamps)
    d = shaky.poses[:, :3, 3] - plain.poses[:, :3, 3]
    np.testing.assert_array_equal(d[:, [0, 2]], 0.0)
    assert 0.008 < np.std(d[1:, 1]) < 0.012
    tilt = Rotation.from_matrix(np.einsum("nji,njk->nik", plain.poses[1:, :3, :3], shaky.poses[1:, :3, :3]))
    pitch, yaw, roll = tilt.as_euler("XYZ", degrees=True).T
    assert np.abs(yaw).max() < 0.05  # no turn: only pitch and roll (to first order)
    assert 0.9 < np.std(pitch) < 1.1 and 0.9 < np.std(roll) < 1.1
    assert abs(np.corrcoef(pitch[:-1], pitch[1:])[0, 1]) < 0.15  # frame to frame independent
    assert not np.array_equal(shaky.poses, robot_trajectory(steps, 1.0, 0.01, seed=6).poses)
