"""Fixtures shared by the test modules (helpers are plain modules in tests/helpers/)."""
import pytest
import torch

from helpers.camvid_like import make_camvid_like
from helpers.paths import real_camvid


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """A small generated dataset in the real CamVid layout (8 train, 3 val, 3 test frames)."""
    return make_camvid_like(tmp_path_factory.mktemp("data") / "CamVid")


@pytest.fixture(scope="session")
def camvid_root():
    """The real CamVid (skipped when absent, a failure under CGNET_REQUIRE_DATA=1)."""
    return real_camvid()
