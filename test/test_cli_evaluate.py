"""``kp2d evaluate EST GT``: the replay report for a trajectory file, against every ground-truth form."""
import json

import numpy as np
import pytest
from conftest import data_path
from scipy.spatial.transform import Rotation

from kp2d_ros.cli import main
from kp2d_ros.data import open_sequence, write_bag, write_tum
from kp2d_ros.eval.replay import REPORT_KEYS
from kp2d_ros.types import Trajectory

ONLY_REPLAY_KNOWS = {"tracked_frames", "fps", "camera_k1"}  # tracking states, timing, self-calibration: not in a trajectory file


def evaluate(capsys, *args) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory):
    """One ``kp2d replay`` run of TUM fr2/desk (ORB): its output folder."""
    out = tmp_path_factory.mktemp("replay") / "tum"
    assert main(["replay", str(data_path("vo", "tum_fr2_desk_20f")), "--frontend", "orb", "--no-progress",
                 "--set", "frontend.num_features=1000", "--out", str(out)]) == 0
    return out


def test_equal_metrics_to_replay_on_the_same_run(replay_run, tmp_path, capsys):
    capsys.readouterr()
    replayed = json.loads((replay_run / "report.json").read_text())
    code, out, err = evaluate(capsys, replay_run / "trajectory_est.tum", data_path("vo", "tum_fr2_desk_20f"),
                              "--out", tmp_path / "ev")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert tuple(report) == tuple(replayed) == REPORT_KEYS  # the same report function
    assert replayed["ate_rmse_m"] > 0.001 and replayed["rpe_rot_deg"] > 0.01  # a real, non-zero error
    for key in REPORT_KEYS:
        if key in ONLY_REPLAY_KNOWS:
            assert report[key] is None
        elif isinstance(replayed[key], float):
            assert report[key] == pytest.approx(replayed[key], rel=1e-6), key  # TUM files keep 9 decimals
        else:
            assert report[key] == replayed[key], key
    assert report["frontend"] == "orb"  # from the config.yaml next to the trajectory
    assert (tmp_path / "ev" / "trajectory.png").stat().st_size > 10_000
    assert "ATE (Sim3)" in out and f"{replayed['ate_rmse_m']:.3f} m" in out


def test_every_ground_truth_form_gives_the_same_metrics(replay_run, tmp_path, capsys):
    est = replay_run / "trajectory_est.tum"
    seq = open_sequence(data_path("vo", "tum_fr2_desk_20f"))
    bag = write_bag(tmp_path / "bag", seq, storage="mcap")
    reports = {}
    for form, gt in {"tum file": replay_run / "trajectory_gt.tum", "folder": data_path("vo", "tum_fr2_desk_20f"),
                     "bag": bag}.items():
        code, _, err = evaluate(capsys, est, gt, "--out", tmp_path / form.replace(" ", "_"))
        assert code == 0, (form, err)
        reports[form] = json.loads((tmp_path / form.replace(" ", "_") / "report.json").read_text())
    for form, rep in reports.items():
        for key in ("ate_rmse_m", "rpe_rot_deg", "rpe_trans_m", "path_length_m"):
            assert rep[key] == pytest.approx(reports["folder"][key], rel=1e-6), (form, key)


@pytest.mark.parametrize("folder", ["kitti07_f0000-0159", "euroc_v101_static_19f"])
def test_similar_copy_of_the_ground_truth_scores_zero(folder, tmp_path, capsys):
    """The ground truth moved by a similarity (monocular: any scale) and noise-free scores ~0 against the
    KITTI / EuRoC folder (through each reader), and a perturbed copy scores its perturbation."""
    gt = open_sequence(data_path("vo", folder)).ground_truth
    S_R = Rotation.from_euler("xyz", [10, -30, 70], degrees=True).as_matrix()
    poses = gt.poses.copy()
    poses[:, :3, :3] = S_R @ poses[:, :3, :3]
    poses[:, :3, 3] = 0.37 * poses[:, :3, 3] @ S_R.T + [1.0, -2.0, 0.5]
    write_tum(Trajectory(gt.stamps, poses), tmp_path / "similar.tum")
    code, _, err = evaluate(capsys, tmp_path / "similar.tum", data_path("vo", folder), "--out", tmp_path / "a")
    assert code == 0, err
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["frames"] == len(gt) and rep["ate_rmse_m"] < 1e-6 and rep["rpe_rot_deg"] < 1e-4
    assert rep["frontend"] is None  # no config next to the file
    if folder.startswith("kitti"):  # the KITTI pose file with its times: the same ground truth
        shifted = poses.copy()
        shifted[5:, :3, 3] += 0.37 * np.array([0.1, 0.0, 0.0]) @ S_R.T  # a 0.1 m jump after frame 5
        write_tum(Trajectory(gt.stamps, shifted), tmp_path / "jump.tum")
        d = data_path("vo", folder)
        code, _, err = evaluate(capsys, tmp_path / "jump.tum", d / "poses_07.txt", "--gt-times", d / "times_07.txt",
                                "--out", tmp_path / "b")
        assert code == 0, err
        rep = json.loads((tmp_path / "b" / "report.json").read_text())
        assert 0.01 < rep["ate_rmse_m"] < 0.1 and rep["rpe_trans_m"] > 0.1 / np.sqrt(len(gt)) * 0.9


def test_bad_input_gives_one_error_line(replay_run, tmp_path, capsys):
    est = replay_run / "trajectory_est.tum"
    d = data_path("vo", "kitti07_f0000-0159")
    cases = [
        ((tmp_path / "missing.tum", replay_run / "trajectory_gt.tum"), "missing.tum"),
        ((est, d / "poses_07.txt"), "needs its times file"),
        ((est, d), "have ground truth within 0.01 s"),  # another sequence: no common stamps
        ((est, data_path("vo", "euroc_v101_static_19f") / "mav0" / "cam0" / "sensor.yaml"), "expected a TUM"),
    ]
    for args, fragment in cases:
        code, _, err = evaluate(capsys, *args, "--out", tmp_path / "x")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
