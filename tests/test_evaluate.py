"""cgnet eval and test: scores against independent counts and the official evaluator, multi-scale
and flip views, the Cityscapes submission, original-release checkpoints."""
import json
import zipfile

import cv2
import numpy as np
import pytest
import torch

from cgnet import CGNet, load_model, make_meta, save_checkpoint
from cgnet.cli import main
from cgnet.data.cityscapes import CITYSCAPES, CITYSCAPES_TRAIN_TO_LABEL_ID
from cgnet.confusion import ConfusionMatrix
from cgnet.preprocess import make_spec, to_tensor
from helpers import original_reference as ref
from helpers.cityscapes_tree import make_cityscapes_tree
from helpers.paths import ORIGINAL_KEYS
from helpers.training import train


@pytest.mark.slow
def test_eval_table_matches_an_independent_count(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    train(camvid, out, "--epochs", "1")
    capsys.readouterr()
    scores_file, save = tmp_path / "scores.json", tmp_path / "pred"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-root", str(camvid), "--split", "val",
                 "--json", str(scores_file), "--save-dir", str(save), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "Bicyclist" in printed
    scores = json.loads(scores_file.read_text())
    # the same predictions, counted with numpy
    model = load_model(out / "last.pt")
    spec = model.meta["preprocess"]
    conf = np.zeros((11, 11), np.int64)
    for line in (camvid / "camvid_val_list.txt").read_text().splitlines():
        img_path, lab_path = (camvid / p for p in line.split())
        rgb = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            pred = model(to_tensor(rgb, spec)[None]).argmax(1)[0].numpy()
        gt = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
        keep = gt != 11
        np.add.at(conf, (gt[keep], pred[keep]), 1)
        assert (cv2.imread(str(save / "trainids" / img_path.name), cv2.IMREAD_UNCHANGED) == pred).all()
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert scores["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert len(list((save / "overlay").glob("*.jpg"))) == 3 and len(list((save / "color").glob("*.png"))) == 3
    # the score recomputed from the saved PNGs alone, with no model
    again = tmp_path / "again.json"
    assert main(["eval", "--predictions", str(save), "--dataset", "camvid", "--data-root", str(camvid),
                 "--split", "val", "--json", str(again)]) == 0
    assert f"camvid val: 3 images, saved predictions in {save / 'trainids'}" in capsys.readouterr().out
    recomputed = json.loads(again.read_text())
    assert {k: recomputed[k] for k in ("miou", "iou", "pixel_acc", "pixels")} == \
        {k: scores[k] for k in ("miou", "iou", "pixel_acc", "pixels")}


def saved_predictions(camvid, folder, split="test", seed=0):
    """Random class-id PNGs named after the split's frames, and the confusion counted with numpy."""
    rng = np.random.default_rng(seed)
    conf = np.zeros((11, 11), np.int64)
    folder.mkdir(parents=True)
    for line in (camvid / f"camvid_{split}_list.txt").read_text().splitlines():
        image, label = (camvid / p for p in line.split())
        gt = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        pred = rng.integers(0, 11, gt.shape, dtype=np.uint8)
        cv2.imwrite(str(folder / f"{image.stem}.png"), pred)
        keep = gt != 11
        np.add.at(conf, (gt[keep], pred[keep]), 1)
    return conf


def test_saved_predictions_are_scored_without_a_model(camvid, tmp_path, capsys):
    conf = saved_predictions(camvid, tmp_path / "pred")
    out = tmp_path / "scores.json"
    assert main(["eval", "--predictions", str(tmp_path / "pred"), "--dataset", "camvid", "--data-root", str(camvid),
                 "--split", "test", "--json", str(out)]) == 0
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    scores = json.loads(out.read_text())
    assert scores["miou"] == pytest.approx((tp[union > 0] / union[union > 0]).mean(), abs=1e-12)
    assert scores["pixels"] == conf.sum() and scores["predictions"] == str(tmp_path / "pred")
    assert "Bicyclist" in capsys.readouterr().out


def test_saved_predictions_errors_name_the_file_and_the_line(camvid, tmp_path, capsys):
    pred = tmp_path / "pred"
    saved_predictions(camvid, pred)
    lines = (camvid / "camvid_test_list.txt").read_text().splitlines()
    where = f"{camvid / 'camvid_test_list.txt'}:2"
    second = pred / f"{(camvid / lines[1].split()[0]).stem}.png"
    shape = cv2.imread(str(second), cv2.IMREAD_UNCHANGED).shape
    run = ["eval", "--predictions", str(pred), "--dataset", "camvid", "--data-root", str(camvid), "--split", "test"]

    def error(*extra):
        assert main(run + list(extra)) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    cv2.imwrite(str(second), np.full(shape, 11, np.uint8))  # the void id is not a prediction
    assert error() == f"cgnet eval: error: {where}: {second} has class ids [11] outside [0, 11)"
    cv2.imwrite(str(second), np.zeros((shape[0], shape[1] + 1), np.uint8))
    assert error() == (f"cgnet eval: error: {where}: {second} is {shape[0]}x{shape[1] + 1} but its label "
                       f"{camvid / lines[1].split()[1]} is {shape[0]}x{shape[1]}")
    cv2.imwrite(str(second), np.zeros((*shape, 3), np.uint8))
    assert error() == (f"cgnet eval: error: {where}: {second} must be a single-channel 8-bit PNG of class ids, "
                       f"got shape {(*shape, 3)} uint8")
    second.unlink()
    assert error() == f"cgnet eval: error: {where}: no saved prediction {second}"
    assert error("--flip") == "cgnet eval: error: --predictions scores saved pictures: --flip does not apply"
    assert error("--predictions", str(tmp_path / "none")) == \
        f"cgnet eval: error: --predictions: {tmp_path / 'none'} is not a folder"


@pytest.mark.slow
def test_multiscale_flip_eval_runs(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    train(camvid, out, "--epochs", "1")
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-root", str(camvid), "--split", "test",
                 "--scales", "0.5,1,1.5", "--flip", "--workers", "0"]) == 0
    assert "scales 0.5,1.0,1.5 + flip" in capsys.readouterr().out


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3, ignore_index=255)
    gt = torch.tensor([0, 0, 1, 1, 2, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    cm.update(pred, gt)
    s = cm.scores()
    # class 0: tp 1, fp 1 (the 2 predicted as 0), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: 0/1
    assert s["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert s["miou"] == pytest.approx(1 / 3)
    assert s["miou_original"] == pytest.approx(0.5)  # the release drops classes without a true positive
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    cm2 = ConfusionMatrix(3, ignore_index=255)
    cm2.update(torch.tensor([0]), torch.tensor([0]))
    assert np.isnan(cm2.scores()["iou"][1]) and cm2.scores()["miou"] == 1.0  # absent classes don't count
    with pytest.raises(ValueError, match=r"ground-truth ids \[7\]"):
        cm2.update(torch.tensor([0]), torch.tensor([7]))


def test_miou_equals_official_cityscapes_evaluator(tmp_path, monkeypatch):
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    if not hasattr(np, "in1d"):  # the evaluator still calls np.in1d, which NumPy 2.4 removed
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    from cgnet.data.cityscapes import label_ids_to_train_ids, train_ids_to_label_ids
    rng = np.random.default_rng(1)
    gts, preds = [], []
    cm = ConfusionMatrix(19, 255)
    for i in range(4):
        gt = rng.integers(0, 34, (24, 40)).astype(np.uint8)  # label ids, void ones included
        gt[:, :8] = 26  # plenty of cars
        pred_train = label_ids_to_train_ids(gt).copy()
        flip = rng.random(gt.shape) < 0.3
        pred_train[flip] = rng.integers(0, 19, flip.sum())
        pred_train[pred_train == 255] = rng.integers(0, 19, (pred_train == 255).sum())
        pred_train[pred_train == 16] = 15  # one class (train) never predicted
        gpath = tmp_path / "gtFine" / "val" / "x" / f"x_000000_{i:06d}_gtFine_labelIds.png"
        ppath = tmp_path / "pred" / f"x_000000_{i:06d}_leftImg8bit.png"
        for p, arr in ((gpath, gt), (ppath, train_ids_to_label_ids(pred_train))):
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), arr)
        gts.append(str(gpath))
        preds.append(str(ppath))
        cm.update(torch.from_numpy(pred_train.astype(np.int64)), torch.from_numpy(label_ids_to_train_ids(gt).astype(np.int64)))
    args = ev.args
    args.JSONOutput, args.evalInstLevelScore, args.quiet = False, False, True
    args.evalPixelAccuracy = True
    result = ev.evaluateImgLists(preds, gts, args)
    ours = cm.scores()
    assert ours["miou"] == pytest.approx(result["averageScoreClasses"], abs=1e-9)
    official = [result["classScores"][name] for name in CITYSCAPES.classes]
    for a, b in zip(ours["iou"], official):
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-9)


