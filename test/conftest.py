"""Shared test options: ``--runslow`` enables tests marked ``slow``; data under ../shared/data."""
import os
from pathlib import Path

import pytest

# DDS must stay on this machine whatever the caller exported.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KP2D_DATA", REPO.parent / "shared" / "data"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test, run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data, or skip when absent (a user's fresh clone)."""
    if not DATA.is_dir():
        pytest.skip(f"data folder {DATA} not present")
    return DATA


def data_path(*parts: str) -> Path:
    """Path under the data folder; skips the calling test when it is missing."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p
