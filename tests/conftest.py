"""Fixtures shared by the test modules (helpers are plain modules in tests/helpers/)."""
import pytest
import torch

from cgnet import CGNet, make_meta, save_checkpoint
from cgnet.common import inductor_cache
from cgnet.data.catalog import CAMVID
from cgnet.preprocess import make_spec
from helpers.camvid_like import make_camvid_like
from helpers.paths import real_camvid
from helpers.randomize import randomized

# the compile cache cgnet's commands use, fixed for the whole session: a test that runs `main` with
# its own CGNET_CACHE must not move the kernels of the tests after it to an empty folder
inductor_cache()


def pytest_collection_modifyitems(config, items):
    """Every test that uses the real CamVid (the camvid_root fixture, directly or through another
    fixture) is marked `data`, so `-m "not data"` leaves it out."""
    for item in items:
        if "camvid_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


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


@pytest.fixture(scope="module")
def randomized_ckpt(tmp_path_factory):
    """A tiny CamVid checkpoint (M2N3) with randomized BN statistics and PReLU slopes: folding
    them for inference (exports, the compiled path) matters."""
    torch.manual_seed(0)
    model = randomized(CGNet(11, m=2, n=3))
    meta = make_meta(model, preprocess=make_spec("standard"), classes=list(CAMVID.classes),
                     palette=[list(c) for c in CAMVID.palette], ignore_index=11, dataset="camvid")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, meta)
