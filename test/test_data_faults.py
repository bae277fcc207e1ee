"""``--simulate`` variants of a sequence: stop, dropped frames, every N-th frame, a clip, an exposure change, an
occluder."""
import numpy as np
import pytest

from kp2d_ros.data.faults import Faults, body_panel, drop_spec, occluder, passer_panel, simulate
from kp2d_ros.data.sequence import Sequence
from kp2d_ros.errors import DataError
from kp2d_ros.types import Camera, Trajectory


def numbered(n=20, dt=0.1, gt_every=1, loader=True):
    """Frames whose first pixel is their number; ground truth x = frame number (every ``gt_every``-th frame)."""
    stamps = 5.0 + dt * np.arange(n)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 3] = np.arange(n)
    keep = np.arange(0, n, gt_every)
    cam = Camera.from_intrinsics(10.0, 10.0, 4.0, 3.0, 8, 6)

    def load(i):
        return np.full((6, 8), i, np.uint8)

    return Sequence("num", "synthetic", cam, stamps, lambda: (load(i) for i in range(n)),
                    Trajectory(stamps[keep], poses[keep]), loader=load if loader else None)


def ids(seq):
    return [int(f.image[0, 0]) for f in seq]


@pytest.mark.parametrize("loader", [True, False])
def test_stop_repeats_a_frame_and_shifts_time(loader):
    seq = simulate(numbered(loader=loader), "stop=5:3")
    assert ids(seq) == list(range(6)) + [5, 5, 5] + list(range(6, 20))
    assert seq.name == "num+stop5x3" and len(seq) == 23
    np.testing.assert_allclose(np.diff(seq.stamps), 0.1)  # the stop takes time; the clock runs on
    np.testing.assert_allclose(seq.ground_truth.poses[:, 0, 3], ids(seq))  # held during the stop
    np.testing.assert_array_equal(seq.ground_truth.stamps, seq.stamps)
    assert int(seq.frame(7).image[0, 0]) == 5


def test_drop_keeps_the_real_stamps():
    base = numbered()
    seq = simulate(base, "drop=6:9")
    assert ids(seq) == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    np.testing.assert_allclose(seq.stamps, base.stamps[ids(seq)])
    np.testing.assert_allclose(seq.ground_truth.poses[:, 0, 3], ids(seq))


def test_scattered_drops_as_a_busy_node_drops_them():
    base = numbered()
    seq = simulate(base, "drop=2,drop=6:7,drop=15")
    assert ids(seq) == [0, 1, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19]
    assert seq.name == "num+drop2+drop6-7+drop15"
    np.testing.assert_allclose(seq.stamps, base.stamps[ids(seq)])


def test_drop_spec_removes_exactly_the_given_frames():
    assert drop_spec([9, 3, 7, 8, 3]) == "drop=3,drop=7:9" and drop_spec([]) is None
    dropped = [0, 4, 5, 6, 11, 19]
    assert ids(simulate(numbered(), drop_spec(dropped))) == [i for i in range(20) if i not in dropped]
    with pytest.raises(DataError, match=">= 0"):
        drop_spec([2, -1])


def test_every_and_clip_and_combinations():
    base = numbered(gt_every=2)
    assert ids(simulate(base, "every=3")) == [0, 3, 6, 9, 12, 15, 18]
    seq = simulate(base, "frames=4:15, every=2, stop=8:2")
    assert ids(seq) == [4, 6, 8, 8, 8, 10, 12, 14]
    np.testing.assert_allclose(seq.stamps, [5.4, 5.6, 5.8, 5.9, 6.0, 6.2, 6.4, 6.6])
    # ground truth only where the original had it (every 2nd frame here: all of these)
    np.testing.assert_allclose(seq.ground_truth.poses[:, 0, 3], ids(seq))
    odd = simulate(base, "frames=3:7")
    np.testing.assert_allclose(odd.ground_truth.poses[:, 0, 3], [4, 6])
    assert len(simulate(base, "")) == 20


@pytest.mark.parametrize("spec, fragment", [
    ("pause=3:4", "expected"), ("stop=3", "two integers"), ("every=0", ">= 1"), ("drop=5:2", "ends before"),
    ("stop=a:2", "integers"), ("every=2,every=3", "twice"), ("drop=18:25", "outside"), ("drop=3,drop=20", "outside"),
    ("stop=7:2,drop=6:8", "not part"), ("gain=3:4", "three integers"), ("gain=5:2:50", "ends before"),
    ("gain=3:25:50", "outside"), ("gain=3:4:-5", "three integers"), ("occlude=5:2", "ends before"),
    ("occlude=3:25", "outside"), ("occlude=3", "two integers"), ("occlude=2:3,occlude=5:6", "twice"),
    ("jitter=50", "0..49"), ("jitter=-1", "0..49"), ("jitter=1:2", "one integer"), ("jitter=5,jitter=6", "twice"),
    ("body=0", "1..99"), ("body=100", "1..99"), ("body=1:2", "1..99"), ("body=5,body=6", "twice"),
    ("passer=50", "needs stop"), ("stop=3:1,passer=50", "R >= 2"), ("stop=3:4,passer=100", "1..99"), ("passer=50:4", "W:A:B"), ("passer=50:6:4", "A < B"),
    ("passer=50:3:25", "outside"),
    ("frames=0:3,every=1,drop=0:3", "no frame left")])
