"""``kp2d stress``: the variants, their summary, and the command end to end on a short synthetic sequence."""
import json

import numpy as np
import pytest
from test_replay_cli import _assert_clean_error, kp2d

from kp2d_ros.data.faults import Faults
from kp2d_ros.data.synthetic import write_synthetic_sequence
from kp2d_ros.errors import ConfigError
from kp2d_ros.eval.stress import DEFAULT_VARIANTS, VariantOutcome, compare, random_drops, stress_variants, summarize


def test_random_drops_are_reproducible_spare_the_first_frame_and_follow_the_rate():
    a, b = random_drops(2000, 0.1, 3), random_drops(2000, 0.1, 3)
    assert a == b and a != random_drops(2000, 0.1, 4)
    assert 0 not in a and all(1 <= i < 2000 for i in a) and a == sorted(set(a))
    assert 160 < len(a) < 240  # 10 % of 1999
    assert random_drops(50, 0.0, 0) == []
    with pytest.raises(ConfigError, match="drop rate"):
        random_drops(50, 1.0, 0)


def test_variants_are_the_replay_options_they_name():
    by_name = {v.name: v for v in stress_variants(160, ["clean", "lag3", "drops1", "drops1+lag2", "every2", "stop",
                                                         "shade", "glare", "jitter20", "repeat2"])}
    assert (by_name["clean"].simulate, by_name["clean"].backend_lag) == (None, 0)
    assert (by_name["lag3"].simulate, by_name["lag3"].backend_lag) == (None, 3)
    spec = by_name["drops1"].simulate
    removed = sorted(i for a, b in Faults.parse(spec).drop for i in range(a, b + 1))
    assert removed == random_drops(160, 0.1, 1) and by_name["drops1"].backend_lag == 0
    assert (by_name["drops1+lag2"].simulate, by_name["drops1+lag2"].backend_lag) == (spec, 2)
    assert by_name["every2"].simulate == "every=2" and by_name["stop"].simulate == "stop=80:10"
    assert by_name["shade"].simulate == "gain=80:159:50" and by_name["glare"].simulate == "gain=80:159:180"
    assert Faults.parse(by_name["shade"].simulate).gain == ((80, 159, 50),)
    assert (by_name["jitter20"].simulate, by_name["jitter20"].backend_lag) == ("jitter=20", 0)
    assert by_name["repeat2"].simulate == "repeat=81:82" and Faults.parse("repeat=81:82").repeat == ((81, 82),)
    assert "shade" not in DEFAULT_VARIANTS and "jitter20" not in DEFAULT_VARIANTS  # earlier runs: the defaults
    assert "repeat2" not in DEFAULT_VARIANTS
    for bad in (["clean", "clean"], ["lag0"], ["every1"], ["drops"], ["fast"], ["jitter0"], ["jitter50"], ["repeat0"],
                ["repeat80"]):
        with pytest.raises(ConfigError):
            stress_variants(160, bad)
    with pytest.raises(ConfigError, match="at least 3 frames"):
        stress_variants(2, ["clean"])


def test_the_summary_takes_median_gmean_and_worst_over_the_variants_that_have_a_number():
    def o(name, odom, path=None):
        return VariantOutcome(name=name, simulate=None, backend_lag=0, frames=10, tracked_frames=9,
                              odom_ate_m=odom, odom_rpe_rot_deg=0.01, path_ate_m=path)

    s = summarize("seq", "sift", [o("a", 0.01, 0.02), o("b", 0.04), o("c", 0.02, 0.08), o("d", None)])
    assert s.stats["odom"]["n"] == 3 and s.stats["odom"]["median"] == pytest.approx(0.02)
    assert s.stats["odom"]["gmean"] == pytest.approx(0.02) and s.stats["odom"]["worst"] == "b"
    assert s.stats["path"] == {"n": 2, "median": pytest.approx(0.05), "gmean": pytest.approx(0.04),
                               "max": pytest.approx(0.08), "worst": "c"}
    assert "map" not in s.stats
    js = s.to_json()
    assert [v["name"] for v in js["variants"]] == ["a", "b", "c", "d"] and json.dumps(js)


