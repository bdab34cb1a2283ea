"""cgnet train --init: starting a run from trained weights (ours, the shipped ones), on the same
classes or new ones, with the early stages frozen or not; what is refused."""
import json
from types import SimpleNamespace

import cv2
import pytest
import torch

from cgnet.checkpoint import load_checkpoint, load_matching, load_model, resolve_weights
from cgnet.cli import main
from cgnet.data.catalog import CAMVID, resolve_dataset
from cgnet.engine.config import TrainConfig
from cgnet.engine.init import match_classifier, read_init
from cgnet.engine.train import build_model_and_optimizer
from cgnet.model import CGNet
from cgnet.preprocess import to_tensor
from helpers.camvid_like import make_camvid_like
from helpers.training import TINY, train

# a learning rate so small that one Adam step moves no weight by more than about it: Adam's
# first bias-corrected update is lr * m / sqrt(v) = lr * g / |g| = +-lr per weight
TINY_LR = 1e-12


@pytest.fixture(scope="module")
def source(camvid, tmp_path_factory):
    """A trained tiny run (M2N2, CamVid's 11 classes) to start from."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(camvid, out, "--epochs", "1", "--seed", "5")
    return out / "last.pt"


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return make_camvid_like(tmp_path_factory.mktemp("mine") / "mine", num_classes=3, seed=3)


def params(state: dict) -> dict:
    """The learnable tensors of a state dict (BN running statistics move in any training step)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


@pytest.mark.slow
def test_same_classes_every_tensor_is_loaded_and_the_preprocessing_kept(camvid, source, tmp_path, capsys):
    log, state = train(camvid, tmp_path / "ft", "--init", str(source), "--epochs", "1", "--max-iters", "2",
                       "--lr", str(TINY_LR))
    printed = capsys.readouterr().out
    total = len(CGNet(11, m=2, n=2).state_dict())
    assert f"--init {source} ({source}): loaded {total} of {total} tensors\n" in printed
    assert "re-initialised" not in printed
    start, _, saved = load_checkpoint(source)
    for k, v in params(start).items():
        assert float((state["model"][k] - v).abs().max()) <= 2 * 2 * TINY_LR, k  # 2 steps of at most lr
    assert state["meta"]["preprocess"] == saved["meta"]["preprocess"]
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["init"] == str(source) and state["meta"]["config"]["init"] == str(source)


