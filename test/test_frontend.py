"""Frontend output contract, the same for every frontend name."""
import cv2
import numpy as np
import pytest

from conftest import data_path
from kp2d_ros.config import FrontendConfig
from kp2d_ros.errors import DataError, ModelError
from kp2d_ros.frontend import build_frontend
from kp2d_ros.frontend_common import grid_select, to_input_pixels
from kp2d_ros.types import Features

FRONTENDS = ["orb", "sift", "kp2d"]  # the contract every frontend meets (kp2d skips without weights)
CLASSICAL = ["orb", "sift"]  # grey input, grid bucketing, no detections on a flat image


def textured_image(w=400, h=300, seed=0):
    """RGB uint8 image with corners and blobs at every scale."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    img = cv2.normalize(img, None, 0, 160, cv2.NORM_MINMAX)
    for _ in range(60):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        s = int(rng.integers(5, 30))
        cv2.rectangle(img, (x, y), (x + s, y + s), float(rng.uniform(0, 255)), -1)
    grey = img.astype(np.uint8)
    return np.stack([grey, np.roll(grey, 1, axis=0), grey], axis=2)


def frontend(name, **kw):
    try:
        return build_frontend(FrontendConfig(type=name, **kw))
    except ModelError as e:  # a learned frontend without weights in this checkout
        pytest.skip(str(e))


@pytest.mark.parametrize("name", FRONTENDS)
def test_output_contract(name):
    img = textured_image()
    fe = frontend(name, num_features=500)
    f = fe.detect(img)
    assert isinstance(f, Features) and fe.name == name
    n = len(f)
    assert 50 < n <= 500
    assert f.keypoints.shape == (n, 2) and f.keypoints.dtype == np.float32
    assert f.scores.shape == (n,) and f.scores.dtype == np.float32
    assert f.descriptors.shape[0] == n
    h, w = img.shape[:2]
    assert np.all(f.keypoints >= -0.5) and np.all(f.keypoints[:, 0] <= w - 0.5) and np.all(f.keypoints[:, 1] <= h - 0.5)
    if f.binary:
        assert f.descriptors.dtype == np.uint8
    else:
        assert f.descriptors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", CLASSICAL)
def test_grey_and_rgb_agree(name):
    rgb = textured_image(seed=1)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    fe = frontend(name, num_features=300)
    a, b = fe.detect(rgb), fe.detect(grey)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert len(fe.detect(grey[:, :, None])) == len(b)


@pytest.mark.parametrize("name", FRONTENDS)
def test_resolution_maps_back_to_input_pixels(name):
    big = cv2.cvtColor(textured_image(w=640, h=480, seed=2), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(big, (320, 240), interpolation=cv2.INTER_AREA)
    at_half = frontend(name, num_features=300, resolution=[320, 240]).detect(big)
    direct = frontend(name, num_features=300).detect(small)
    assert len(at_half) == len(direct) > 0
    np.testing.assert_allclose(at_half.keypoints, (direct.keypoints + 0.5) * 2.0 - 0.5, atol=1e-3)
    assert at_half.keypoints[:, 0].max() > 320  # spread over the whole input image


@pytest.mark.parametrize("name", CLASSICAL)
def test_grid_bucketing_spreads_keypoints(name):
    img = textured_image(seed=3)
    img[150:, :] //= 6  # weak texture in the bottom half
    img[:150, 200:] //= 3  # and in the top-right quarter: the strongest corners are top-left
    plain = frontend(name, num_features=200, grid_cols=0, grid_rows=0).detect(img)
    spread = frontend(name, num_features=200, grid_cols=2, grid_rows=2).detect(img)

    def outside_top_left(f):
        return int(np.sum((f.keypoints[:, 0] >= 200) | (f.keypoints[:, 1] >= 150)))

    assert len(plain) <= len(spread) == 200  # the budget is used either way (sparse cells: filled)
    assert outside_top_left(spread) > 1.5 * outside_top_left(plain)  # the weak cells get their share


@pytest.mark.parametrize("name", CLASSICAL)
def test_real_image(name):
    path = data_path("vo", "kitti06_pairs", "image_2", "000012.png")
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    f = frontend(name, num_features=1000).detect(img)
    assert len(f) == 1000
    # keypoints cover the image (not one corner)
    assert np.ptp(f.keypoints[:, 0]) > 0.8 * img.shape[1]


def test_bad_input_raises():
    fe = build_frontend(FrontendConfig(type="orb"))
    with pytest.raises(DataError):
        fe.detect(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(DataError):
        fe.detect(np.zeros((10, 10), np.float32))


def test_featureless_image_gives_empty_features():
    for name in CLASSICAL:
        f = frontend(name).detect(np.full((100, 100), 128, np.uint8))
        assert len(f) == 0 and f.keypoints.shape == (0, 2)


def test_kp2d_without_weights_is_a_model_error(tmp_path):
    # ModelError whether the network module or only its weights are missing
    with pytest.raises(ModelError):
        build_frontend(FrontendConfig(type="kp2d", model_path=str(tmp_path / "missing.pt"), device="cpu"))


def test_grid_select_and_pixel_mapping():
    xy = np.array([[1, 1], [2, 2], [3, 3], [90, 90], [91, 91]], np.float32)
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.3], np.float32)
    keep = grid_select(xy, scores, (100, 100), 2, 2, 4)  # 1 per cell
    assert keep.tolist() == [1, 4]
    keep = grid_select(xy, scores, (100, 100), 2, 2, 4, fill=True)  # then the best of the rest
    assert keep.tolist() == [1, 4, 2, 3]
    np.testing.assert_allclose(to_input_pixels(np.array([[0.0, 9.0]]), np.array([2.0, 2.0])), [[0.5, 18.5]])


def test_working_scale_resizes_relative_to_the_input():
    from kp2d_ros.frontend_common import resize_to_working

    img = np.zeros((370, 1226), np.uint8)
    work, scale = resize_to_working(img, [0, 0], 1.5)
    assert work.shape == (555, 1839)
    np.testing.assert_allclose(scale, [1226 / 1839, 370 / 555])
    work, scale = resize_to_working(img, [640, 192], 1.5)  # a fixed size wins
    assert work.shape == (192, 640)
    assert resize_to_working(img, [0, 0])[0] is img


@pytest.mark.parametrize("name", FRONTENDS)
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_masked_regions_get_no_keypoints(name, scale, tmp_path):
    """``frontend.mask_ratios`` [left, right, top, bottom] and ``frontend.mask_image`` (black: none) keep keypoints out,
    at any working scale, and the keypoint budget goes to the rest of the image."""
    img = textured_image(400, 300)
    free = frontend(name, num_features=300, scale=scale).detect(img)
    assert (free.keypoints[:, 1] > 240).sum() > 10 and (free.keypoints[:, 0] < 100).sum() > 10
    cut = frontend(name, num_features=300, scale=scale, mask_ratios=[0.25, 0.0, 0.0, 0.2]).detect(img)
    assert len(cut) > 0.8 * len(free)  # the budget is spent above the cut, not lost
    assert cut.keypoints[:, 1].max() < 240 + 2 and cut.keypoints[:, 0].min() > 100 - 2
    mask = np.full((150, 200), 255, np.uint8)  # any size: resized to the image's
    mask[:, 100:] = 0  # the right half
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    half = frontend(name, num_features=300, scale=scale, mask_image=str(tmp_path / "mask.png"),
                    mask_ratios=[0.0, 0.0, 0.5, 0.0]).detect(img)  # with the top half cut off too
    assert len(half) > 0 and half.keypoints[:, 0].max() < 200 + 2 and half.keypoints[:, 1].min() > 150 - 2


@pytest.mark.parametrize("ratios, fragment", [([0.1, 0.0, 0.0], "left, right"), ([0.6, 0.5, 0.0, 0.0], "leave part"),
                                              ([0.0, 0.0, -0.1, 0.0], "fractions"), ([0.0, 0.0, 0.5, 0.5], "top")])
def test_mask_ratios_are_checked(ratios, fragment):
    from kp2d_ros.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        FrontendConfig(mask_ratios=ratios).validate()


def test_mask_image_must_exist_and_allow_something(tmp_path):
    from kp2d_ros.errors import ConfigError
    from kp2d_ros.frontend_common import DetectionMask

    with pytest.raises(ConfigError, match="no such file"):
        FrontendConfig(mask_image=str(tmp_path / "none.png")).validate()
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="black everywhere"):
        DetectionMask(image_path=str(tmp_path / "black.png"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read"):
        DetectionMask(image_path=str(tmp_path / "text.png"))
    assert DetectionMask().at((100, 80), (100, 80)) is None  # nothing masked: no mask at all


def moving_view_with_a_body(n, step_px=3, body_rows=60, seed=0, still_from=None, scene_contrast=1.0):
    """(240, 320) grey frames of a textured scene that slides ``step_px`` to the left per frame (the view moves; from
    frame ``still_from`` on it stands), with a fixed textured band in the bottom ``body_rows`` rows, as a body in view,
    with fresh camera noise in every frame. ``scene_contrast`` < 1: a duller scene (fewer keypoints than the band)."""
    scene = textured_image(320 + step_px * n + 8, 240, seed=seed)[:, :, 0]
    if scene_contrast != 1.0:
        scene = scene * scene_contrast + 60.0
    body = textured_image(320, body_rows, seed=seed + 1)[:, :, 0]
    rng = np.random.default_rng(seed)
    for k in range(n):
        x = step_px * (k if still_from is None else min(k, still_from))
        im = scene[:, x:x + 320].copy()
        im[240 - body_rows:] = body
        yield np.clip(im + rng.normal(0.0, 2.0, im.shape), 0, 255).astype(np.uint8)


def test_still_blocks_mask_a_body_in_view_and_nothing_of_a_moving_scene():
    """:class:`StillBlocks`: a band that never moves while the view slides is masked after ``frames`` judgements (one
    each time the view has moved by a median 4 px), with a block's margin; the scene is never masked."""
    from kp2d_ros.frontend_common import StillBlocks

    still = StillBlocks(frames=10)
    masks = [still.update(im) for im in moving_view_with_a_body(30)]  # 3 px a frame: a judgement every 2nd frame
    assert still.judgements == 14
    first = next(k for k, m in enumerate(masks) if m is not None)
    assert first == 20  # the 10th judgement
    m = masks[-1]
    assert m.shape == (240, 320) and m.dtype == np.uint8
    assert np.all(m[180:] == 0) and np.all(m[:160] == 255)  # the band, and one block above it, masked
    assert 4 * 20 <= still.masked_blocks <= 5 * 20  # 4 rows of blocks and most of the margin row, 20 blocks wide