def test_stress_end_to_end_on_a_short_sequence(tmp_path):
    seq = write_synthetic_sequence(tmp_path / "seq", n_frames=12)
    out = tmp_path / "out"
    res = kp2d("stress", seq, "--frontend", "sift", "--variants", "clean,lag2,drops0,stop", "--drop-rate", "0.2",
               "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "stress.json").read_text())
    rows = {v["name"]: v for v in summary["variants"]}
    assert list(rows) == ["clean", "lag2", "drops0", "stop"] and summary["frontend"] == "sift"
    assert rows["clean"]["frames"] == 12 and rows["stop"]["frames"] == 22
    assert rows["drops0"]["frames"] == 12 - len(random_drops(12, 0.2, 0)) < 12
    assert json.loads((out / "lag2" / "backend.json").read_text())["mode"] == "lagged 2"
    assert json.loads((out / "clean" / "backend.json").read_text())["mode"] == "deterministic"
    for name, row in rows.items():
        report = json.loads((out / name / "report.json").read_text())
        assert report["ate_rmse_m"] == row["odom_ate_m"] and row["odom_ate_m"] < 0.05, name
        assert row["path_ate_m"] is not None and row["map_ate_m"] is not None
    odom = [r["odom_ate_m"] for r in rows.values()]
    assert summary["stats"]["odom"]["median"] == pytest.approx(float(np.median(odom)))
    assert summary["stats"]["odom"]["max"] == pytest.approx(max(odom))
    assert "odom  ATE over 4 variants" in res.stdout
    assert (out / "config.yaml").is_file()
    # an A/B: another configuration on two of the variants, against the first run
    res = kp2d("stress", seq, "--frontend", "sift", "--set", "backend.window=0", "--variants", "stop,clean",
               "--compare", out / "stress.json", "--out", tmp_path / "b", "--no-progress")
    assert res.returncode == 0, res.stderr
    b = json.loads((tmp_path / "b" / "stress.json").read_text())
    assert b["compared_with"]["file"] == str(out / "stress.json")
    assert list(b["compared_with"]["stats"]) == ["odom", "odom_rpe_rot"]  # no path or map without the backend
    rot = b["compared_with"]["stats"]["odom_rpe_rot"]
    assert rot["new_gmean"] == pytest.approx(float(np.sqrt(np.prod([v["odom_rpe_rot_deg"] for v in b["variants"]]))))
    assert "RPE rot against" in res.stdout and "deg/frame" in res.stdout
    odom = b["compared_with"]["stats"]["odom"]
    assert odom["variants"] == ["stop", "clean"] and odom["base_gmean"] == pytest.approx(
        float(np.sqrt(rows["stop"]["odom_ate_m"] * rows["clean"]["odom_ate_m"])))
    assert "over 2 common variants" in res.stdout
    _assert_clean_error(kp2d("stress", seq, "--variants", "clean", "--compare", out / "clean" / "report.json",
                             "--out", tmp_path / "c"), "not a kp2d stress result")


def test_stress_bad_variant_is_one_error_line(tmp_path):
    seq = write_synthetic_sequence(tmp_path / "seq", n_frames=4)
    _assert_clean_error(kp2d("stress", seq, "--variants", "clean,warp", "--out", tmp_path / "o"), "warp")


def test_compare_counts_the_variants_where_the_new_run_is_lower():
    def run(values):
        return {"variants": [{"name": n, "odom_ate_m": v, "path_ate_m": None, "map_ate_m": None,
                              "odom_rpe_rot_deg": None} for n, v in values.items()]}

    base = run({"clean": 0.10, "lag2": 0.20, "drops0": 0.40})
    new = run({"lag2": 0.10, "clean": 0.10, "stop": 0.01, "drops0": float("nan")})
    c = compare(base, new)
    assert list(c) == ["odom"] and c["odom"]["variants"] == ["lag2", "clean"] and c["odom"]["n"] == 2
    assert c["odom"]["base_gmean"] == pytest.approx(np.sqrt(0.02)) and c["odom"]["new_gmean"] == pytest.approx(0.1)
    assert c["odom"]["ratio"] == pytest.approx(0.1 / np.sqrt(0.02)) and c["odom"]["new_lower"] == 1
    with pytest.raises(ConfigError, match="no variant in common"):
        compare(base, run({"stop": 0.1}))
