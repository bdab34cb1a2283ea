"""Distillation (`cgnet soft-targets`, `cgnet train --teacher`) and the weights' moving average
(`--ema`): the stored targets are the teacher's averaged views, the augmentation moves them with the
image, the loss is the two cross-entropies computed independently, and runs resume bit for bit."""
import hashlib
import json

import numpy as np
import pytest
import torch
from torch.nn import functional

from cgnet.checkpoint import load_model
from cgnet.cli import main
from cgnet.data.augment import augment_batch, draw_params
from cgnet.data.catalog import CAMVID
from cgnet.data.listset import SegDataset
from cgnet.engine.inference import predict_logits
from cgnet.engine.teacher import DistillLoss
from cgnet.preprocess import make_spec
from helpers.training import TINY, same_weights, train


@pytest.fixture(scope="module")
def teacher(camvid, randomized_ckpt, tmp_path_factory):
    """Soft targets of the tiny checkpoint on the generated train list (2 scales + flip)."""
    out = tmp_path_factory.mktemp("teacher") / "soft"
    assert main(["soft-targets", "--checkpoint", str(randomized_ckpt), "--data-root", str(camvid),
                 "--split", "train", "--scales", "1,1.5", "--out", str(out)]) == 0
    return out


def test_soft_targets_are_the_teachers_averaged_views_rounded_to_8_bits(camvid, randomized_ckpt, teacher):
    model = load_model(randomized_ckpt)
    ds = SegDataset(camvid, camvid / "camvid_train_list.txt", CAMVID, model.meta["preprocess"], train=False)
    manifest = json.loads((teacher / "teacher.json").read_text())
    assert (manifest["scales"], manifest["flip"], manifest["images"]) == ([1.0, 1.5], True, len(ds))
    assert manifest["classes"] == list(CAMVID.classes)
    assert manifest["weights_sha256"] == hashlib.sha256(randomized_ckpt.read_bytes()).hexdigest()
    for i in range(len(ds)):
        image, _, _ = ds[i]
        probs = predict_logits(model, image[None], scales=(1.0, 1.5), flip=True)[0] / 4  # 4 views
        stored = np.load(teacher / f"{ds.samples[i].image.stem}.npy")
        assert stored.shape == (*image.shape[-2:], 11) and stored.dtype == np.uint8
        # 8-bit rounding: within half a level, plus the layouts' fp32 summation order (far below it)
        expected = probs.permute(1, 2, 0).numpy() * 255
        assert np.abs(stored - expected).max() <= 0.5 + 1e-3


def test_the_soft_targets_are_scaled_cropped_and_flipped_with_the_image():
    """Soft targets that ARE the image's own pixels must come out as the augmented image does."""
    rng = np.random.default_rng(0)
    spec = make_spec("standard", mean=[0, 0, 0], std=[1 / 255] * 3)  # normalised value = the 8-bit level
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(6)]
    labels = [rng.integers(0, 11, (40, 48), dtype=np.uint8) for _ in range(6)]
    params = [draw_params(np.random.default_rng([5, i]), 40, 48, (32, 36)) for i in range(6)]
    params[0] = dict(params[0], size=(20, 24), top=0, left=0, flip=True)  # smaller than the crop: padding
    x, y, soft = augment_batch(images, labels, params, (32, 36), spec, 11, softs=[im.copy() for im in images])
    assert soft.shape == (6, 32, 36, 3) and soft.dtype == torch.uint8
    assert torch.equal(soft.permute(0, 3, 1, 2).float(), x.round())
    assert (soft[0, 20:] == 0).all() and (soft[0, :, :12] == 0).all()  # padded (flipped: on the left)


def test_the_distillation_loss_is_both_cross_entropies():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 11, 6, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 12, (2, 6, 7), generator=g)
    soft = torch.randint(0, 256, (2, 6, 7, 11), generator=g, dtype=torch.uint8)
    soft[1, 4:] = 0  # padding: no target
    weight = torch.rand(11, generator=g, dtype=torch.float64) + 0.5
    loss = DistillLoss(torch.nn.CrossEntropyLoss(weight=weight, ignore_index=11), 0.7)(logits, labels, soft)
    hard = functional.cross_entropy(logits, labels, weight=weight, ignore_index=11)
    covered = soft.sum(-1) > 0
    target = soft.double()[covered]
    target = target / target.sum(-1, keepdim=True)
    pixel_logits = logits.permute(0, 2, 3, 1)[covered]
    soft_term = functional.cross_entropy(pixel_logits, target)
    assert covered.sum() == 2 * 6 * 7 - 2 * 7  # rows 4 and 5 of image 1
    # the loss normalises the 8-bit targets in float32 (exact integers, one rounding in the division:
    # a relative 2^-24 on each target), so the soft term is off by at most 2^-24 of itself
    bound = 0.7 * 2.0 ** -24 * float(soft_term) + 1e-12
    assert abs(float(loss) - float(hard + 0.7 * soft_term)) <= bound


