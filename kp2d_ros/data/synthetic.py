"""A deterministic synthetic VO sequence: textured planes seen by a moving pinhole camera.

The scene is a street-like corridor in the first camera's optical frame (x right, y down,
z forward): a ground plane, two side walls, an end wall and a few boxes at different depths,
textured with images shipped with scikit-image (brick, grass, gravel, astronaut, coffee,
chelsea, rocket, camera; procedural noise textures when scikit-image is missing). The camera
drives forward at 0.2 m per frame (10 Hz) and turns right by 25 degrees between frames 26 and 54,
with a slight vertical bob and pitch. Each frame is ray-cast per pixel (plane intersection, z-buffer, bilinear texture
lookup with wrap-around tiling) at 2x supersampling, then box-filtered down, plus mild noise.

:func:`synthetic_sequence` renders lazily in memory; :func:`write_synthetic_sequence` writes a
TUM RGB-D layout (``rgb/``, ``rgb.txt``, ``groundtruth.txt``, ``camera.yaml``) that
:func:`kp2d_ros.data.open_sequence` reads back (layout ``synthetic``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from kp2d_ros.data.camera_yaml import write_camera_yaml
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.data.trajectory_io import write_tum
from kp2d_ros.types import Camera, Trajectory

VERSION = 1  # bump when the scene or the path changes
FPS = 10.0
T0 = 100.0  # stamp of the first frame (s)
SPEED = 0.2  # m per frame
TURN_DEG = 25.0
TURN_FRAMES = (26, 54)  # the right turn happens between these frames


@dataclass
class _Plane:
    """Rectangle origin + a * u + b * v (a in [0, size_u], b in [0, size_v]), u, v unit vectors."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size_u: float
    size_v: float
    texture: str
    tile_m: float  # metres covered by one texture repeat along u (v scales with the aspect)


def _procedural_texture(seed: int, size: int = 256) -> np.ndarray:
    """Multi-scale noise with random blobs: a feature-rich RGB texture without scikit-image."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    for cells in (4, 8, 16, 32, 64):
        img += cv2.resize(rng.random((cells, cells, 3), dtype=np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC) / 5
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, c, int(rng.integers(3, 20)), tuple(float(v) for v in rng.random(3)), -1)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _sample_image(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB scikit-image sample (procedural fallback), longest side 256 px."""
    try:
        from skimage import data as skdata

        img = np.asarray(getattr(skdata, name)())
    except Exception:  # scikit-image missing or sample unavailable: stay deterministic
        img = _procedural_texture(sum(map(ord, name)))
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3].astype(np.uint8)
    scale = 256.0 / max(img.shape[:2])  # limit the texel density (less aliasing far away)
    return cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=None)
