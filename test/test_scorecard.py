"""``kp2d scorecard``: issues 10's and 13's verdicts from one run's numbers, the Markdown, and the CLI end to end."""
import json

import numpy as np
import pytest
from test_replay_cli import _assert_clean_error, kp2d

from kp2d_ros.eval.homography import MethodSummary
from kp2d_ros.eval.scorecard import (KeypointRow, Scorecard, SpeedRow, VORow, issue10_targets, issue13_targets,
                                     to_markdown, without_backend)


def _kp(method, resolution, top_k, rep, loc, c1, c3, c5, ms):
    return KeypointRow(method, resolution, top_k, MethodSummary(rep, loc, c1, c3, c5, ms, 30))


def _card(**settings) -> Scorecard:
    vo = [VORow("kitti07", "default", "kp2d", 160, 159, 0.30, 0.035, 0.01, 1.3),
          VORow("kitti07", "baseline", "sift", 160, 159, 0.25, 0.034, 0.01, 2.0),
          VORow("synthetic", "default", "kp2d", 80, 79, 0.017, 0.006, 0.002, 1.4),
          VORow("synthetic", "baseline", "sift", 80, 79, 0.010, 0.006, 0.001, 2.7)]
    kp = [_kp("kp2d", [320, 240], 300, 0.76, 0.99, 0.57, 0.77, 0.77, 0.60),
          _kp("sift", [320, 240], 300, 0.61, 0.75, 0.67, 0.97, 0.97, 0.45),
          _kp("kp2d", [640, 480], 1000, 0.70, 1.08, 0.40, 0.90, 0.90, 0.54),
          _kp("sift", [640, 480], 1000, 0.56, 0.97, 0.50, 0.87, 0.93, 0.38)]
    card = Scorecard(vo=vo, keypoints=kp, settings=dict(settings))
    card.targets = issue10_targets(card)
    return card


def test_issue10_verdicts_compare_the_numbers_of_the_same_run():
    t = {x.name: x for x in _card().targets}
    assert t["keypoints_loc_320"].met is False and t["keypoints_loc_320"].bound == 0.85
    assert t["keypoints_ms_320"].bound == pytest.approx(1.3 * 0.45) and t["keypoints_ms_320"].met is True
    assert t["keypoints_c3_640"].met is True  # 0.90 >= SIFT's 0.87
    assert t["demo_ate"].bound == pytest.approx(0.020) and t["demo_ate"].met is True
    assert t["kitti07_ate"].met is True and t["kitti07_ate_vs_baseline"].met is False
    assert t["kitti07_rpe_rot"].met is True
    # speed not run: no verdict rather than a wrong one
    assert t["speed_1226x370"].value is None and t["speed_1226x370"].met is None


def test_speed_verdict_and_clipped_sequences_are_not_judged():
    card = _card(max_frames=10)
    card.speed = [SpeedRow("default", "kp2d", [1226, 370], 1.5, [1.5], {}, None, None, None),
                  SpeedRow("baseline", "sift", [1226, 370], 2.5, [2.5], {}, None, None, None)]
    t = {x.name: x for x in issue10_targets(card)}
    assert t["speed_1226x370"].met is False
    for name in ("demo_ate", "kitti07_ate", "kitti07_ate_vs_baseline", "kitti07_rpe_rot"):
        assert t[name].met is None, name  # the issue's targets are on whole sequences
    assert t["keypoints_loc_320"].met is False  # the network's lines do not depend on the clip


def test_markdown_has_every_row_and_verdict():
    card = _card()
    md = to_markdown(card)
    assert md.count("| kitti07 |") == 2 and md.count("| synthetic |") == 2
    assert "| kp2d | 640x480 / 1000 |" in md and "| sift | 320x240 / 300 |" in md
    assert md.count("**no**") == sum(t.met is False for t in card.targets) == 2


def test_scorecard_cli_on_the_synthetic_street(tmp_path):
    out = tmp_path / "sc"
    res = kp2d("scorecard", tmp_path / "no_data", "--out", out, "--parts", "vo", "--sequences", "synthetic",
               "--max-frames", "5", "--no-progress")
    assert res.returncode == 0, res.stderr
    card = json.loads((out / "scorecard.json").read_text())
    assert [(r["sequence"], r["config"], r["frontend"]) for r in card["vo"]] == [
        ("synthetic", "default", "kp2d"), ("synthetic", "baseline", "sift")]
    assert all(r["frames"] == 5 and r["tracked_frames"] >= 3 for r in card["vo"])
    assert (out / "vo" / "default" / "synthetic" / "report.json").is_file()
    assert "frontend:\n      type: kp2d" in (out / "config_default.yaml").read_text().replace("\r", "")
    assert "| synthetic | baseline | sift |" in (out / "scorecard.md").read_text()
    assert all(t["met"] is None for t in card["targets"])  # clipped and partial: nothing judged
    # the backend part: each configuration again without the backend (issue 13), replays written beside
    res = kp2d("scorecard", tmp_path / "no_data", "--out", out, "--parts", "backend", "--sequences", "synthetic",
               "--max-frames", "5", "--no-progress")
    assert res.returncode == 0, res.stderr
    card = json.loads((out / "scorecard.json").read_text())
    assert [r["config"] for r in card["vo"]] == ["default", "baseline", "default_w0", "baseline_w0"]
    assert "window: 0" in (out / "config_default_w0.yaml").read_text()
    assert (out / "vo" / "baseline_w0" / "synthetic" / "report.json").is_file()
    assert {t["issue"] for t in card["targets"]} == {10, 13} and all(t["met"] is None for t in card["targets"])