def test_bad_specifications_raise(spec, fragment):
    with pytest.raises(DataError, match=fragment):
        simulate(numbered(), spec)


def test_jitter_moves_the_stamps_within_the_bound_and_keeps_images_order_and_ground_truth():
    base = numbered()
    seq = simulate(base, "jitter=30,drop=6:7")
    assert seq.name == "num+drop6-7+jitter30" and ids(seq) == [i for i in range(20) if i not in (6, 7)]
    moved = seq.stamps - base.stamps[ids(seq)]
    assert np.all(np.abs(moved) <= 0.3 * 0.1 + 1e-12) and np.abs(moved).max() > 0.1 * 0.1  # within +-30 %, not zero
    assert np.all(np.diff(seq.stamps) > 0)
    np.testing.assert_allclose(seq.ground_truth.poses[:, 0, 3], ids(seq))  # each image keeps its own pose
    np.testing.assert_array_equal(seq.ground_truth.stamps, seq.stamps)
    # the same offsets in every run, and each frame's own whatever else is removed: a comparison across variants
    np.testing.assert_array_equal(simulate(base, "jitter=30").stamps[ids(seq)], seq.stamps)
    assert np.all(simulate(base, "jitter=0").stamps == base.stamps)


def test_parse():
    f = Faults.parse("stop=60:10,drop=61:64,every=3,frames=30:99")
    assert (f.stop, f.drop, f.every, f.frames) == ((60, 10), ((61, 64),), 3, (30, 99))


@pytest.mark.parametrize("loader", [True, False])
def test_gain_scales_the_frames_intensities_as_an_exposure_step(loader):
    """``gain=A:B:P``: frames A..B at P percent (rounded, saturating at the dtype's maximum), the others untouched,
    on top of the other faults; ranges given twice multiply where they overlap."""
    base = numbered(n=20, loader=loader)
    seq = simulate(base, "gain=4:9:50,gain=8:9:300,drop=6,stop=5:1")
    assert seq.name == "num+drop6+stop5x1+gain4-9x50+gain8-9x300"
    # frame i's pixel is i: 4 -> 2, 5 -> 2 (2.5 rounds to even), its stop copy too, 7 -> 4 (3.5), 8 -> 12, 9 -> 14 (13.5)
    assert ids(seq) == [0, 1, 2, 3, 2, 2, 2, 4, 12, 14] + list(range(10, 20))
    assert seq.frame(8).image.dtype == np.uint8
    bright = simulate(numbered(n=70, loader=loader), "gain=0:69:400")
    assert int(bright.frame(64).image[0, 0]) == 255 and int(bright.frame(10).image[0, 0]) == 40


def test_parse_gain():
    f = Faults.parse("gain=60:159:50, gain=70:72:150")
    assert f.gain == ((60, 159, 50), (70, 72, 150)) and f.label() == "+gain60-159x50+gain70-72x150"


@pytest.mark.parametrize("loader", [True, False])
def test_occlude_fills_the_frames_with_one_textured_panel_sliding_sideways(loader):
    """``occlude=A:B``: frames A..B are the panel (the frame's shape and dtype, textured), the others untouched; the
    panel of frame A + k is the one of frame A moved left by 2 % of the width per frame, so that what tracks on it is
    a motion of its own."""
    seq = simulate(numbered(n=20, loader=loader), "occlude=5:8,drop=7")
    assert seq.name == "num+drop7+occlude5-8"
    frames = [f.image for f in seq]
    assert [int(im[0, 0]) for im in frames[:5]] == [0, 1, 2, 3, 4] and ids(seq)[8:] == list(range(9, 20))
    assert all(im.shape == (6, 8) and im.dtype == np.uint8 for im in frames)
    assert [im.std() > 0 for im in frames] == [False] * 5 + [True] * 3 + [False] * 11  # 5, 6, 8: the panel
    big = np.zeros((120, 400), np.uint8)
    a, b = occluder(big, 0), occluder(big, 3)  # 3 frames: 3 x 8 px
    np.testing.assert_array_equal(a[:, 24:], b[:, :-24])
    assert np.std(a) > 30 and a.min() >= 25 and a.max() <= 230  # textured, within 10-90 % of the range
    colour = occluder(np.zeros((120, 400, 3), np.uint16), 1)
    assert colour.shape == (120, 400, 3) and colour.dtype == np.uint16 and colour.max() > 50_000


