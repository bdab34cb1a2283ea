import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CGNET_SHARED", REPO.parent / "shared"))
DATA = Path(__file__).resolve().parent / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; missing shared data is a failure, not a skip."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need the shared folder beside the repository "
                    f"(set CGNET_SHARED to point elsewhere)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
