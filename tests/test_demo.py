"""`cgnet demo` on a bare clone: no CamVid anywhere, so it downloads it (from a loopback server)."""
from __future__ import annotations

import errno
import json
import os

import cv2
import pytest

from cgnet.cli import main
from cgnet.data.camvid import CAMVID_COUNTS
from cgnet.data.catalog import CAMVID
from helpers.camvid_archive import ArchiveServer, closed_port_url, make_archive

NOT_FOUND = "no CamVid in data/CamVid, ../shared/datasets/CamVid: downloading it into data/CamVid from"


@pytest.fixture
def bare_clone(tmp_path, monkeypatch):
    """A working folder without data/ whose parent has no shared/, and no data settings."""
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in ("CGNET_DATA", "CGNET_CAMVID_URL", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return work


@pytest.mark.slow
def test_demo_downloads_camvid_when_missing(bare_clone, tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    make_archive(site / "master.zip")  # 4x4 frames
    with ArchiveServer(site) as server:
        url = server.url("master.zip")
        # more frames than the test split has: the grid takes all 233
        assert main(["demo", "--download-url", url, "--device", "cpu", "--workers", "0", "--frames", "500"]) == 0
        assert server.hits["/master.zip"] == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{NOT_FOUND} {url}"
    root = bare_clone / "data" / "CamVid"
    assert out[1] == f"CamVid downloaded to {root}"
    assert sorted(p.name for p in (bare_clone / "data").iterdir()) == ["CamVid"]
    assert len((root / CAMVID.list_file("test")).read_text().splitlines()) == CAMVID_COUNTS["test"]
    scores = json.loads((bare_clone / "demo" / "scores.json").read_text())
    assert (scores["dataset"], scores["split"], scores["data_root"]) == ("camvid", "test", str(root))
    table = (bare_clone / "demo" / "per_class_iou.txt").read_text()
    lines = table.splitlines()
    assert [line[:16].strip() for line in lines] == ["class", *CAMVID.classes, "mIoU", "pixel acc", "mean acc"]
    assert lines[-3] == f"{'mIoU':<16}{100 * scores['miou']:>8.2f}"
    assert "\n".join(out[2:]).find(table) > 0  # the same table was printed
    grid = cv2.imread(str(bare_clone / "demo" / "grid.png"))
    assert grid.shape == (CAMVID_COUNTS["test"] * 4, 3 * 4, 3)  # 233 rows of image | truth | prediction
    assert len(list((bare_clone / "demo" / "frames" / "overlay").iterdir())) == CAMVID_COUNTS["test"]


def test_demo_download_failure_is_one_line(bare_clone, monkeypatch, capsys):
    url = closed_port_url("master.zip")
    monkeypatch.setenv("CGNET_CAMVID_URL", url)
    assert main(["demo", "--device", "cpu", "--workers", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"{NOT_FOUND} {url}\n"
    assert captured.err == (f"cgnet demo: error: could not reach {url} ({os.strerror(errno.ECONNREFUSED)}); "
                            f"download it by hand from {url} and run: "
                            f"cgnet data download camvid --root data/CamVid --archive <file>\n")
    assert list(bare_clone.iterdir()) == []  # no data/, no demo/