def _texture(name: str) -> np.ndarray:
    """Texture by name: a sample image, or ``mosaic:ROWSxCOLS:a,b,c`` = a grid of 256 px cells
    cut from those samples, each cell rotated/flipped differently so the pattern does not repeat
    within the grid (repeats along the direction of travel would fake alternative motions)."""
    if not name.startswith("mosaic:"):
        return _sample_image(name)
    _, shape, names = name.split(":")
    rows, cols = (int(v) for v in shape.split("x"))
    sources = [_sample_image(n) for n in names.split(",")]
    rng = np.random.default_rng(sum(map(ord, name)))
    cell = 256
    out = np.zeros((rows * cell, cols * cell, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            src = sources[(r * cols + c) % len(sources)]
            src = cv2.resize(src, (cell * 2, cell * 2), interpolation=cv2.INTER_LINEAR)
            y, x = rng.integers(0, cell, 2)
            tile = np.rot90(src[y:y + cell, x:x + cell], int(rng.integers(0, 4)))
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            out[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = tile
    return out


def _box(x: float, z: float, w: float, h: float, d: float, ground_y: float, texture: str) -> list[_Plane]:
    """Front, left and right faces of a box standing on the ground, front face at depth z."""
    top = ground_y - h
    ex, ey, ez = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    return [
        _Plane(np.array([x - w / 2, top, z]), ex, ey, w, h, texture, w),
        _Plane(np.array([x - w / 2, top, z]), ez, ey, d, h, texture, d),
        _Plane(np.array([x + w / 2, top, z]), ez, ey, d, h, texture, d),
    ]


def _scene() -> list[_Plane]:
    g = 1.5  # ground 1.5 m below the first camera
    top = -3.0
    ex, ey, ez = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    planes = [
        # ground: 14 m x 40 m, 2.5 m cells, pattern period 15 m across x 30 m
        _Plane(np.array([-7.0, g, -2.0]), ex, ez, 14.0, 40.0, "mosaic:12x6:gravel,grass,brick,moon", 15.0),
        # side walls: 3 m cells, period 36 m along the street
        _Plane(np.array([-7.0, top, -2.0]), ez, ey, 40.0, g - top,
               "mosaic:2x12:brick,camera,gravel,text,coins,grass,page", 36.0),
        _Plane(np.array([7.0, top, -2.0]), ez, ey, 40.0, g - top,
               "mosaic:2x12:grass,clock,brick,moon,gravel,immunohistochemistry", 36.0),
        _Plane(np.array([-7.0, top - 2.0, 38.0]), ex, ey, 14.0, g - top + 2.0, "coffee", 4.0),  # end wall
        _Plane(np.array([-7.0, top, 6.0]), ex, ey, 2.5, 2.0, "rocket", 2.5),  # banner on the left
    ]
    planes += _box(-2.5, 9.0, 1.6, 1.6, 1.6, g, "astronaut")
    planes += _box(3.5, 7.0, 1.6, 2.0, 1.6, g, "rocket")
    planes += _box(-1.5, 13.0, 2.0, 2.2, 1.5, g, "chelsea")
    planes += _box(-1.0, 21.0, 1.8, 1.4, 1.8, g, "camera")
    planes += _box(3.5, 26.0, 2.2, 2.6, 2.0, g, "astronaut")
    planes += _box(-3.5, 30.0, 2.0, 2.0, 2.0, g, "coffee")
    return planes


def synthetic_camera(width: int = 640, height: int = 480) -> Camera:
    """Pinhole camera with a ~65 degree horizontal field of view, no distortion."""
    f = 0.78 * width
    return Camera.from_intrinsics(f, f, (width - 1) / 2, (height - 1) / 2, width, height)


def synthetic_trajectory(n_frames: int, speed: float = SPEED) -> Trajectory:
    """Ground truth T_world_cam: forward motion, a smooth 25 degree right turn, vertical bob.

    The world frame is the first camera's optical frame (first pose = identity). ``speed``: metres
    per frame; the path is the same street at any speed (turn and bob at the same distances), so
    at 0.05 m/frame the turn happens 4x later in frames, at 10 Hz as always.
    """
    k = np.arange(n_frames, dtype=np.float64) * (speed / SPEED)  # the frame of the 0.2 m/frame path
    # smoothstep yaw profile over frames TURN_FRAMES (shorter sequences are prefixes of longer ones)
    x = np.clip((k - TURN_FRAMES[0]) / (TURN_FRAMES[1] - TURN_FRAMES[0]), 0.0, 1.0)
    yaw = np.radians(TURN_DEG) * x * x * (3 - 2 * x)
    heading = np.stack([np.sin(yaw), np.zeros_like(yaw), np.cos(yaw)], axis=1)
    pos = np.vstack([np.zeros(3), np.cumsum(speed * heading[:-1], axis=0)])
    pos[:, 1] = 0.05 * np.sin(k / 6.0)
    pos[:, 1] -= pos[0, 1]
    pitch = 0.02 * np.sin(k / 9.0)
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    poses[:, :3, :3] = Rotation.from_euler("YX", np.stack([yaw, pitch], axis=1)).as_matrix()
    poses[:, :3, 3] = pos
    return Trajectory(stamps=T0 + np.arange(n_frames) / FPS, poses=poses)


def robot_trajectory(steps: list[tuple[int, float, float, float]], shake_deg: float = 0.0, shake_m: float = 0.0,
                     seed: int = 0) -> Trajectory:
    """Ground truth T_world_cam of a ground robot's moves on the street, for what a robot does that a car does not.

    The camera starts at the street's first pose; each ``(n, forward, sideways, yaw_deg)`` adds ``n`` frames, each
    turned by ``yaw_deg`` (about the camera centre) and then moved ``forward`` m along its new heading and
    ``sideways`` m to its right (negative: backwards / to the left). Render each pose with :func:`render`.
    Examples: a turn in place ``[(11, 0.2, 0, 0), (15, 0, 0, 6), (12, 0.2, 0, 0)]`` (the 90 deg turn faces the side
    wall, 7 m away); a reversal ``[(11, 0.2, 0, 0), (14, -0.2, 0, 0)]``; a stop is ``(n, 0, 0, 0)``.

    ``shake_deg`` / ``shake_m``: rough ground. Every frame after the first is tilted about the camera's own x and z
    axes (pitch and roll, each Gaussian with that standard deviation in degrees) and lifted or lowered by a Gaussian
    of ``shake_m`` metres, independently from frame to frame (seeded by ``seed``): a camera that shakes about its
    mount's attitude, so that no motion between two frames predicts the next.
    """
    yaw, pos = [0.0], [np.zeros(3)]
    for n, forward, sideways, yaw_deg in steps:
        for _ in range(int(n)):
            y = yaw[-1] + np.radians(yaw_deg)
            ahead, right = np.array([np.sin(y), 0.0, np.cos(y)]), np.array([np.cos(y), 0.0, -np.sin(y)])
            yaw.append(y)
            pos.append(pos[-1] + forward * ahead + sideways * right)
    poses = np.tile(np.eye(4), (len(yaw), 1, 1))
    poses[:, :3, :3] = Rotation.from_euler("Y", np.array(yaw)[:, None]).as_matrix()
    poses[:, :3, 3] = np.array(pos)
    if shake_deg > 0 or shake_m > 0:
        rng = np.random.default_rng(seed)
        tilt = rng.normal(0.0, shake_deg, (len(yaw), 2))
        lift = rng.normal(0.0, shake_m, len(yaw))
        tilt[0], lift[0] = 0.0, 0.0  # the first frame defines the world frame
        poses[:, :3, :3] = poses[:, :3, :3] @ Rotation.from_euler("XZ", tilt, degrees=True).as_matrix()
        poses[:, 1, 3] += lift  # the optical frame's y points down: the street's vertical
    return Trajectory(stamps=T0 + np.arange(len(yaw)) / FPS, poses=poses)


def _clip_near(pts: np.ndarray, near: float) -> np.ndarray:
    """Clip a convex polygon (M, 3) in camera coordinates to z >= near (Sutherland-Hodgman)."""
    out = []
    for i in range(len(pts)):
        p, q = pts[i], pts[(i + 1) % len(pts)]
        if p[2] >= near:
            out.append(p)
        if (p[2] >= near) != (q[2] >= near):
            out.append(p + (near - p[2]) / (q[2] - p[2]) * (q - p))
    return np.asarray(out).reshape(-1, 3)


def render(T_world_cam: np.ndarray, camera: Camera, *, supersample: int = 2, noise_seed: int | None = 0,
           noise_sigma: float = 1.5) -> np.ndarray:
    """Render the scene from ``T_world_cam`` (4, 4).

    Each plane is drawn over the bounding box of its near-clipped projection: per pixel the ray
    depth and plane coordinates are linear-fractional in (u, v), the texture lookup wraps around
    (tiling), and a z-buffer resolves occlusions.

    Returns
    -------
    (H, W, 3) uint8 RGB image of size ``camera.width`` x ``camera.height``.
    """
    s = supersample
    W, H = camera.width * s, camera.height * s
    fx, fy = camera.K[0, 0] * s, camera.K[1, 1] * s
    cx, cy = camera.K[0, 2] * s + (s - 1) / 2.0, camera.K[1, 2] * s + (s - 1) / 2.0  # fine-grid centres
    near = 0.05
    T_cw = np.linalg.inv(T_world_cam)
    R, t = T_cw[:3, :3], T_cw[:3, 3]
    sky = np.linspace([150, 180, 220], [215, 225, 235], H, dtype=np.float32)[:, None, :]
    image = np.broadcast_to(sky, (H, W, 3)).astype(np.uint8).copy()
    zbuf = np.full((H, W), np.inf, np.float32)
    for plane in _scene():
        o, u, v = R @ plane.origin + t, R @ plane.u, R @ plane.v
        corners = np.stack([o, o + plane.size_u * u, o + plane.size_u * u + plane.size_v * v, o + plane.size_v * v])
        poly = _clip_near(corners, near)
        if len(poly) < 3:
            continue
        px = poly[:, 0] / poly[:, 2] * fx + cx
        py = poly[:, 1] / poly[:, 2] * fy + cy
        x0, x1 = max(int(np.floor(px.min())), 0), min(int(np.ceil(px.max())) + 1, W)
        y0, y1 = max(int(np.floor(py.min())), 0), min(int(np.ceil(py.max())) + 1, H)
        if x0 >= x1 or y0 >= y1:
            continue
        du = ((np.arange(x0, x1, dtype=np.float32) - np.float32(cx)) / np.float32(fx))[None, :]  # ray (du, dv, 1)
        dv = ((np.arange(y0, y1, dtype=np.float32) - np.float32(cy)) / np.float32(fy))[:, None]
        n = np.cross(u, v).astype(np.float32)
        u32, v32 = u.astype(np.float32), v.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            depth = np.float32(n @ o) / (n[0] * du + n[1] * dv + n[2])
            a = depth * (u32[0] * du + u32[1] * dv + u32[2]) - np.float32(o @ u)
            b = depth * (v32[0] * du + v32[1] * dv + v32[2]) - np.float32(o @ v)
            zroi = zbuf[y0:y1, x0:x1]
            mask = (depth > near) & (depth < zroi) & (a >= 0) & (a <= plane.size_u) & (b >= 0) & (b <= plane.size_v)
        if not mask.any():
            continue
        tex = _texture(plane.texture)
        ppm = tex.shape[1] / plane.tile_m  # texels per metre
        mx = np.mod(np.where(mask, a, 0) * ppm, tex.shape[1]).astype(np.float32)
        my = np.mod(np.where(mask, b, 0) * ppm, tex.shape[0]).astype(np.float32)
        texels = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        np.copyto(image[y0:y1, x0:x1], texels, where=mask[:, :, None])
        np.copyto(zroi, depth, where=mask)
    out = cv2.resize(image, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    if noise_seed is not None and noise_sigma > 0:
        rng = np.random.default_rng(noise_seed)
        out = np.clip(out + rng.normal(0.0, noise_sigma, out.shape), 0, 255).astype(np.uint8)
    return out


def synthetic_sequence(n_frames: int = 80, seed: int = 0, width: int = 640, height: int = 480,
                       speed: float = SPEED) -> Sequence:
    """The synthetic sequence in memory (frames rendered on access; same output for the same seed).

    Parameters
    ----------
    n_frames : number of frames (10 Hz, ``speed`` m apart).
    seed : seeds the per-frame pixel noise (frame i uses ``seed * 100003 + i``).
    speed : metres per frame (0.05: a slowly moving camera on the same street).
    """
    if n_frames < 2:
        raise ValueError("n_frames must be >= 2")
    camera = synthetic_camera(width, height)
    if not speed > 0:
        raise ValueError("speed must be > 0")
    return _rendered("synthetic", synthetic_trajectory(n_frames, speed), camera, seed)


def _rendered(name: str, gt: Trajectory, camera: Camera, seed: int) -> Sequence:
    """The street seen from ``gt``'s poses as a sequence, each frame rendered on access (frame i's pixel noise
    seeded with ``seed * 100003 + i``)."""

    def load(i: int) -> np.ndarray:
        return render(gt.poses[i], camera, noise_seed=seed * 100003 + i)

    def images():
        for i in range(len(gt.stamps)):
            yield load(i)

    return Sequence(name, "synthetic", camera, gt.stamps, images, ground_truth=gt, loader=load)


def robot_sequence(steps: list[tuple[int, float, float, float]], seed: int = 0, width: int = 640,
                   height: int = 480, shake_deg: float = 0.0, shake_m: float = 0.0) -> Sequence:
    """:func:`robot_trajectory` rendered on the street as a sequence (frames rendered on access, as
    :func:`synthetic_sequence`'s); ``shake_deg`` / ``shake_m``: the camera shaking on rough ground (seeded by
    ``seed``)."""
    return _rendered("robot_moves", robot_trajectory(steps, shake_deg, shake_m, seed), synthetic_camera(width, height),
                     seed)


def texture_source() -> str:
    """``scikit-image`` when its sample images are available, else ``procedural``."""
    try:
        from skimage import data as skdata

        skdata.brick()
        return "scikit-image"
    except Exception:
        return "procedural"


def _marker_line(n_frames: int, seed: int, width: int, height: int, speed: float = SPEED) -> str:
    pace = "" if speed == SPEED else f" {speed:g} m/frame,"
    return (f"Synthetic kp2d_ros sequence v{VERSION}: {n_frames} frames {width}x{height} at {FPS:g} Hz,{pace} "
            f"seed {seed}, {texture_source()} textures.")


def synthetic_matches(out_dir: str | Path, n_frames: int = 80, seed: int = 0, width: int = 640,
                      height: int = 480, speed: float = SPEED) -> bool:
    """True when ``out_dir`` already holds this exact synthetic sequence (same version and parameters)."""
    from kp2d_ros.data.dataset import SYNTHETIC_MARKER

    marker = Path(out_dir) / SYNTHETIC_MARKER
    if not marker.is_file() or not (Path(out_dir) / "rgb.txt").is_file():
        return False
    lines = marker.read_text().splitlines()
    return bool(lines) and lines[0] == _marker_line(n_frames, seed, width, height, speed)


def write_synthetic_sequence(out_dir: str | Path, n_frames: int = 80, seed: int = 0, width: int = 640,
                             height: int = 480, speed: float = SPEED) -> Path:
    """Render the sequence into ``out_dir`` as a TUM RGB-D layout; returns ``out_dir``.

    Files: ``rgb/<stamp>.png``, ``rgb.txt``, ``groundtruth.txt`` (TUM, T_world_cam),
    ``camera.yaml`` (ROS camera_info) and ``SYNTHETIC.txt`` (what this is).
    """
    from kp2d_ros.data.dataset import SYNTHETIC_MARKER

    out = Path(out_dir)
    (out / "rgb").mkdir(parents=True, exist_ok=True)
    seq = synthetic_sequence(n_frames, seed, width, height, speed)
    lines = ["# color images", "# synthetic kp2d_ros sequence", "# timestamp filename"]
    for frame in seq:
        name = f"rgb/{frame.stamp:.6f}.png"
        if not cv2.imwrite(str(out / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {out / name}")
        lines.append(f"{frame.stamp:.6f} {name}")
    (out / "rgb.txt").write_text("\n".join(lines) + "\n")
    write_tum(seq.ground_truth, out / "groundtruth.txt")
    write_camera_yaml(seq.camera, out / "camera.yaml", name="synthetic")
    (out / SYNTHETIC_MARKER).write_text(
        _marker_line(n_frames, seed, width, height, speed) + "\n"
        "Textured planes (scikit-image sample images) ray-cast from a known camera path;\n"
        "groundtruth.txt is exact (T_world_cam, TUM format).\n")
    return out