@pytest.mark.slow
def test_own_statistics_when_asked_for(camvid, source, tmp_path):
    _, state = train(camvid, tmp_path / "ft", "--init", str(source), "--epochs", "1", "--max-iters", "2",
                     "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert state["meta"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.slow
def test_new_classes_reinitialise_only_the_classifier(three_classes, source, tmp_path, capsys):
    argv = ["train", "--data-root", str(three_classes), "--out", str(tmp_path / "ft"), *TINY, "--dataset", "mine",
            "--classes", "road,grass,sky", "--ignore-index", "11", "--train-split", "camvid_train_list.txt",
            "--val-split", "camvid_val_list.txt", "--init", str(source), "--epochs", "1", "--lr", str(TINY_LR)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    total = len(CGNet(3, m=2, n=2).state_dict())
    assert f"loaded {total} of {total} tensors\n" in printed
    # road and sky are CamVid's Road and Sky: their rows are loaded; grass is new
    assert ("  classifier rows matched by class name: 2 of 3; reordered: road from row 3 (Road), sky from row 0 "
            "(Sky)\n"
            "  re-initialised classifier rows (classes the --init weights lack): grass\n") in printed
    state = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    start, _, _ = load_checkpoint(source)
    assert state["model"]["classifier.weight"].shape == (3, 256, 1, 1)
    for k, v in params(start).items():
        if k != "classifier.weight":
            assert float((state["model"][k] - v).abs().max()) <= 2 * 2 * TINY_LR, k
    for row, their_row in ((0, 3), (2, 0)):
        moved = state["model"]["classifier.weight"][row] - start["classifier.weight"][their_row]
        assert float(moved.abs().max()) <= 2 * 2 * TINY_LR
    assert state["meta"]["classes"] == ["road", "grass", "sky"]


@pytest.mark.slow
def test_frozen_stages_keep_their_loaded_weights(camvid, source, tmp_path, capsys):
    _, state = train(camvid, tmp_path / "ft", "--init", str(source), "--freeze", "stage2", "--epochs", "1",
                     "--lr", "0.01")
    assert "frozen (--freeze stage2): stem, bn_act1, down2, stage2, bn_act2" in capsys.readouterr().out
    start, _, _ = load_checkpoint(source)
    for k, v in params(start).items():
        frozen = k.split(".")[0] in ("stem", "bn_act1", "down2", "stage2", "bn_act2")
        assert torch.equal(state["model"][k], v) == frozen, k


@pytest.mark.slow
def test_the_shipped_weights_start_a_run(camvid, tmp_path, capsys):
    argv = [a for a in TINY]
    argv[argv.index("--blocks") + 1:argv.index("--blocks") + 3] = ["3", "21"]
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "ft"), *argv, "--init", "camvid",
                 "--epochs", "1", "--max-iters", "1"]) == 0
    total = len(CGNet(11).state_dict())
    assert f"loaded {total} of {total} tensors" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--blocks", "2", "3"], "--init {src}: the weights are CGNet M2N2, this run is M2N3; add --blocks 2 2 to start "
                             "from them"),
    (["--freeze", "stem", "--init", ""], "--freeze stem: freezes loaded weights; give --init too"),
    (["--init", "{tmp}/none.pt"], "--init {tmp}/none.pt: no such file (give a checkpoint, or 'camvid' for the "
                                  "shipped weights)"),
    (["--init", "{tmp}/other.pt"], "{tmp}/other.pt: no classifier weight in the state dict: not a CGNet checkpoint"),
])
def test_what_cannot_start_a_run_is_one_line_and_writes_nothing(camvid, source, tmp_path, capsys, extra, message):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    extra = [a.format(tmp=tmp_path) for a in extra]
    if "--init" not in extra:
        extra += ["--init", str(source)]
    elif extra[extra.index("--init") + 1] == "":
        extra = extra[:extra.index("--init")]
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "run"), *TINY, *extra]) == 2
    assert capsys.readouterr().err == f"cgnet train: error: {message.format(src=source, tmp=tmp_path)}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_init_defines_the_run_on_resume(camvid, source, tmp_path, capsys):
    train(camvid, tmp_path / "ft", "--init", str(source), "--epochs", "2", "--max-iters", "2")
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "ft"), *TINY, "--epochs", "2",
                 "--init", "camvid", "--resume"]) == 2
    assert capsys.readouterr().err == (f"cgnet train: error: --resume: the run was trained with --init {source}, "
                                       "this command says camvid; keep it, or start a new run with another --out\n")


def test_a_tensor_of_another_shape_is_named_with_both_shapes():
    model = CGNet(11, m=2, n=2)
    state = CGNet(11, m=2, n=2).state_dict()
    key = next(k for k in state if k.startswith("down2.") and k.endswith("weight"))
    shape = ", ".join(map(str, state[key].shape))
    state[key] = torch.zeros(1)
    with pytest.raises(ValueError, match=rf"^w: tensor '{key}' has shape \(1,\) in the checkpoint but the model "
                                         rf"expects \({shape}\)$"):
        load_matching(model, state, where="w")


def first_prediction_model(names: list[str], capsys) -> tuple[torch.nn.Module, str]:
    """The model `cgnet train --init camvid` starts from (before any step) for a dataset with
    these class names, built by the training code, and what it printed."""
    cfg = TrainConfig(init="camvid")
    data = SimpleNamespace(info=resolve_dataset("mine", names, 255), class_weights=[1.0] * len(names))
    capsys.readouterr()
    parts = build_model_and_optimizer(cfg, data, torch.device("cpu"), read_init(cfg))
    return parts.model.eval(), capsys.readouterr().out


