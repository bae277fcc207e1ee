"""Image-folder datasets: KITTI odometry, TUM RGB-D and EuRoC MAV layouts."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kp2d_ros.config import CameraConfig
from kp2d_ros.data.camera_info import distortion_model
from kp2d_ros.data.camera_yaml import load_yaml, read_camera_yaml
from kp2d_ros.data.images import load_image
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.data.trajectory_io import (poses_from_tq, read_kitti_poses, read_kitti_times, read_tum,
                                         resample)
from kp2d_ros.errors import DataError
from kp2d_ros.types import Camera, Trajectory

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff")
KITTI_IMAGE_DIRS = ("image_0", "image_2", "image_1", "image_3")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def resolve_camera(from_files: Camera | None, fallback: CameraConfig | None, first_image: np.ndarray,
                   source: str) -> Camera:
    """Intrinsics from the dataset files, else from the config's ``camera`` section, else raise.

    Width/height missing from the files are taken from ``first_image``; a calibration of another
    size is scaled to it (:meth:`Camera.scaled_to`, as the node does with a CameraInfo).
    """
    h, w = first_image.shape[:2]
    if from_files is not None:
        if not from_files.width or not from_files.height:
            return dataclasses.replace(from_files, width=w, height=h)
        return from_files.scaled_to(w, h)
    if fallback is not None and fallback.is_set:
        return Camera.from_intrinsics(fallback.fx, fallback.fy, fallback.cx, fallback.cy, w, h,
                                      dist=fallback.distortion, model=fallback.distortion_model)
    raise DataError(f"{source}: no intrinsics found (no camera.yaml / calib.txt / CameraInfo); "
                    "set camera.fx, camera.fy, camera.cx, camera.cy in the config")


def _rectified(camera: CameraConfig | None) -> bool:
    return camera is not None and camera.rectified


def _folder_sequence(name: str, layout: str, files: list[Path], stamps: np.ndarray, camera_files: Camera | None,
                     camera_cfg: CameraConfig | None, gt: Trajectory | None, source: str) -> Sequence:
    if not files:
        raise DataError(f"{source}: no images found")
    first = load_image(files[0])
    camera = resolve_camera(camera_files, camera_cfg, first, source)

    def images():
        for f in files:
            yield load_image(f)

    return Sequence(name, layout, camera, stamps, images, ground_truth=gt, loader=lambda i: load_image(files[i]))


# --------------------------------------------------------------------------------------------
# KITTI odometry
# --------------------------------------------------------------------------------------------
def is_kitti(path: Path) -> bool:
    return any((path / d).is_dir() for d in KITTI_IMAGE_DIRS) and (
        any(path.glob("times*.txt")) or any(path.glob("poses*.txt")) or (path / "calib.txt").is_file()
        or (path / "camera.yaml").is_file())


def _kitti_calib(path: Path, cam: int) -> np.ndarray | None:
    """3x4 projection matrix P<cam> of calib.txt, or None."""
    f = path / "calib.txt"
    if not f.is_file():
        return None
    for line in f.read_text().splitlines():
        if line.startswith(f"P{cam}:"):
            vals = np.array([float(v) for v in line.split()[1:13]])
            return vals.reshape(3, 4)
    return None


def read_kitti(path: Path, *, max_frames: int | None = None, camera: CameraConfig | None = None) -> Sequence:
    """KITTI odometry folder: ``image_0/NNNNNN.png`` (or image_2..3), ``times*.txt``,
    ``poses*.txt`` (3x4 T_world_cam0 per frame, row = frame number), ``camera.yaml`` or ``calib.txt``.

    Frame numbers come from the file names, so non-consecutive excerpts index times and poses
    correctly. For image_1..3 the ground truth is shifted by the rectified baseline of calib.txt.
    """
    img_dir = next(path / d for d in KITTI_IMAGE_DIRS if (path / d).is_dir())
    cam_idx = int(img_dir.name[-1])
    files = _image_files(img_dir)
    if max_frames is not None:
        files = files[:max_frames]
    try:
        ids = np.array([int(f.stem) for f in files], dtype=np.int64)
    except ValueError:
        raise DataError(f"{img_dir}: KITTI image names must be frame numbers (000000.png)") from None
    times_files = sorted(path.glob("times*.txt"))
    if times_files:
        times = read_kitti_times(times_files[0])
        if ids.size and ids.max() >= times.shape[0]:
            raise DataError(f"{times_files[0]}: has {times.shape[0]} rows, frame {ids.max()} needs more")
        stamps = times[ids]
    else:
        stamps = ids * 0.1  # KITTI records at 10 Hz

    P = _kitti_calib(path, cam_idx)
    if (path / "camera.yaml").is_file():
        cam_files = read_camera_yaml(path / "camera.yaml", rectified=_rectified(camera))
    elif P is not None:
        cam_files = Camera.from_intrinsics(P[0, 0], P[1, 1], P[0, 2], P[1, 2], 0, 0)
    else:
        cam_files = None

    gt = None
    pose_files = sorted(path.glob("poses*.txt"))
    if pose_files:
        poses = read_kitti_poses(pose_files[0])
        ok = ids < poses.shape[0]
        gt_poses = poses[ids[ok]]
        if cam_idx != 0 and P is not None:
            # rectified P_i = K [I | t_i]: camera i centre sits at -t_i in cam0 coordinates
            T_cam0_cami = np.eye(4)
            T_cam0_cami[:3, 3] = -np.linalg.solve(P[:, :3], P[:, 3])
            gt_poses = gt_poses @ T_cam0_cami
        gt = Trajectory(stamps=stamps[ok].copy(), poses=gt_poses)
    return _folder_sequence(path.name, "kitti", files, stamps, cam_files, camera, gt, str(path))


# --------------------------------------------------------------------------------------------
# TUM RGB-D
# --------------------------------------------------------------------------------------------
def is_tum(path: Path) -> bool:
    return (path / "rgb.txt").is_file()


def read_tum_rgbd(path: Path, *, max_frames: int | None = None, camera: CameraConfig | None = None,
                  layout: str = "tum") -> Sequence:
    """TUM RGB-D folder: ``rgb.txt`` (``timestamp filename``), images, ``groundtruth.txt``
    (TUM format, T_world_camera, interpolated to the image stamps) and ``camera.yaml``."""
    stamps, files = [], []
    for lineno, line in enumerate((path / "rgb.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{path / 'rgb.txt'}:{lineno}: expected 'timestamp filename'")
        try:
            stamps.append(float(parts[0]))
        except ValueError:
            raise DataError(f"{path / 'rgb.txt'}:{lineno}: bad timestamp '{parts[0]}'") from None
        files.append(path / parts[1])
    if max_frames is not None:
        stamps, files = stamps[:max_frames], files[:max_frames]
    stamps_arr = np.asarray(stamps, dtype=np.float64)
    gt = None
    if (path / "groundtruth.txt").is_file():
        gt = resample(read_tum(path / "groundtruth.txt"), stamps_arr, max_gap=0.1, tolerance=0.02)
    cam_files = (read_camera_yaml(path / "camera.yaml", rectified=_rectified(camera))
                 if (path / "camera.yaml").is_file() else None)
    return _folder_sequence(path.name, layout, files, stamps_arr, cam_files, camera, gt, str(path))


# --------------------------------------------------------------------------------------------
# EuRoC MAV
# --------------------------------------------------------------------------------------------
def euroc_root(path: Path) -> Path | None:
    """The ``mav0`` folder of an EuRoC sequence given it or its parent, else None."""
    for root in (path / "mav0", path):
        if (root / "cam0" / "data").is_dir():
            return root
    return None


def _read_euroc_gt(folder: Path, stamps: np.ndarray) -> Trajectory | None:
    """Body ground truth T_world_body resampled to ``stamps``: the candidate file (TUM ``*.txt`` or
    ASL ``data.csv``) covering the most frames wins (ties: file name order)."""
    best = None
    for f in sorted(folder.iterdir()):
        if f.suffix == ".txt":
            traj = read_tum(f)
        elif f.name == "data.csv":
            rows = np.loadtxt(f, delimiter=",", comments="#", ndmin=2)
            # timestamp [ns], p_x, p_y, p_z, q_w, q_x, q_y, q_z, ...
            traj = Trajectory(stamps=rows[:, 0] * 1e-9,
                              poses=poses_from_tq(rows[:, 1:4], rows[:, [5, 6, 7, 4]]))
        else:
            continue
        res = resample(traj, stamps, max_gap=0.1, tolerance=0.02)
        if best is None or len(res) > len(best):
            best = res
    return best


def read_euroc(path: Path, *, max_frames: int | None = None, camera: CameraConfig | None = None) -> Sequence:
    """EuRoC MAV folder: ``mav0/cam0/data/<ns>.png``, ``cam0/data.csv``, ``cam0/sensor.yaml``
    (pinhole intrinsics, radial-tangential distortion, T_BS) and body-frame ground truth in
    ``state_groundtruth_estimate0`` (camera pose = T_world_body @ T_BS)."""
    root = euroc_root(path)
    cam_dir = root / "cam0"
    if (cam_dir / "data.csv").is_file():
        names, stamps = [], []
        for line in (cam_dir / "data.csv").read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            t_ns, name = [v.strip() for v in line.split(",")[:2]]
            names.append(cam_dir / "data" / name)
            stamps.append(int(t_ns) * 1e-9)
        order = np.argsort(stamps, kind="stable")
        files = [names[i] for i in order]
        stamps_arr = np.asarray(stamps, dtype=np.float64)[order]
    else:
        files = _image_files(cam_dir / "data")
        try:
            stamps_arr = np.array([int(f.stem) * 1e-9 for f in files], dtype=np.float64)
        except ValueError:
            raise DataError(f"{cam_dir / 'data'}: EuRoC image names must be nanosecond stamps") from None
    if max_frames is not None:
        files, stamps_arr = files[:max_frames], stamps_arr[:max_frames]

    cam_files, T_BS = None, np.eye(4)
    if (cam_dir / "sensor.yaml").is_file():
        doc = load_yaml(cam_dir / "sensor.yaml")
        try:
            fx, fy, cx, cy = (float(v) for v in doc["intrinsics"])
            w, h = (int(v) for v in doc.get("resolution", [0, 0]))
            dist = np.asarray([float(v) for v in doc.get("distortion_coefficients", [0, 0, 0, 0])])
            if "T_BS" in doc:
                T_BS = np.asarray(doc["T_BS"]["data"], dtype=np.float64).reshape(4, 4)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{cam_dir / 'sensor.yaml'}: malformed ({e})") from None
        model = distortion_model(str(doc.get("distortion_model", "radial-tangential")), dist,
                                 str(cam_dir / "sensor.yaml"))
        cam_files = Camera.from_intrinsics(fx, fy, cx, cy, w, h, dist=dist, model=model)

    gt = None
    gt_dir = root / "state_groundtruth_estimate0"
    if gt_dir.is_dir():
        body = _read_euroc_gt(gt_dir, stamps_arr)
        if body is not None and len(body):
            gt = Trajectory(stamps=body.stamps, poses=body.poses @ T_BS)
    name = root.parent.name if root.name == "mav0" else root.name
    return _folder_sequence(name, "euroc", files, stamps_arr, cam_files, camera, gt, str(path))
