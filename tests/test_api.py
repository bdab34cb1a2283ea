"""The README's Python API, end to end, and the commands on a machine with no dataset anywhere."""
import json

import cv2
import numpy as np
import pytest
import torch

import cgnet
from cgnet.cli import main
from cgnet.deploy.export import synthetic_frames
from cgnet.visualize import default_palette


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """A working folder with no dataset in any default location and an empty export cache."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # ./data and ../shared/datasets are looked up from here
    monkeypatch.delenv("CGNET_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CGNET_CACHE", str(tmp_path / "home" / ".cache" / "cgnet"))
    return work


@pytest.fixture
def api_checkpoint(tmp_path):
    """A checkpoint written exactly as the README's Python API shows."""
    torch.manual_seed(0)
    net = cgnet.CGNet(num_classes=5, m=2, n=2, dropout=0.0)
    names = ["road", "car", "tree", "sky", "person"]
    return cgnet.save_checkpoint(tmp_path / "mine.pt", net, cgnet.make_meta(net, classes=names, dataset="streets"))


def frames(folder, count=3, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(synthetic_frames(count, size, seed=7)):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def test_make_meta_fills_sensible_defaults():
    net = cgnet.CGNet(num_classes=3, m=2, n=2)
    meta = cgnet.make_meta(net)
    assert meta["preprocess"] == cgnet.make_spec("standard") and meta["preprocess_default"] is True
    assert meta["classes"] == ["class0", "class1", "class2"] and meta["ignore_index"] == 255
    assert meta["palette"] == default_palette(3) and len({tuple(c) for c in meta["palette"]}) == 3
    assert meta["dataset"] == "custom"
    json.dumps(meta)  # JSON-able
    given = cgnet.make_meta(net, preprocess=cgnet.make_spec("standard", mean=[0.5] * 3, std=[0.2] * 3))
    assert "preprocess_default" not in given and given["preprocess"]["mean"] == [0.5] * 3


@pytest.mark.slow
def test_readme_api_checkpoint_works_in_predict_export_and_eval(api_checkpoint, bare_machine, capsys):
    model = cgnet.load_model(api_checkpoint)
    x = cgnet.to_tensor(np.zeros((40, 56, 3), np.uint8), model.meta["preprocess"])
    assert model(x[None]).argmax(1).shape == (1, 40, 56)

    images = frames(bare_machine / "imgs")
    assert main(["predict", str(images), "--checkpoint", str(api_checkpoint), "--backend", "torch",
                 "--out", "pred", "--no-progress"]) == 0
    mask = cv2.imread(str(bare_machine / "pred" / "masks" / "f0.png"), cv2.IMREAD_UNCHANGED)
    expected = model(cgnet.to_tensor(cv2.cvtColor(cv2.imread(str(images / "f0.png")), cv2.COLOR_BGR2RGB),
                                     model.meta["preprocess"])[None]).argmax(1)[0].numpy()
    assert mask.shape == (48, 64) and (mask == expected).all()

    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", str(api_checkpoint), "--format", "onnx", "--out", "mine.onnx"]) == 0
    out = capsys.readouterr().out
    assert "verified on 8 synthetic frames (no streets data found)" in out and (bare_machine / "mine.onnx").is_file()

    # eval on a labelled list of the checkpoint's own (custom) dataset
    labels = bare_machine / "labels"
    labels.mkdir()
    lines = []
    for f in sorted(images.iterdir()):
        cv2.imwrite(str(labels / f.name), np.full((48, 64), 2, np.uint8))
        lines.append(f"imgs/{f.name} labels/{f.name}\n")
    (bare_machine / "val.txt").write_text("".join(lines))
    assert main(["eval", "--checkpoint", str(api_checkpoint), "--data-root", str(bare_machine), "--split", "val.txt",
                 "--workers", "0", "--json", "s.json"]) == 0
    scores = json.loads((bare_machine / "s.json").read_text())
    assert scores["dataset"] == "streets" and scores["pixels"] == 3 * 48 * 64


@pytest.mark.slow
def test_predict_with_defaults_and_no_dataset_anywhere(bare_machine, capsys):
    images = frames(bare_machine / "imgs", count=2)
    assert main(["predict", str(images), "--no-progress"]) == 0  # shipped weights, backend auto
    out = capsys.readouterr().out
    assert (bare_machine / "predictions" / "masks" / "f1.png").is_file()
    from cgnet.deploy.formats import format_for_backend
    from cgnet.deploy.predictor import plan_inference
    plan = plan_inference()  # the fastest accurate path for this CPU, printed first
    assert plan.why is None or out.splitlines()[0] == plan.why
    if plan.backend != "torch":  # exported once, verified on the images being predicted, cached
        assert "verified on 2 of the 2 images being predicted against eager fp32" in out
        assert "synthetic" not in out
        suffix = format_for_backend(plan.backend).suffix
        cached = list((bare_machine.parent / "home" / ".cache" / "cgnet").glob(f"*{suffix}"))
        assert len(cached) == 1 and not list(cached[0].parent.glob(".*partial*"))


def test_int8_without_training_data_is_refused(api_checkpoint, bare_machine, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", str(api_checkpoint), "--format", "onnx", "--precision", "int8",
                 "--out", "q.onnx"]) == 2
    assert capsys.readouterr().err == (
        "cgnet export: error: int8 calibration needs the training images of the checkpoint's dataset (streets) "
        "(none found in the default locations): give --data-root with its list files\n")
    assert list(bare_machine.iterdir()) == []


