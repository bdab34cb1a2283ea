"""OpenVINO int8: NNCF's quantisation with accuracy control, what the file says it kept in float, and
the refusals without the dataset's training or val frames."""
import cv2
import numpy as np
import pytest
import torch

from cgnet import load_model
from cgnet.cli import main
from cgnet.common import InputError
from cgnet.confusion import ConfusionMatrix
from cgnet.data.catalog import CAMVID
from cgnet.data.listset import SegDataset
from cgnet.deploy import export as exporter
from cgnet.deploy import formats, openvino_int8, runners
from cgnet.deploy.formats import read_exported_meta
from cgnet.deploy.predictor import make_predictor
from helpers.camvid_like import make_camvid_like

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def small_calibration(monkeypatch):
    real = exporter.calibration_inputs
    monkeypatch.setattr(exporter, "calibration_inputs", lambda m, root, count=200, crop=360: real(m, root, 16, 32))


def eager_miou(model, root) -> float:
    """mIoU of eager fp32 PyTorch on the val frames accuracy control scores (all 3 of the fixture's)."""
    ds = SegDataset(root, CAMVID.split_path(root, "val"), CAMVID, model.meta["preprocess"])
    cm = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
    for i in range(len(ds)):
        image, label, _ = ds[i]
        with torch.no_grad():
            cm.update(model(image[None])[0].argmax(0), label)
    return cm.scores()["miou"]


@pytest.mark.slow
def test_accuracy_control_records_what_it_quantised_and_kept_in_float(randomized_ckpt, camvid, tmp_path, monkeypatch,
                                                                      capsys):
    small_calibration(monkeypatch)
    monkeypatch.setitem(formats.AGREEMENT, "int8", 0.3)  # random weights quantise badly
    out = tmp_path / "q.xml"
    assert main(["export", "--checkpoint", str(randomized_ckpt), "--format", "openvino", "--precision", "int8",
                 "--out", str(out), "--data-root", str(camvid)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy control on 3 of the 3 frames of camvid_val_list.txt" in printed
    int8 = read_exported_meta(out)["int8"]
    control = int8["accuracy_control"]
    # every convolution and matrix product of the fp32 IR is either int8 or float in the int8 file
    fp32 = exporter.export(load_model(randomized_ckpt), tmp_path / "f.xml", "openvino", log=lambda *a: None)
    ov = pytest.importorskip("openvino")
    names = [op.get_friendly_name() for op in ov.Core().read_model(str(fp32)).get_ordered_ops()
             if op.get_type_name() in openvino_int8.QUANTISABLE]
    assert int8["int8_ops"] > 0 and int8["int8_ops"] + len(int8["float_ops"]) == len(names)
    assert set(int8["float_ops"]) <= set(names)
    # what accuracy control returned to float has no quantiser in the file
    assert not set(control["reverted_to_float"]) & openvino_int8._quantized_inputs(ov.Core().read_model(str(out)))
    assert any(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(out)).get_ops())
    # the fp32 score accuracy control compared against is the model's own, computed independently
    assert control["miou_fp32"] == pytest.approx(eager_miou(load_model(randomized_ckpt), camvid), abs=1e-9)
    assert control["max_drop"] == 0.003 and control["held"] == (control["miou_fp32"] - control["miou_int8"] <= 0.003)
    assert (f"{int8['int8_ops']} convolutions and matrix products in int8, {len(int8['float_ops'])} in float; "
            f"accuracy control returned {len(control['reverted_to_float'])} quantised activations to float") in printed
    # an int8 file runs at int8 only; its float parts in fp32
    with pytest.raises(InputError) as refused:
        runners.openvino_runner(out, "bf16")
    assert str(refused.value) == f"{out}: an int8 OpenVINO file runs at int8, not bf16"
    with pytest.raises(InputError) as refused:
        make_predictor(out, precision="bf16")
    assert str(refused.value) == (f"{out} was exported as int8, not bf16: give --precision int8 (or auto), or export "
                                  "it again with --precision bf16")


def test_miou_function_is_the_confusion_matrix_score():
    """NNCF's validation function: the mIoU of cgnet.confusion over all items, and each item's own."""
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(1, 4, 6, 7)).astype(np.float32) for _ in range(3)]
    labels = [rng.integers(0, 5, (6, 7)) for _ in range(3)]  # 4 = the ignore id
    items = [(x, y) for x, y in zip(logits, labels)]
    miou, each = openvino_int8.miou_function(4, 4)(lambda x: [x], items)
    total = ConfusionMatrix(4, 4)
    for x, y in items:
        total.update(torch.from_numpy(x[0].argmax(0)), torch.from_numpy(y))
    assert miou == total.scores()["miou"] and len(each) == 3
    single = ConfusionMatrix(4, 4)
    single.update(torch.from_numpy(logits[1][0].argmax(0)), torch.from_numpy(labels[1]))
    assert each[1] == single.scores()["miou"]


def test_int8_is_refused_without_the_training_images(randomized_ckpt, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((24, 32, 3), np.uint8))
    out = tmp_path / "q.xml"
    assert main(["export", "--checkpoint", str(randomized_ckpt), "--format", "openvino", "--precision", "int8",
                 "--out", str(out), "--data-root", str(folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cgnet export: error: int8 calibration needs the training images of the checkpoint's dataset (camvid) in "
        f"{folder}: give --data-root with its list files"]
    assert list(tmp_path.glob("q*")) == []


def test_int8_is_refused_without_the_labelled_val_images(randomized_ckpt, tmp_path, capsys, monkeypatch):
    small_calibration(monkeypatch)
    root = make_camvid_like(tmp_path / "CamVid", counts={"train": 2})  # no val list: verified on the folder's images
    cv2.imwrite(str(root / "a.png"), np.zeros((24, 32, 3), np.uint8))
    out = tmp_path / "q.xml"
    assert main(["export", "--checkpoint", str(randomized_ckpt), "--format", "openvino", "--precision", "int8",
                 "--out", str(out), "--data-root", str(root)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cgnet export: error: int8 accuracy control needs the labelled val images of the checkpoint's dataset "
        f"(camvid) in {root}: give --data-root with its list files"]
    assert list(tmp_path.glob("q*")) == []
