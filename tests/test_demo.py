"""`cgnet demo` on a bare clone: no CamVid anywhere, so it downloads it (from a loopback server)."""
from __future__ import annotations

import errno
import json
import os

import cv2
import numpy as np
import pytest

from cgnet.cli import main
from cgnet.data.camvid import CAMVID_COUNTS
from cgnet.data.catalog import CAMVID
from cgnet.visualize import titled_with_legend
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


def bands(width: int, entries: int, names=None):
    """(title band height, legend height, layout) of a `width`-pixel picture, worked out from the
    rule visualize.py documents: font scale width / 1600 within 0.4..1.0; a line as tall as 'Ag'
    with its descent, padding half a line; legend cells of a swatch, padding, the widest name and
    two paddings, as many to a row as fit."""
    scale = min(1.0, max(0.4, width / 1600))
    (_, above), descent = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    line = above + descent
    pad = max(2, line // 2)
    names = names or [*CAMVID.classes, "unlabelled (not scored)"]
    cell = line + pad + max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in names) + 2 * pad
    columns = max(1, min(entries, (width - pad) // cell))
    rows = -(-entries // columns)
    return line + 2 * pad, pad + rows * (line + pad), (line, pad, cell, columns)


def test_the_grid_gets_column_titles_and_a_class_legend():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (2 * 360, 3 * 480, 3), dtype=np.uint8)  # 2 rows of 3 CamVid-sized columns
    titles = ["image", "ground truth", "prediction"]
    names, colors = [*CAMVID.classes, "unlabelled (not scored)"], [*CAMVID.palette, (0, 0, 0)]
    out = titled_with_legend(picture, titles, names, colors)
    title, legend_height, (line, pad, cell, columns) = bands(1440, 12)
    assert columns == 3  # 1440 px fit 3 cells of the widest name (at scale 0.9): 4 rows
    assert out.shape == (title + 720 + legend_height, 1440, 3)
    np.testing.assert_array_equal(out[title:title + 720], picture)  # the picture itself is untouched
    for c in range(3):  # each title's ink is centred over its column
        ink = np.nonzero((out[:title, c * 480:(c + 1) * 480] < 128).any(axis=(0, 2)))[0]
        assert len(ink) and abs((ink[0] + ink[-1]) / 2 - 240) <= 2, titles[c]
    top = title + 720
    for i, color in enumerate(colors):
        x, y = pad + (i % columns) * cell, top + pad + (i // columns) * (line + pad)
        assert (out[y + 1:y + line - 1, x + 1:x + line - 1] == color).all(), names[i]
        assert tuple(out[y, x]) == (128, 128, 128)  # the outline: a white class would still show
        assert (out[y:y + line, x + line + pad:x + cell - 2 * pad] < 128).any(), names[i]  # its name beside it
    assert (out[top + legend_height - pad:] == 255).all()  # padding under the last row


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
    grid = cv2.cvtColor(cv2.imread(str(bare_clone / "demo" / "grid.png")), cv2.COLOR_BGR2RGB)
    # 233 rows of image | truth | prediction (4 x 4 frames), between the title band and a legend of
    # CamVid's 11 classes and the unlabelled pixels' black, one to a row at this width
    title, legend_height, (line, pad, _, _) = bands(12, 12)
    assert grid.shape == (title + CAMVID_COUNTS["test"] * 4 + legend_height, 3 * 4, 3)
    top = title + CAMVID_COUNTS["test"] * 4
    for i, color in enumerate([*CAMVID.palette, (0, 0, 0)]):  # each swatch's visible part (cut at 12 px)
        y = top + pad + i * (line + pad)
        assert (grid[y + 1:y + line - 1, pad + 1:] == color).all(), i
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