@pytest.mark.slow
def test_cityscapes_checkpoint_exports_without_any_data(bare_machine, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    net = cgnet.CGNet(num_classes=19, m=2, n=2)
    ckpt = cgnet.save_checkpoint(tmp_path / "cs.pt", net, cgnet.make_meta(net, dataset="cityscapes"))
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", "cs.onnx"]) == 0
    assert "verified on 8 synthetic frames (no cityscapes data found)" in capsys.readouterr().out


@pytest.mark.slow
def test_verification_uses_the_checkpoints_own_dataset_when_found(api_checkpoint, bare_machine, capsys):
    pytest.importorskip("onnxruntime")
    images = frames(bare_machine / "own", count=4)
    assert main(["export", "--checkpoint", str(api_checkpoint), "--format", "onnx", "--out", "m.onnx",
                 "--data-root", str(images)]) == 0
    assert f"verified on 4 real frames from {images}" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(api_checkpoint), "--format", "onnx", "--out", "m2.onnx",
                 "--data-root", str(bare_machine / "missing")]) == 2
    assert capsys.readouterr().err == f"cgnet export: error: --data-root {bare_machine / 'missing'}: no such folder\n"


def test_without_the_dataset_an_export_is_verified_on_the_frames_being_predicted(bare_machine):
    from cgnet.deploy.export import verification_images
    from cgnet.deploy.predict import input_frames
    from cgnet.images import read_rgb
    folder = bare_machine / "imgs"
    frames(folder, count=5)
    images = sorted(folder.iterdir())
    meta = {"dataset": "camvid"}
    got, source = verification_images(meta, None, 3, input_frames(images, []))
    assert source == "3 of the 5 images being predicted"
    for frame, path in zip(got, [images[0], images[2], images[4]]):  # evenly spaced
        assert np.array_equal(frame, read_rgb(path))
    clip = bare_machine / "street.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    got, source = verification_images(meta, None, 4, input_frames([], [clip]))
    assert source == "4 frames of street.mp4, the video being predicted"
    # frames 0, 4, 7, 11 of a clip whose frame i is grey level 20 i (mp4v is lossy: nearest level)
    assert [int(round(f.mean() / 20)) for f in got] == [0, 4, 7, 11] and got[0].shape == (48, 64, 3)
    got, source = verification_images(meta, None, 8, input_frames([], []))  # nothing given: synthetic
    assert source == "8 synthetic frames (no camvid data found)" and len(got) == 8
