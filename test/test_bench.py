"""kp2d bench: library result and CLI JSON (smoke: few frames, keys and consistency, no timings asserted)."""
import json

import pytest
import torch

from kp2d_ros.cli import main
from kp2d_ros.config import VOConfig
from kp2d_ros.data.synthetic import synthetic_sequence
from kp2d_ros.errors import DataError
from kp2d_ros.eval.bench import STAGES, bench
from kp2d_ros.networks.io_net import IONet
from kp2d_ros.networks.keypoint_net import KeyPointNet
from kp2d_ros.networks.weights import save_network


@pytest.fixture(scope="module")
def seq():
    return synthetic_sequence(n_frames=5, width=160, height=120)


def test_bench_library_orb(seq):
    cfg = VOConfig()
    cfg.frontend.type = "orb"
    result = bench(seq, cfg, frames=3, warmup=1)
    assert result.frames == 3 and set(result.stage_ms) == set(STAGES)
    r = result.report()
    assert r["device"] == "cpu" and r["frontend"] == "orb" and r["precision"] is None
    assert r["fps"] > 0 and r["stages_ms"]["total"] >= r["stages_ms"]["network"] > 0
    assert r["machine"]["logical_cores"] >= 1 and "cpu" in r["machine"]
    # CPU time per frame: measured (a pipeline that runs does use CPU), and not more than the threads can give
    assert len(result.cpu_ms) == 3 and r["cpu_ms"] > 0
    assert r["cpu_ms"] <= 1.2 * result.machine["logical_cores"] * max(result.interval_ms.max(), 1.0)
    with pytest.raises(DataError):
        bench(seq, cfg, frames=3, warmup=4)  # only 5 frames: nothing left to time


def test_bench_cli_kp2d_with_io_net(tmp_path):
    torch.manual_seed(0)
    kp = save_network(KeyPointNet(width_multiplier=0.25).eval(), tmp_path / "kp.pt")
    io = save_network(IONet(channels=16, num_blocks=1).eval(), tmp_path / "io.pt")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--frontend", "kp2d", "--resolution", "160x120", "--device", "cpu", "--model", str(kp),
               "--io-net", str(io), "--frames", "3", "--warmup", "1", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert {"fps", "stages_ms", "device", "machine"} <= set(r)
    assert set(r["stages_ms"]) >= {"network", "matching", "io_net", "pose"}
    assert r["device"] == "cpu" and r["resolution"] == [160, 120] and r["frames"] == 3
    from kp2d_ros.runtime import cpu_has_native_bf16

    # the dtype the network really ran in: fp32 by default (frontend.half_precision false since stop 56)
    assert r["io_net"] == str(io) and r["model"] == str(kp)
    assert r["precision"] == "fp32"
    assert r["stages_ms"]["io_net"] > 0  # the scorer ran
    rc = main(["bench", "--frontend", "kp2d", "--resolution", "160x120", "--device", "cpu", "--model", str(kp),
               "--io-net", str(io), "--precision", "half", "--frames", "2", "--warmup", "1", "--repeat", "2",
               "--out", str(out)])
    assert rc == 0  # --repeat pools the runs: the dtype must survive the pooling (half is bf16 only where native)
    assert json.loads(out.read_text())["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    rc = main(["bench", "--frontend", "kp2d", "--resolution", "160x120", "--device", "cpu", "--model", str(kp),
               "--io-net", "none", "--precision", "fp32", "--frames", "2", "--warmup", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and r["io_net"] is None and r["stages_ms"]["io_net"] == 0 and r["precision"] == "fp32"


def test_bench_repeated_reports_each_run_and_the_load(seq, tmp_path):
    import numpy as np

    from kp2d_ros.eval.bench import bench_repeated

    cfg = VOConfig()
    cfg.frontend.type = "orb"
    res = bench_repeated(seq, cfg, repeat=3, frames=2, warmup=1)
    r = res.report()
    assert r["repeat"] == 3 and len(r["fps_runs"]) == 3 and len(r["runs"]) == 3
    assert r["fps"] == pytest.approx(float(np.median(r["fps_runs"])))
    assert [run["fps"] for run in r["runs"]] == r["fps_runs"] and r["frames"] == 2
    assert r["cpu_ms"] == pytest.approx(float(np.median(np.concatenate([run.cpu_ms for run in res.runs]))))
    assert all(run["cpu_ms"] > 0 for run in r["runs"])
    assert len(r["load_average_before"]) == 3 and len(r["load_average_after"]) == 3
    with pytest.raises(DataError):
        bench_repeated(seq, cfg, repeat=0)
    out = tmp_path / "bench.json"
    assert main(["bench", "--frontend", "orb", "--resolution", "160x120", "--frames", "2", "--warmup", "1",
                 "--repeat", "2", "--out", str(out)]) == 0
    j = json.loads(out.read_text())
    assert j["repeat"] == 2 and len(j["fps_runs"]) == 2 and j["fps"] == pytest.approx(float(np.median(j["fps_runs"])))
    assert "load_average_before" in j and "load_average_after" in j
    assert main(["bench", "--frontend", "orb", "--repeat", "0"]) == 2


def test_bench_cli_applies_the_frontend_scale(tmp_path):
    """--resolution is the image size; the frontend works at it times frontend.scale, as in kp2d replay."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--frontend", "orb", "--resolution", "160x120", "--frames", "2", "--warmup", "1",
                 "--set", "frontend.scale=0.5", "--out", str(out)]) == 0
    j = json.loads(out.read_text())
    assert j["image_size"] == [160, 120] and j["resolution"] == [80, 60]
    assert main(["bench", "--frontend", "orb", "--resolution", "160x120", "--frames", "2", "--warmup", "1",
                 "--out", str(out)]) == 0
    j = json.loads(out.read_text())
    assert j["image_size"] == [160, 120] and j["resolution"] == [160, 120]
