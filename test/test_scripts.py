"""scripts/: the GPU check parses and answers --help without a GPU (its --dry-run is run by hand: minutes)."""
import shutil
import subprocess

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_gpu_check_parses_and_documents_itself():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    res = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    assert "--dry-run" in res.stdout and "bench" in res.stdout and "width_multiplier=1.0" in res.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option" in bad.stderr