def test_still_blocks_judge_nothing_while_the_view_stands_and_give_a_moved_block_back():
    from kp2d_ros.frontend_common import StillBlocks

    still = StillBlocks(frames=5)
    frames = list(moving_view_with_a_body(40, still_from=14))  # moves for 14 frames: 7 judgements, then stands
    masks = [still.update(im) for im in frames]
    assert still.judgements == 7 and masks[-1] is not None and np.all(masks[-1][180:] == 0)
    body_gone = frames[0][:, ::-1].copy()  # everything moves, the band too
    assert still.update(body_gone) is None and still.masked_blocks == 0


def test_still_blocks_leave_a_view_that_stands_still_mostly_alone():
    """Where more than 40 % of the textured view stands still while the rest moves (a stopped robot before something
    large that moves), it is the scene that stands: nothing is masked."""
    from kp2d_ros.frontend_common import StillBlocks

    still = StillBlocks(frames=3)
    masks = [still.update(im) for im in moving_view_with_a_body(40, body_rows=112)]  # 7 of 15 rows of blocks
    assert still.judgements > 3 and int(still._run.max()) > 3 and all(m is None for m in masks)


@pytest.mark.parametrize("frames, masked", [(10, True), (0, False)])
def test_the_pipeline_detects_no_keypoints_on_a_body_that_stays_in_view(frames, masked):
    """``VOPipeline.detect`` hands the frontend the blocks that stayed still (``frontend.still_mask_frames``; 0: off):
    after 10 judgements (20 frames of a view sliding by 3 px) no keypoint lies on the band at the bottom."""
    from kp2d_ros.config import VOConfig
    from kp2d_ros.pipeline import VOPipeline
    from kp2d_ros.types import Camera, Frame

    cfg = VOConfig()
    cfg.frontend.type, cfg.frontend.still_mask_frames, cfg.backend.window = "sift", frames, 0
    vo = VOPipeline(cfg)
    cam = Camera.from_intrinsics(300.0, 300.0, 160.0, 120.0, 320, 240)
    feats = [vo.detect(Frame(image=im, camera=cam, stamp=0.1 * k, index=k))
             for k, im in enumerate(moving_view_with_a_body(24))]
    on_body = [int((f.keypoints[:, 1] > 180).sum()) for f in feats]
    assert min(on_body[:20]) > 10  # the band has keypoints until it is found
    assert (max(on_body[21:]) == 0) == masked