def _vo(sequence, config, ate, rpe_rot):
    return VORow(sequence, config, "kp2d" if config.startswith("default") else "sift", 20, 19, ate, rpe_rot, 0.01, 2.0)


def _speed(config, fps):
    return SpeedRow(config, "kp2d", [1226, 370], fps, [fps], {}, None, None, None)


def test_issue13_verdicts_compare_each_configuration_with_its_twin_without_the_backend():
    vo = [_vo("kitti07", "default", 0.061, 0.0339), _vo("kitti07", "default_w0", 0.515, 0.0340),
          _vo("kitti07", "baseline", 0.400, 0.0337), _vo("kitti07", "baseline_w0", 0.489, 0.0336),
          _vo("tum_fr2_desk", "default", 0.0124, 0.43), _vo("tum_fr2_desk", "default_w0", 0.0111, 0.41),
          _vo("tum_fr2_desk", "baseline", 0.0081, 0.52), _vo("tum_fr2_desk", "baseline_w0", 0.0088, 0.52),
          _vo("euroc_static", "default", 0.0008, 0.04), _vo("euroc_static", "default_w0", 0.0008, 0.04)]
    card = Scorecard(vo=vo, speed=[_speed("default", 2.9), _speed("default_w0", 3.5), _speed("baseline", 4.0),
                                   _speed("baseline_w0", 5.5)])
    t = {x.name: x for x in issue13_targets(card)}
    assert all(x.issue == 13 for x in t.values())
    assert t["kitti07_ate_backend_default"].met is True
    assert t["kitti07_ate_backend_default"].bound == pytest.approx(0.75 * 0.515)
    assert t["kitti07_ate_backend_baseline"].met is False  # 0.400 > 0.75 x 0.489
    assert t["kitti07_rpe_rot_backend_default"].met is True and t["kitti07_rpe_rot_backend_baseline"].met is False
    assert t["tum_ate_backend_default"].met is False and t["tum_ate_backend_baseline"].met is True
    assert t["euroc_static_ate_backend_default"].met is True  # equal is not worse
    assert t["euroc_static_ate_backend_baseline"].met is None  # no rows: no verdict
    assert t["speed_backend_default"].met is True and t["speed_backend_baseline"].met is False  # 2.9/3.5, 4.0/5.5
    # clipped sequences are not judged; the speed rounds do not depend on the clip
    card.settings["max_frames"] = 10
    t = {x.name: x for x in issue13_targets(card)}
    assert t["kitti07_ate_backend_default"].met is None and t["tum_ate_backend_baseline"].met is None
    assert t["speed_backend_default"].met is True
    # without the backend part there is nothing to compare with
    assert all(x.met is None for x in issue13_targets(Scorecard(vo=vo[::2], speed=card.speed[::2])))


def test_the_twins_differ_from_their_configuration_only_by_the_window():
    from kp2d_ros.config import VOConfig

    cfg = VOConfig()
    twins = without_backend({"default": cfg})
    assert list(twins) == ["default_w0"] and twins["default_w0"].backend.window == 0
    assert cfg.backend.window > 0  # the original is left as it was
    twins["default_w0"].backend.window = cfg.backend.window
    assert twins["default_w0"] == cfg


def test_scorecard_cli_bad_input(tmp_path):
    _assert_clean_error(kp2d("scorecard", tmp_path, "--out", tmp_path / "o", "--parts", "vo,nope"), "--parts")
    _assert_clean_error(kp2d("scorecard", tmp_path / "missing", "--out", tmp_path / "o", "--parts", "vo",
                             "--sequences", "kitti07"), "not found")


def test_speed_rounds_interleave_the_configurations(tmp_path):
    from kp2d_ros.config import VOConfig
    from kp2d_ros.data.synthetic import write_synthetic_sequence
    from kp2d_ros.eval.scorecard import SPEED_IMAGE_SIZE, run_speed

    seq = write_synthetic_sequence(tmp_path / "seq", n_frames=4)
    cfgs = {}
    for label, frontend in (("default", "orb"), ("baseline", "sift")):
        cfg = VOConfig()
        cfg.frontend.type, cfg.backend.window = frontend, 0
        cfgs[label] = cfg
    rows = run_speed(seq, cfgs, repeat=2, frames=2, warmup=1)
    assert [(r.config, r.frontend) for r in rows] == [("default", "orb"), ("baseline", "sift")]
    for r in rows:
        assert len(r.fps_runs) == 2 and all(v > 0 for v in r.fps_runs) and r.image_size == list(SPEED_IMAGE_SIZE)
        assert r.fps == pytest.approx(float(np.median(r.fps_runs)))
    assert rows[0].load_average_before == rows[1].load_average_before  # one interleaved series, one load record