@pytest.mark.slow
def test_a_teacher_with_weight_zero_trains_as_without_one(camvid, teacher, tmp_path):
    args = ("--epochs", "2", "--loader", "memory", "--seed", "2")
    _, plain = train(camvid, tmp_path / "plain", *args)
    log, zero = train(camvid, tmp_path / "zero", *args, "--teacher", str(teacher), "--distill-weight", "0")
    assert same_weights(plain, zero)
    _, distilled = train(camvid, tmp_path / "one", *args, "--teacher", str(teacher))
    assert not same_weights(plain, distilled)


@pytest.mark.slow
def test_ema_resumes_bit_for_bit_and_is_what_validation_scores(camvid, teacher, tmp_path):
    args = ("--epochs", "2", "--loader", "memory", "--seed", "1", "--ema", "0.9", "--teacher", str(teacher))
    log, full = train(camvid, tmp_path / "full", *args)
    part = tmp_path / "part"
    assert main(["train", "--data-root", str(camvid), "--out", str(part), *TINY, *args, "--max-iters", "3"]) == 0
    assert main(["train", "--out", str(part), "--resume"]) == 0
    resumed = torch.load(part / "last.pt", weights_only=True)
    assert same_weights(full, resumed)
    assert all(torch.equal(full["ema"][k], resumed["ema"][k]) for k in full["ema"])
    assert int(full["ema"]["n_averaged"]) == log[-1]["iteration"]
    ema = torch.load(tmp_path / "full" / "ema.pt", weights_only=True)["model"]
    assert all(torch.equal(ema[k], full["ema"]["module." + k]) for k in ema)
    assert not all(torch.equal(ema[k], full["model"][k]) for k in ema)
    # validation scored the averaged weights: best.pt holds them (the last epoch's, or an earlier one's)
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert best["train_state"]["epoch"] in (1, 2)
    if best["train_state"]["epoch"] == 2:
        assert all(torch.equal(best["model"][k], ema[k]) for k in ema)


def test_a_teacher_of_other_classes_is_one_line(camvid, teacher, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    manifest = json.loads((teacher / "teacher.json").read_text())
    (other / "teacher.json").write_text(json.dumps(dict(manifest, classes=["a", "b"])))
    code = main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "run"), *TINY, "--loader", "memory",
                 "--teacher", str(other)])
    assert code == 2
    assert capsys.readouterr().err == (f"cgnet train: error: --teacher {other}: the teacher's classes ['a', 'b'] "
                                       f"are not this run's {list(CAMVID.classes)}\n")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_teacher_missing_an_image_is_one_line(camvid, teacher, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in teacher.iterdir():
        if f.name != "0001TP_000003.npy":
            (partial / f.name).write_bytes(f.read_bytes())
    code = main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "run"), *TINY, "--loader", "memory",
                 "--teacher", str(partial)])
    assert code == 2
    assert capsys.readouterr().err == (f"cgnet train: error: --teacher {partial}: no soft targets for "
                                       f"{camvid}/train/0001TP_000003.png (0001TP_000003.npy missing)\n")


@pytest.mark.parametrize("extra, message", [
    (("--loader", "workers"), "--teacher {t}: distillation runs on the CPU with --loader memory (the soft targets "
                              "are kept beside the decoded images)"),
    (("--ema", "1"), "--ema 1: must be in [0, 1)"),
])
def test_settings_that_cannot_distil_are_one_line(camvid, teacher, tmp_path, capsys, extra, message):
    code = main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "run"), *TINY,
                 "--teacher", str(teacher), *extra])
    assert code == 2
    assert capsys.readouterr().err == f"cgnet train: error: {message.format(t=teacher)}\n"
    assert not (tmp_path / "run").exists()