def test_still_blocks_mask_only_regions_at_the_border_and_not_the_smallest():
    """A still patch inside the view (points far ahead hardly move in a straight drive) or one of a few blocks at the
    border (a roof's corner against the sky) stays; a body comes into the view from outside it and is larger."""
    from kp2d_ros.frontend_common import StillBlocks

    scene = textured_image(320 + 3 * 30 + 8, 240, seed=4)[:, :, 0]
    patch = textured_image(48, 48, seed=5)[:, :, 0]
    for y, x, size, masked in [(96, 128, 48, False), (96, 0, 32, False), (96, 0, 48, True)]:
        still = StillBlocks(frames=5)
        for k in range(30):
            im = scene[:, 3 * k:3 * k + 320].copy()
            im[y:y + size, x:x + size] = patch[:size, :size]
            still.update(im)
        assert still.judgements > 5 and (still.mask is not None) == masked, (y, x, size)


def standing_view_with_a_passer(n, width=280, step_px=12, seed=0):
    """(240, 320) grey frames of a textured scene that stands (fresh camera noise in every frame) while a textured
    panel ``width`` px wide, rows 30-210, crosses it from the right by ``step_px`` per frame: a vehicle passing a robot
    that waits. The panel fills most of the textured view, so the scene is what stands still at the border."""
    scene = textured_image(320, 240, seed=seed)[:, :, 0]
    panel = textured_image(width, 180, seed=seed + 2)[:, :, 0]
    rng = np.random.default_rng(seed)
    for k in range(n):
        im = scene.copy()
        left = 320 - step_px * k
        a, b = max(left, 0), min(left + width, 320)
        if b > a:
            im[30:210, a:b] = panel[:, a - left:b - left]
        yield np.clip(im + rng.normal(0.0, 2.0, im.shape), 0, 255).astype(np.uint8)


