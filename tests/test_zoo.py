"""The weights catalogue (`cgnet weights list|get`, names wherever a checkpoint goes): every row
complete, every name reachable by its loader, the download run for real against a loopback HTTP
server that serves mmseg-written checkpoints (tests/data/mmseg_cgnet/)."""
import dataclasses
import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cgnet import load_model
from cgnet.checkpoint import load_checkpoint, resolve_weights
from cgnet.cli import main
from cgnet.data.catalog import resolve_dataset
from cgnet.data.cityscapes import CITYSCAPES
from cgnet.download import DownloadError
from cgnet.engine.config import TrainConfig
from cgnet.engine.train import build_model_and_optimizer, read_init
from cgnet.zoo import WEIGHTS, format_table, weights_file
from helpers.camvid_archive import ArchiveServer, closed_port_url
from helpers.paths import REPO

FIXTURE = Path(__file__).parent / "data" / "mmseg_cgnet" / "cgnet_512x1024_60k_cityscapes.pth"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("CGNET_CACHE", str(tmp_path / "cache"))
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    with ArchiveServer(FIXTURE.parent) as srv:
        yield srv


def served(monkeypatch, server, name: str, data: bytes, *, prefix: str | None = None):
    """Point the catalogue row `name` at the loopback server (its file name and the rest kept);
    the row's hash prefix becomes the served file's own unless `prefix` is given."""
    entry = WEIGHTS[name]
    server.add_route(entry.file, data)
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(WEIGHTS, name, dataclasses.replace(entry, url=server.url(entry.file),
                                                           hash_prefix=prefix or digest[:8]))
    return digest


@pytest.mark.parametrize("name", WEIGHTS)
def test_every_row_has_its_fields(name):
    e = WEIGHTS[name]
    assert e.name == name and e.dataset and e.classes > 0 and e.licence and e.provenance
    assert re.fullmatch(r"\d+x\d+", e.input_size)
    assert re.fullmatch(r"\d+\.\d\d (test|val) mIoU", e.score)
    # a score measured elsewhere says who reported it; "measured here" only for our own weights
    assert e.reported_by.startswith("reported by ") or (e.shipped and e.reported_by.startswith("measured here"))
    if e.shipped:
        assert hashlib.sha256(resolve_weights(name).read_bytes()).hexdigest() == e.sha256
    else:
        assert e.url.startswith("https://") and e.url.endswith("/" + e.file)
        # mmseg names its files ..._TIMESTAMP-<first 8 hex digits of the SHA-256>.pth
        assert re.fullmatch(rf".+-{e.hash_prefix}\.pth", e.file) and re.fullmatch(r"[0-9a-f]{8}", e.hash_prefix)
    assert not e.sha256 or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
    assert name in format_table() and (e.url or "shipped inside the package") in format_table()


@pytest.mark.parametrize("name", WEIGHTS)
def test_every_name_loads_by_name(name, monkeypatch, server, tmp_path):
    if not WEIGHTS[name].shipped:
        served(monkeypatch, server, name, FIXTURE.read_bytes())
    model = load_model(name)
    assert model.num_classes == WEIGHTS[name].classes and model.meta["dataset"] == WEIGHTS[name].dataset
    if not WEIGHTS[name].shipped:
        assert (tmp_path / "cache" / "weights" / WEIGHTS[name].file).is_file()
        assert model.meta["classes"] == list(CITYSCAPES.classes)
        hub = torch.hub.load(str(REPO), "cgnet_weights", source="local", name=name)
        assert all(torch.equal(a, b) for a, b in zip(hub.state_dict().values(), model.state_dict().values()))
        assert server.hits[f"/{WEIGHTS[name].file}"] == 1  # the second load came from the cache


def test_weights_get_through_the_cli(monkeypatch, server, tmp_path, capsys):
    digest = served(monkeypatch, server, "cityscapes-mmseg", FIXTURE.read_bytes())
    assert main(["weights", "get", "cityscapes-mmseg", "--cache", str(tmp_path / "mine")]) == 0
    path = tmp_path / "mine" / WEIGHTS["cityscapes-mmseg"].file
    assert capsys.readouterr().out == f"{path}\n"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert list((tmp_path / "mine").iterdir()) == [path]  # no .part left


def test_wrong_hash_is_refused_and_nothing_kept(monkeypatch, server, tmp_path, capsys):
    digest = served(monkeypatch, server, "cityscapes-mmseg", FIXTURE.read_bytes(), prefix="124ea03b")
    entry = WEIGHTS["cityscapes-mmseg"]
    assert main(["weights", "get", "cityscapes-mmseg"]) == 2
    assert capsys.readouterr().err.rsplit("\r", 1)[-1].splitlines()[-1] + "\n" == (
        f"cgnet weights: error: the cityscapes-mmseg weights from {entry.url} have SHA-256 {digest}, expected "
        "124ea03b...: the download is not the published file (it was removed; run again)\n")
    assert not any((tmp_path / "cache" / "weights").iterdir())


def test_full_sha256_is_checked_too(monkeypatch, server):
    data = FIXTURE.read_bytes()
    served(monkeypatch, server, "cityscapes-mmseg", data)
    monkeypatch.setitem(WEIGHTS, "cityscapes-mmseg", dataclasses.replace(
        WEIGHTS["cityscapes-mmseg"], sha256=hashlib.sha256(data).hexdigest()[:8] + "0" * 56))
    with pytest.raises(DownloadError, match="the download is not the published file"):
        weights_file("cityscapes-mmseg", progress=False)


def test_offline_is_one_line_with_the_url_and_the_manual_way(monkeypatch, capsys):
    url = closed_port_url(WEIGHTS["cityscapes-mmseg"].file)
    monkeypatch.setitem(WEIGHTS, "cityscapes-mmseg", dataclasses.replace(WEIGHTS["cityscapes-mmseg"], url=url))
    assert main(["info", "--checkpoint", "cityscapes-mmseg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cgnet info: error: could not reach {url} (")
    assert err.endswith("); download it by hand and give the file's path instead of 'cityscapes-mmseg'\n")


def test_train_init_cityscapes_mmseg_matches_classes_by_name(monkeypatch, server, capsys):
    """A driving dataset with some of Cityscapes' classes, in another order and case: their rows
    of the weight and of the bias come from mmseg's head; the new class starts fresh."""
    served(monkeypatch, server, "cityscapes-mmseg", FIXTURE.read_bytes())
    names = ["Car", "road", "lane marking", "person"]
    cfg = TrainConfig(init="cityscapes-mmseg")
    data = SimpleNamespace(info=resolve_dataset("mine", names, 255), class_weights=[1.0] * len(names))
    capsys.readouterr()
    model = build_model_and_optimizer(cfg, data, torch.device("cpu"), read_init(cfg)).model
    printed = capsys.readouterr().out
    theirs = load_checkpoint(resolve_weights("cityscapes-mmseg"))[0]
    rows = [CITYSCAPES.classes.index(n) for n in ("car", "road", "person")]
    for ours, j in zip((0, 1, 3), rows):
        assert torch.equal(model.classifier.weight[ours], theirs["classifier.weight"][j])
        assert torch.equal(model.classifier.bias[ours], theirs["classifier.bias"][j])
    assert not torch.equal(model.classifier.weight[2], theirs["classifier.weight"][2])
    assert ("  classifier rows matched by class name: 3 of 4; reordered: Car from row 13 (car), road from row 0, "
            "person from row 11\n"
            "  re-initialised classifier rows (classes the --init weights lack): lane marking\n") in printed
    assert model.config["classifier_bias"] is True
