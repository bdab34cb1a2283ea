"""mmsegmentation's CGNet checkpoints: read by `cgnet.load_model`, with mmseg's logits.

tests/data/mmseg_cgnet/ holds both published Cityscapes CGNet configs' models with random
weights, saved and run by mmseg's own code (tests/helpers/mmseg_cgnet.py, versions in the
folder's README.md)."""
from pathlib import Path

import pytest
import torch

from cgnet import CGNet, CheckpointError, load_model, save_checkpoint
from cgnet.checkpoint import MMSEG_CGNET_MEAN, load_checkpoint
from cgnet.data.cityscapes import CITYSCAPES
from cgnet.preprocess import to_tensor
from helpers.mmseg_cgnet import CONFIGS, FULL_SIZE, ODD_SIZE, fixture_image, sample_pixels
from helpers.rounding import fp32_difference_bound

DATA = Path(__file__).parent / "data" / "mmseg_cgnet"


@pytest.fixture(scope="module")
def mmseg_logits():
    return torch.load(DATA / "logits.pt", weights_only=True)


def cgnet_logits(model: CGNet, size: tuple[int, int]) -> torch.Tensor:
    """cgnet's logits (classes x H x W) of the fixture image: RGB as cgnet reads images, the
    checkpoint's own preprocessing."""
    rgb = fixture_image(*size)[:, :, ::-1]
    with torch.no_grad():
        return model(to_tensor(rgb, model.meta["preprocess"])[None])[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_mmseg_checkpoint_gives_mmsegs_logits_at_an_odd_size(name, mmseg_logits):
    model = load_model(DATA / f"{name}.pth")
    expected = mmseg_logits[f"{name}/odd"]
    got = cgnet_logits(model, ODD_SIZE)
    assert got.shape == expected.shape == (19, *ODD_SIZE)
    bound = fp32_difference_bound(model, expected)
    assert float((got - expected).abs().max()) <= bound, bound
    assert float(expected.std()) > 0.1  # random weights that do something: not a trivially equal constant


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_mmseg_checkpoint_gives_mmsegs_logits_at_512x1024(name, mmseg_logits):
    model = load_model(DATA / f"{name}.pth")
    rows, cols = sample_pixels(*FULL_SIZE)
    expected = mmseg_logits[f"{name}/512x1024"]
    got = cgnet_logits(model, FULL_SIZE)[:, torch.from_numpy(rows), torch.from_numpy(cols)]
    assert got.shape == expected.shape == (19, len(rows))
    assert float((got - expected).abs().max()) <= fp32_difference_bound(model, expected)


@pytest.mark.parametrize("name", CONFIGS)
def test_mmseg_meta_gives_cityscapes_classes_and_mmsegs_preprocessing(name):
    model = load_model(DATA / f"{name}.pth")
    meta = model.meta
    assert meta["source"] == "mmsegmentation" and meta["dataset"] == "cityscapes"
    assert meta["classes"] == list(CITYSCAPES.classes)
    assert meta["palette"] == [list(c) for c in CITYSCAPES.palette]
    assert meta["ignore_index"] == CITYSCAPES.ignore_index == 255
    # the configs' data_preprocessor: mean (RGB after bgr_to_rgb), std 1, on 0-255 values
    assert meta["preprocess"] == {"mode": "mmseg", "channel_order": "RGB", "value_scale": 1.0,
                                  "mean": list(MMSEG_CGNET_MEAN), "std": [1.0, 1.0, 1.0]}
    assert model.config == {"num_classes": 19, "m": 3, "n": 21, "dropout": 0.0, "classifier_bias": True}
    # mmseg's 496,325 weights: ours (496,306 for 19 classes) plus the head's 19 biases
    assert sum(p.numel() for p in model.parameters()) == 496306 + 19


def test_mmseg_weights_round_trip_through_our_format(tmp_path):
    model = load_model(DATA / f"{next(iter(CONFIGS))}.pth")
    path = save_checkpoint(tmp_path / "ours.pt", model, model.meta)
    again = load_model(path)
    assert again.config == model.config and "classifier.bias" in again.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_models_without_bias_keep_their_keys():
    model = CGNet(11)
    assert "classifier.bias" not in model.state_dict() and "classifier_bias" not in model.config
    shipped = load_model("camvid")
    assert shipped.classifier.bias is None and "classifier_bias" not in shipped.meta["arch"]


def test_bare_mmseg_state_dict_and_unknown_keys(tmp_path):
    ckpt = torch.load(DATA / f"{next(iter(CONFIGS))}.pth", weights_only=True)
    torch.save(ckpt["state_dict"], tmp_path / "bare.pth")
    state, meta, _ = load_checkpoint(tmp_path / "bare.pth")
    assert meta["source"] == "mmsegmentation" and meta["classes"] is None  # no meta: names unknown
    assert meta["preprocess"]["mean"] == list(MMSEG_CGNET_MEAN)
    assert state.keys() == load_model(DATA / f"{next(iter(CONFIGS))}.pth").state_dict().keys()
    ckpt["state_dict"]["backbone.level2.3.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"extra\.pth: keys that mmsegmentation's CGNet does not have: "
                                              r"backbone\.level2\.3\.extra\.weight$"):
        load_model(tmp_path / "extra.pth")
