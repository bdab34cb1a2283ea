"""Where the tests find their files, and the rule for tests that need the real CamVid.

The real CamVid is looked for where `cgnet demo` looks ($CGNET_DATA, ./data/CamVid,
../shared/datasets/CamVid; $CGNET_SHARED replaces ../shared). Without it those tests are
skipped with one reason that says how to get it; under CGNET_REQUIRE_DATA=1 (CI) they fail.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"  # small files the tests ship with
ORIGINAL_KEYS = DATA / "original_checkpoint_keys_c19_M3N21.txt"

NO_CAMVID = ("the real CamVid is not here ($CGNET_DATA, ./data/CamVid or ../shared/datasets/CamVid); "
             "get it with `cgnet data download camvid --root data/CamVid`")


def camvid_candidates() -> list[Path]:
    shared = Path(os.environ.get("CGNET_SHARED", REPO.parent / "shared"))
    found = [Path(os.environ["CGNET_DATA"])] if os.environ.get("CGNET_DATA") else []
    return found + [REPO / "data" / "CamVid", shared / "datasets" / "CamVid"]


def real_camvid() -> Path:
    """The real CamVid's root; skips the test (fails under CGNET_REQUIRE_DATA=1) when absent."""
    for root in camvid_candidates():
        if (root / "camvid_test_list.txt").is_file():
            return root
    if os.environ.get("CGNET_REQUIRE_DATA") == "1":
        pytest.fail(f"CGNET_REQUIRE_DATA=1 but {NO_CAMVID}")
    pytest.skip(NO_CAMVID)