def test_still_blocks_judge_nothing_while_the_camera_is_known_to_stand():
    """A panel that crosses a standing view moves the median block, so the image alone takes the standing scene at
    the border for a body (``judge=True``); told that the camera stands (``judge=False``), nothing is judged."""
    from kp2d_ros.frontend_common import StillBlocks

    frames = list(standing_view_with_a_passer(40))
    alone, told = StillBlocks(frames=5), StillBlocks(frames=5)
    assert any(alone.update(im) is not None for im in frames) and alone.judgements >= 5  # the scene masked
    assert all(told.update(im, judge=k == 0) is None for k, im in enumerate(frames)) and told.judgements == 0


def test_the_pipeline_keeps_the_scene_of_a_standing_camera_while_something_passes():
    """``VOPipeline``: once a frame finds the camera standing (``static``), the still-block search stops, so that a
    vehicle passing a robot that waits leaves the scene its keypoints and the pose stays put; the same in
    :func:`run_pipelined`, which detects each frame while the one before is processed."""
    from kp2d_ros.config import VOConfig
    from kp2d_ros.pipeline import VOPipeline, run_pipelined
    from kp2d_ros.types import Camera, Frame, TrackingStatus

    cfg = VOConfig()
    cfg.frontend.type, cfg.backend.window = "sift", 0
    cam = Camera.from_intrinsics(300.0, 300.0, 160.0, 120.0, 320, 240)
    frames = [Frame(image=im, camera=cam, stamp=0.1 * k, index=k) for k, im in enumerate(standing_view_with_a_passer(40))]
    for run in (lambda vo: [vo.process(f) for f in frames], lambda vo: list(run_pipelined(vo, iter(frames)))):
        vo = VOPipeline(cfg)
        estimates = run(vo)
        assert vo.still_blocks.judgements == 0 and vo.still_blocks.mask is None
        assert all(e.status == TrackingStatus.STATIC for e in estimates[1:])
        assert all(np.allclose(e.T_world_cam, np.eye(4)) for e in estimates)


def test_a_body_that_holds_the_pipeline_still_is_found_while_the_scene_moves_together():
    """A textured body that holds most keypoints makes the pipeline find the camera standing while a duller scene
    slides past. The scene's matches move together (one essential matrix holds them), so this is not a stop: the
    still-block search goes on, masks the body, and the pipeline leaves ``static``."""
    from kp2d_ros.config import VOConfig
    from kp2d_ros.pipeline import VOPipeline
    from kp2d_ros.types import Camera, Frame

    cfg = VOConfig()
    cfg.frontend.type, cfg.backend.window = "sift", 0
    vo = VOPipeline(cfg)
    cam = Camera.from_intrinsics(300.0, 300.0, 160.0, 120.0, 320, 240)
    models = [vo.process(Frame(image=im, camera=cam, stamp=0.1 * k, index=k)).motion_model
              for k, im in enumerate(moving_view_with_a_body(30, scene_contrast=0.3))]
    assert models[1:6] == ["static"] * 5  # the body holds the pose
    assert vo.still_blocks.judgements > 10 and vo.still_blocks.mask is not None and np.all(vo.still_blocks.mask[190:] == 0)
    assert "static" not in models[-10:]