def test_cityscapes_submission(tmp_path, capsys):
    root = make_cityscapes_tree(tmp_path / "cs")
    from cgnet.data.cityscapes import convert_train_ids, write_lists
    convert_train_ids(root, workers=1, progress=False)
    write_lists(root)
    model = CGNet(19, m=2, n=2)
    meta = make_meta(model, preprocess=make_spec("standard"), classes=list(CITYSCAPES.classes),
                     palette=[list(c) for c in CITYSCAPES.palette], ignore_index=255, dataset="cityscapes")
    ckpt = save_checkpoint(tmp_path / "cs.pt", model, meta)
    out = tmp_path / "sub"
    assert main(["test", "--checkpoint", str(ckpt), "--data-root", str(root), "--out", str(out),
                 "--workers", "0"]) == 0
    files = sorted(p.name for p in (out / "results").glob("*.png"))
    assert files == ["berlin_000000_000000_leftImg8bit.png", "berlin_000000_000001_leftImg8bit.png"]
    ids = cv2.imread(str(out / "results" / files[0]), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (16, 32) and set(np.unique(ids)) <= set(CITYSCAPES_TRAIN_TO_LABEL_ID)
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert sorted(z.namelist()) == files


def test_eval_errors_are_clear(camvid, tmp_path, capsys):
    ckpt = tmp_path / "bare.pt"  # a bare state dict, as the original release saved: no preprocessing
    torch.save(CGNet(11, m=2, n=2).state_dict(), ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(camvid), "--dataset", "camvid"]) == 2
    assert "--preprocess original --mean" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(camvid), "--dataset", "cityscapes"]) == 2
    assert "11 classes but cityscapes has 19" in capsys.readouterr().err