@pytest.mark.parametrize("loader", [True, False])
def test_repeat_shows_the_last_image_again_while_time_and_ground_truth_go_on(loader):
    base = numbered(loader=loader)
    seq = simulate(base, "repeat=5:6,repeat=12,drop=14")
    assert ids(seq) == [0, 1, 2, 3, 4, 4, 4, 7, 8, 9, 10, 11, 11, 13, 15, 16, 17, 18, 19]
    assert seq.name == "num+drop14+repeat5-6+repeat12" and len(seq) == 19
    kept = [i for i in range(20) if i != 14]
    np.testing.assert_allclose(seq.stamps, base.stamps[kept])  # each frame keeps its own stamp
    np.testing.assert_allclose(seq.ground_truth.poses[:, 0, 3], kept)  # and its own pose: the robot moved on
    assert int(seq.frame(6).image[0, 0]) == 4


def test_repeat_needs_an_image_before_it():
    with pytest.raises(DataError, match="frame 0 has no image"):
        Faults.parse("repeat=0:2")
    with pytest.raises(DataError, match="removed"):
        simulate(numbered(), "drop=4,repeat=5")
    with pytest.raises(DataError, match="outside"):
        simulate(numbered(), "repeat=18:25")


@pytest.mark.parametrize("loader", [True, False])
def test_body_shows_one_panel_at_the_bottom_of_every_frame(loader):
    """``body=P``: the bottom P % of the rows (in the middle; 3/4 of that at the sides) show the same textured panel in
    every frame, only the camera's noise differs; the rows above are the frame's own."""
    big = np.zeros((100, 200), np.uint8)

    def load(i):
        return big + np.uint8(10 * i)

    seq = Sequence("flat", "synthetic", Camera.from_intrinsics(100.0, 100.0, 100.0, 50.0, 200, 100),
                   5.0 + 0.1 * np.arange(4), lambda: (load(i) for i in range(4)), None, loader=load if loader else None)
    frames = [f.image for f in simulate(seq, "body=20,drop=2")]
    assert simulate(seq, "body=20").name == "flat+body20" and Faults.parse("body=20").body == 20
    assert len(frames) == 3 and all(im.shape == (100, 200) and im.dtype == np.uint8 for im in frames)
    for k, im in zip([0, 1, 3], frames):
        assert np.all(im[:80] == 10 * k)  # above the panel: the frame itself
    assert np.all(frames[0][80:, 100] != 0) and np.all(frames[0][:85, 0] == 0)  # 20 rows in the middle, 15 at the side
    a, b = frames[0][85:].astype(int), frames[2][85:].astype(int)
    assert a.std() > 15 and 0 < np.abs(a - b).mean() < 5  # textured; the same panel but for the noise
    colour = body_panel(np.zeros((100, 200, 3), np.uint16), 30, seed=1)
    assert colour.dtype == np.uint16 and colour[99].min() > 0 and np.all(colour[:69] == 0)


@pytest.mark.parametrize("loader", [False, True])
def test_passer_crosses_the_view_during_the_stop_from_right_to_left(loader):
    """``stop=K:R,passer=W``: the stop's R copies show a textured panel W % of the width wide (rows 15-85 %) that
    enters at the right, crosses and leaves at the left, over fresh camera noise; the other frames are their own and
    the ground truth is held through the stop."""
    flat = np.full((100, 200), 128, np.uint8)

    def load(i):
        return flat

    seq = Sequence("flat", "synthetic", Camera.from_intrinsics(100.0, 100.0, 100.0, 50.0, 200, 100),
                   5.0 + 0.1 * np.arange(4), lambda: (load(i) for i in range(4)), None, loader=load if loader else None)
    out = simulate(seq, "stop=1:9,passer=30")
    frames = [f.image for f in out]
    assert out.name == "flat+stop1x9+passer30" and len(frames) == 13
    assert np.all(frames[0] == 128) and np.all(frames[1] == 128) and np.all(frames[11] == 128)  # before and after
    centres = []
    for im in frames[2:11]:  # the nine copies
        assert im.shape == (100, 200) and im.dtype == np.uint8
        cols = np.flatnonzero(np.abs(im[15:85].astype(int) - 128).max(axis=0) > 20)  # the panel's columns
        assert np.abs(im[:15].astype(int) - 128).max() <= 15 and 1 < np.abs(im[:15].astype(int) - 128).mean() < 3
        centres.append(cols.mean() if cols.size else np.nan)
        assert cols.size <= 60 and (cols.size == 0 or cols.max() - cols.min() < 60)
    assert np.all(np.diff(centres) < 0) and centres[0] > 150 and centres[-1] < 50  # right to left, in view throughout
    assert not np.array_equal(frames[2][:15], frames[3][:15])  # fresh noise in every copy
    # passer=W:A:B: across frames A..B whatever the camera does (no stop, no noise added)
    out = simulate(seq, "passer=30:1:3")
    frames = [f.image for f in out]
    assert out.name == "flat+passer30f1-3" and len(frames) == 4 and np.all(frames[0] == 128)
    for im in frames[1:]:
        assert np.all(im[:15] == 128) and np.abs(im[15:85].astype(int) - 128).max() > 20
    colour = passer_panel(np.zeros((100, 200, 3), np.uint16), 5, 9, 30, seed=1)
    assert colour.dtype == np.uint16 and colour[50, 100].min() > 0.1 * 65535 * 0.9
