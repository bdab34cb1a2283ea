"""The Hub's model folders (cgnet[hub]): save_pretrained -> from_pretrained on local folders and
through huggingface_hub's cache laid out by hand (offline); strict loading; the model card."""
import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import cgnet
from cgnet import CGNet, CheckpointError, load_model, make_meta
from cgnet.zoo import WEIGHTS

pytest.importorskip("safetensors")


def logits(model, seed=0):
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def test_round_trip_of_the_shipped_weights(tmp_path):
    model = load_model("camvid")
    folder = model.save_pretrained(tmp_path / "cgnet-camvid")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = cgnet.from_pretrained(folder)
    assert torch.equal(logits(model), logits(again))
    assert again.meta == json.loads(json.dumps(model.meta)) and again.meta["weights"] == "camvid"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "CGNet" and config["arch"] == model.config
    assert config["classes"] == model.meta["classes"] and config["palette"] == model.meta["palette"]
    assert config["preprocess"] == model.meta["preprocess"]
    card = (folder / "README.md").read_text()
    # the card carries the catalogue's test mIoU of these weights, as model-index YAML
    # the score the README says `cgnet eval` reproduces for the shipped weights
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    measured = re.search(r"`cgnet eval --dataset camvid --split test` reproduces (\d+\.\d+)", readme)[1]
    assert WEIGHTS["camvid"].score == f"{measured} test mIoU"
    assert ("model-index:\n- name: camvid\n  results:\n  - task:\n      type: image-segmentation\n"
            "      name: Semantic Segmentation\n    dataset:\n      name: camvid\n      type: camvid\n"
            f"      split: test\n    metrics:\n    - type: mean_iou\n      value: {measured}\n      name: test mIoU\n") in card
    assert WEIGHTS["camvid"].training in card and model.meta["provenance"] in card
    assert card.startswith("---\nlibrary_name: cgnet\nlicense: mit\n")


def test_round_trip_with_a_classifier_bias_and_a_given_score(tmp_path):
    model = CGNet(5, m=2, n=3, classifier_bias=True).eval()
    with torch.no_grad():
        model.classifier.bias.uniform_(-1, 1)
    model.meta = make_meta(model, classes=list("abcde"), dataset="mine")
    folder = cgnet.save_pretrained(model, tmp_path / "mine", score="51.2 val mIoU", training_command="cgnet train x")
    again = cgnet.from_pretrained(str(folder))
    assert again.config == model.config and torch.equal(logits(model), logits(again))
    card = (folder / "README.md").read_text()
    assert "      split: val\n    metrics:\n    - type: mean_iou\n      value: 51.2\n" in card
    assert "`cgnet train x`" in card


def test_loading_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = cgnet.save_pretrained(load_model("camvid"), tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    del state["stage3.0.glo.fc1.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys stage3\.0\.glo\.fc1\.bias$"):
        cgnet.from_pretrained(folder)


def test_existing_folder_and_wrong_sources_are_refused(tmp_path):
    model = load_model("camvid")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(cgnet.CGNetError):
        model.save_pretrained(tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    with pytest.raises(CheckpointError, match="neither a model folder nor a Hub repository id"):
        cgnet.from_pretrained(tmp_path / "no" / "such" / "thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json; not a folder cgnet.save_pretrained wrote"):
        cgnet.from_pretrained(tmp_path / "empty")


def test_repo_id_reads_huggingface_hubs_cache_offline(tmp_path, monkeypatch):
    """A repository as huggingface_hub caches it (models--OWNER--NAME/refs/main naming a commit
    whose snapshot folder holds the files), read with HF_HUB_OFFLINE set: no network."""
    pytest.importorskip("huggingface_hub")
    model = load_model("camvid")
    folder = model.save_pretrained(tmp_path / "m")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--cgnet-camvid"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = importlib.import_module("huggingface_hub.constants")  # a submodule the package does not import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    again = cgnet.from_pretrained("someone/cgnet-camvid")
    assert torch.equal(logits(model), logits(again)) and again.meta["classes"] == model.meta["classes"]
    with pytest.raises(CheckpointError, match=r"^someone/other: not a local folder, and the Hub repository could "
                                              r"not be read \("):
        cgnet.from_pretrained("someone/other")