def test_eval_with_an_original_release_checkpoint(camvid, tmp_path, capsys):
    shapes = ref.variant_shapes(ref.read_key_list(ORIGINAL_KEYS),
                                num_classes=11, n=3)
    state = ref.random_original_state(shapes, torch.Generator().manual_seed(2))
    torch.save({"epoch": 800, "model": {"module." + k: v for k, v in state.items()}}, tmp_path / "orig.pth")
    args = ["eval", "--checkpoint", str(tmp_path / "orig.pth"), "--data-root", str(camvid), "--split", "val",
            "--dataset", "camvid", "--workers", "0", "--json", str(tmp_path / "s.json")]
    assert main(args) == 2
    assert "--preprocess original --mean" in capsys.readouterr().err
    assert main(args + ["--preprocess", "original", "--mean", "72.4,82.9,73.2"]) == 0
    assert "Bicyclist" in capsys.readouterr().out
    assert 0 <= json.loads((tmp_path / "s.json").read_text())["miou"] <= 1


class Pointwise(torch.nn.Module):
    """A 1x1 convolution: commutes with flips, so its flip-averaged scores are known exactly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_flip_views_by_hand():
    from cgnet.engine.inference import predict_logits
    x = torch.randn(1, 3, 20, 26)
    model = CGNet(4, m=2, n=2).eval()
    with torch.no_grad():
        expected = model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)
    torch.testing.assert_close(predict_logits(model, x, flip=True), expected)
    # a mirror-symmetric input gives mirror-symmetric flip-averaged scores
    sym = torch.cat([x[..., :13], x[..., :13].flip(-1)], -1)
    scores = predict_logits(model, sym, flip=True)
    torch.testing.assert_close(scores, scores.flip(-1))
    # a model that commutes with flips: the flipped view equals the plain one
    point = Pointwise().eval()
    with torch.no_grad():
        torch.testing.assert_close(predict_logits(point, x, flip=True), 2 * point(x).softmax(1))


@pytest.mark.slow
def test_scales_by_hand_and_scale_one_is_plain_eval(camvid, tmp_path):
    from cgnet.engine.inference import predict_logits
    from torch.nn import functional
    model = CGNet(4, m=2, n=2).eval()
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(predict_logits(model, x, scales=[1.0]), model(x), rtol=0, atol=0)
        half = functional.interpolate(model(functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)),
                             size=(24, 32), mode="bilinear", align_corners=False)
        expected = half.softmax(1) + model(x).softmax(1)
    torch.testing.assert_close(predict_logits(model, x, scales=[0.5, 1.0]), expected)

    out = tmp_path / "run"
    train(camvid, out, "--epochs", "1")
    results = {}
    for name, extra in (("plain", []), ("scale1", ["--scales", "1"])):
        assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-root", str(camvid), "--split", "val",
                     "--workers", "0", "--json", str(tmp_path / f"{name}.json"), *extra]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["plain"]["iou"] == results["scale1"]["iou"] and results["plain"]["miou"] == results["scale1"]["miou"]
