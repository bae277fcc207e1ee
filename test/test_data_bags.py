"""Bag reading and writing: round trips through rosbag2 sqlite3 / MCAP, real bags' pose topics."""
import cv2
import numpy as np
import pytest
from conftest import data_path

from kp2d_ros.data import list_topics, open_sequence, read_trajectory_topic, write_bag
from kp2d_ros.errors import DataError
from kp2d_ros.eval import metrics
from kp2d_ros.types import Camera, Frame


@pytest.fixture(scope="module")
def tum(data_dir):
    return open_sequence(data_path("vo", "tum_fr2_desk_20f"), max_frames=6)


def _grey(img):
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


@pytest.mark.parametrize("storage,encoding,compressed", [
    ("sqlite3", "rgb8", False),
    ("mcap", "rgb8", False),
    ("sqlite3", "bgr8", False),
    ("mcap", "rgb8", True),
    ("sqlite3", "mono16", False),
    ("mcap", "mono8", False),
    ("sqlite3", "bgra8", False),
])
def test_round_trip(tmp_path, tum, storage, encoding, compressed):
    out = write_bag(tmp_path / "bag", tum, storage=storage, encoding=encoding, compressed=compressed)
    topics = list_topics(out)
    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    assert topics[image_topic] == ("sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image")
    assert topics["/ground_truth/pose"] == "geometry_msgs/msg/PoseStamped"
    if storage == "mcap":
        assert list(out.glob("*.mcap"))
    else:
        assert list(out.glob("*.db3"))

    back = open_sequence(out)  # topics found automatically
    assert (back.layout, len(back)) == ("bag", len(tum))
    np.testing.assert_array_equal(back.camera.K, tum.camera.K)
    np.testing.assert_array_equal(back.camera.dist, tum.camera.dist)
    assert (back.camera.width, back.camera.height) == (640, 480)
    np.testing.assert_allclose(back.stamps, tum.stamps, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.ground_truth.stamps, tum.ground_truth.stamps, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.ground_truth.poses, tum.ground_truth.poses, atol=1e-12)
    mono = encoding in ("mono8", "mono16")
    for a, b in zip(tum, back):
        expected = _grey(a.image) if mono else a.image
        assert b.image.dtype == np.uint8
        np.testing.assert_array_equal(b.image, expected)


def test_mono16_scaling(tmp_path):
    """16-bit images are scaled to 8 bit by v / 257 (full range 65535 -> 255)."""
    from kp2d_ros.data.images import decode_image_msg

    class Msg:
        encoding, height, width, is_bigendian = "16UC1", 2, 3, 0
        step = 8  # 6 bytes of pixels + 2 bytes padding per row
        data = np.concatenate([np.array([0, 257, 65535], "<u2").view(np.uint8), [9, 9],
                               np.array([514, 1000, 30000], "<u2").view(np.uint8), [9, 9]])

    img = decode_image_msg(Msg)
    np.testing.assert_array_equal(img, [[0, 1, 255], [2, 4, 117]])


def test_topic_selection_and_errors(tmp_path, tum):
    out = write_bag(tmp_path / "bag", tum, storage="sqlite3", encoding="mono8", gt_topic="/gt/pose")
    seq = open_sequence(out, image_topic="/camera/image_raw", camera_info_topic="/camera/camera_info",
                        gt_topic="/gt/pose", max_frames=2)
    assert len(seq) == 2 and len(list(seq)) == 2 and len(seq.ground_truth) == 2
    with pytest.raises(DataError, match=r"no topic '/cam/wrong'.*/camera/image_raw"):
        open_sequence(out, image_topic="/cam/wrong")
    with pytest.raises(DataError, match="an image topic must be sensor_msgs/msg/Image"):
        open_sequence(out, image_topic="/camera/camera_info")
    with pytest.raises(DataError, match=r"no topic '/nope'"):
        open_sequence(out, gt_topic="/nope")


def test_two_image_topics_need_a_choice(tmp_path, tum):
    """Writing twice into one bag is not possible, so build a bag with two cameras by hand."""
    from rosbags.rosbag2 import Writer

    from kp2d_ros.data.bags import default_typestore
    from kp2d_ros.data.images import encode_image

    ts = default_typestore()
    T = ts.types
    with Writer(tmp_path / "two", version=8) as w:
        conns = [w.add_connection(t, "sensor_msgs/msg/Image", typestore=ts) for t in ("/left/image", "/right/image")]
        data, step = encode_image(np.zeros((4, 5), np.uint8), "mono8")
        hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="c")
        msg = T["sensor_msgs/msg/Image"](header=hdr, height=4, width=5, encoding="mono8", is_bigendian=0,
                                         step=step, data=data)
        for c in conns:
            w.write(c, 1_000_000_000, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    with pytest.raises(DataError, match="several image topics"):
        open_sequence(tmp_path / "two", camera=None)
    with pytest.raises(DataError, match="no intrinsics"):
        open_sequence(tmp_path / "two", image_topic="/left/image")


def test_frames_without_sequence_and_no_gt(tmp_path):
    cam = Camera.from_intrinsics(50, 50, 16, 12, 32, 24)
    rng = np.random.default_rng(1)
    frames = [Frame(rng.integers(0, 255, (24, 32), dtype=np.uint8), cam, 5.0 + 0.05 * i, i) for i in range(4)]
    out = write_bag(tmp_path / "b.mcap.d", frames, storage="mcap", encoding="mono8")
    assert "/ground_truth/pose" not in list_topics(out)
    seq = open_sequence(out)
    assert seq.ground_truth is None
    for a, b in zip(frames, seq):
        np.testing.assert_array_equal(a.image, b.image)
    with pytest.raises(DataError, match="exists already"):
        write_bag(out, frames)


# ---------------------------------------------------------------------------------------------
# real recorded bags (no images): pose topics of ROS 1, sqlite3 and MCAP
# ---------------------------------------------------------------------------------------------
def test_ros1_pose_topics_against_evo(data_dir):
    path = data_path("bags", "real_evo", "ROS_example.bag")
    gt = read_trajectory_topic(path, "groundtruth")
    est = read_trajectory_topic(path, "ORB-SLAM")
    assert (len(gt), len(est)) == (12765, 8362)
    assert np.all(np.diff(gt.stamps) >= 0)
    np.testing.assert_allclose(np.linalg.det(gt.poses[:, :3, :3]), 1.0, atol=1e-6)

    from evo.core import metrics as evo_metrics
    from evo.core import sync as evo_sync
    from evo.tools import file_interface
    from rosbags.rosbag1 import Reader

    with Reader(path) as reader:
        ref = file_interface.read_bag_trajectory(reader, "groundtruth")
        e = file_interface.read_bag_trajectory(reader, "ORB-SLAM")
    np.testing.assert_allclose(ref.timestamps, gt.stamps, atol=1e-9)
    np.testing.assert_allclose(ref.positions_xyz, gt.poses[:, :3, 3], atol=1e-9)
    ref, e = evo_sync.associate_trajectories(ref, e, max_diff=0.01)
    e.align(ref, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, e))
    ours = metrics.evaluate(est, gt, max_diff=0.01)
    assert ours.matched == ref.num_poses
    assert ours.ate.rmse == pytest.approx(ape.get_statistic(evo_metrics.StatisticsType.rmse), abs=1e-6)