@pytest.mark.slow
def test_init_camvid_with_alphabetical_names_is_the_shipped_model_renamed(camvid_root, capsys):
    """CamVid's 11 names in alphabetical order (as CVAT exports them): every classifier row goes
    to its own class, so the first predictions on a real test frame are the shipped model's with
    the class ids permuted, pixel for pixel."""
    names = sorted(CAMVID.classes)
    model, printed = first_prediction_model(names, capsys)
    perm = [CAMVID.classes.index(n) for n in names]   # new id -> the shipped model's id
    moved = [f"{n} from row {j}" for i, (n, j) in enumerate(zip(names, perm)) if i != j]
    assert f"  classifier rows matched by class name: 11 of 11; reordered: {', '.join(moved)}\n" in printed
    assert "re-initialised" not in printed
    shipped = load_model("camvid")
    first = (camvid_root / "camvid_test_list.txt").read_text().split()[0]
    rgb = cv2.cvtColor(cv2.imread(str(camvid_root / first)), cv2.COLOR_BGR2RGB)
    x = to_tensor(rgb, shipped.meta["preprocess"])[None]
    with torch.no_grad():
        ours, theirs = model(x), shipped(x)
    # the classifier is a 1x1 convolution without bias: permuting its rows permutes the logits
    new_id = torch.argsort(torch.tensor(perm))   # the shipped model's id -> the new one
    assert torch.equal(ours.argmax(1), new_id[theirs.argmax(1)])
    assert len(torch.unique(theirs.argmax(1))) >= 8   # a real street scene: most classes predicted
    # up to float summation order: each logit is a 256-term sum of products
    assert float((ours - theirs[:, perm]).abs().max()) <= 1e-4 * float(theirs.abs().max())


def test_init_rows_by_name_by_position_and_none_in_common(capsys):
    """Names that partly match (ignoring case) load their rows and re-initialise the rest;
    unknown names load by position; known names with none in common load no row."""
    # --init reads the file as it is (load_checkpoint; load_model would flush its subnormal values)
    shipped = load_checkpoint(resolve_weights("camvid"))[0]["classifier.weight"]
    model, printed = first_prediction_model(["road", "Grass", "sky"], capsys)
    weight = model.classifier.weight.detach()
    assert torch.equal(weight[0], shipped[3]) and torch.equal(weight[2], shipped[0])
    assert not torch.equal(weight[1], shipped[1])
    assert ("  classifier rows matched by class name: 2 of 3; reordered: road from row 3 (Road), sky from row 0 "
            "(Sky)\n"
            "  re-initialised classifier rows (classes the --init weights lack): Grass\n") in printed
    total = len(CGNet(3).state_dict())
    assert f"loaded {total} of {total} tensors\n" in printed

    own = torch.zeros(11, 256, 1, 1)
    rows, lines, _ = match_classifier(own, shipped, [f"class{i}" for i in range(11)], list(CAMVID.classes))
    assert rows is shipped and lines == ["  classifier rows loaded by position: the class names of this run are "
                                         "unknown"]
    rows, lines, _ = match_classifier(own, shipped, list(CAMVID.classes), None)
    assert rows is shipped and lines == ["  classifier rows loaded by position: the class names of the --init "
                                         "weights are unknown"]
    model, printed = first_prediction_model([f"c{i}" for i in range(11)], capsys)
    assert f"loaded {len(CGNet(11).state_dict()) - 1} of {len(CGNet(11).state_dict())} tensors\n" in printed
    assert ("  re-initialised: classifier.weight (11, 256, 1, 1) (no class name in common with the --init weights': "
            f"{', '.join(CAMVID.classes)})\n") in printed
    assert not torch.equal(model.classifier.weight.detach(), shipped)