def test_mcap_odometry_topic(data_dir):
    path = data_path("bags", "real_evo", "nav2_turtlebot.mcap")
    odom = read_trajectory_topic(path, "/odom")
    amcl = read_trajectory_topic(path, "/amcl_pose")
    assert (len(odom), len(amcl)) == (2639, 135)
    # a ground robot: odometry stays in the plane and moves
    assert np.ptp(odom.poses[:, 2, 3]) < 0.05 and metrics.path_length(odom) > 1.0
    with pytest.raises(DataError, match="several transforms"):
        read_trajectory_topic(path, "/tf")


def test_sqlite3_tf_topic(data_dir):
    path = data_path("bags", "real_evo", "tf_example_rosbag2")
    tf = read_trajectory_topic(path, "/tf")
    assert len(tf) == 517
    same = read_trajectory_topic(path / "tf_example.db3", "/tf")
    np.testing.assert_array_equal(tf.poses, same.poses)


@pytest.mark.parametrize("name", ["ROS_example.bag", "nav2_turtlebot.mcap", "tf_example_rosbag2"])
def test_real_bags_have_no_image_topic(data_dir, name):
    with pytest.raises(DataError, match="no image topic.*topics: "):
        open_sequence(data_path("bags", "real_evo", name))


def test_not_a_bag(tmp_path):
    p = tmp_path / "broken.bag"
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot open bag"):
        open_sequence(p)


def test_ros1_image_bag(tmp_path, tum):
    """ROS 1 .bag with Image (bgr8) + CameraInfo (upper-case K/D fields) + PoseStamped ground truth."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    from kp2d_ros.data.bag_writer import stamp_to_ns
    from kp2d_ros.data.images import encode_image
    from kp2d_ros.data.trajectory_io import tq_from_poses

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    frames = list(tum)[:3]
    path = tmp_path / "cam.bag"
    with Writer(path) as w:
        c_img = w.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection("/cam/info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_gt = w.add_connection("/mocap/groundtruth", "geometry_msgs/msg/PoseStamped", typestore=ts)
        for i, f in enumerate(frames):
            ns = stamp_to_ns(f.stamp)
            hdr = T["std_msgs/msg/Header"](seq=i, stamp=T["builtin_interfaces/msg/Time"](
                sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam")
            data, step = encode_image(f.image, "bgr8")
            img = T["sensor_msgs/msg/Image"](header=hdr, height=480, width=640, encoding="bgr8", is_bigendian=0,
                                             step=step, data=data)
            w.write(c_img, ns, ts.serialize_ros1(img, "sensor_msgs/msg/Image"))
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            info = T["sensor_msgs/msg/CameraInfo"](
                header=hdr, height=480, width=640, distortion_model="plumb_bob", D=tum.camera.dist,
                K=tum.camera.K.ravel(), R=np.eye(3).ravel(), P=np.zeros(12), binning_x=0, binning_y=0, roi=roi)
            w.write(c_info, ns, ts.serialize_ros1(info, "sensor_msgs/msg/CameraInfo"))
            t, q = tq_from_poses(tum.ground_truth.poses[i][None])
            pose = T["geometry_msgs/msg/PoseStamped"](header=hdr, pose=T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=t[0, 0], y=t[0, 1], z=t[0, 2]),
                orientation=T["geometry_msgs/msg/Quaternion"](x=q[0, 0], y=q[0, 1], z=q[0, 2], w=q[0, 3])))
            w.write(c_gt, ns, ts.serialize_ros1(pose, "geometry_msgs/msg/PoseStamped"))
    seq = open_sequence(path)  # image, info and ground-truth topics all found automatically
    assert len(seq) == 3
    np.testing.assert_array_equal(seq.camera.K, tum.camera.K)
    np.testing.assert_array_equal(seq.camera.dist, tum.camera.dist)
    np.testing.assert_allclose(seq.ground_truth.poses, tum.ground_truth.poses[:3], atol=1e-12)
    for a, b in zip(frames, seq):
        np.testing.assert_array_equal(a.image, b.image)
