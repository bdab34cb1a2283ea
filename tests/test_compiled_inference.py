"""The compiled inference path (cgnet.deploy.runners.compile_for_inference) against eager
PyTorch, on the CPU: logits, class ids computed inside the compiled graph, and the commands that
use it (predict/eval --compile, bench --output labels). CUDA graphs need a GPU: the device
script (scripts/gpu_bench.sh) measures them. Tolerances come from rounding (helpers.rounding):
only pixels whose top-2 logits are within the rounding bound of each other may change class."""
import json

import cv2
import numpy as np
import pytest
import torch

from cgnet import load_model
from cgnet.cli import main
from cgnet.deploy.predictor import make_predictor
from cgnet.deploy.runners import compile_for_inference, compiled_torch_runner, torch_runner
from cgnet.preprocess import to_tensor
from helpers.rounding import BF16_U, bf16_difference_bound, fp32_difference_bound, near_ties


@pytest.mark.compile
def test_compiled_logits_and_class_ids_equal_eager(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = model(x)
        logits = compile_for_inference(model)(x)
        ids = compile_for_inference(model, labels=True)(x)
    assert logits.dtype == torch.float32 and logits.shape == (2, 11, 40, 56)
    bound = fp32_difference_bound(model, eager)  # BN folded, fused kernels: fp32 rounding only
    assert (logits - eager).abs().max() <= bound
    # class ids: computed inside the compiled graph (bilinear upsampling fused into the argmax)
    assert ids.dtype == torch.uint8 and ids.shape == (2, 40, 56)
    clear = ~near_ties(eager, bound)
    assert torch.equal(ids[clear], eager.argmax(1).to(torch.uint8)[clear])
    assert clear.float().mean() > 0.5  # not vacuous: most pixels are compared exactly


def test_eager_runner_class_ids_are_the_argmax_of_its_logits(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = np.random.default_rng(3).standard_normal((1, 3, 24, 40), dtype=np.float32)
    logits = torch_runner(model, "fp32", "cpu", channels_last=False)(x)
    ids = torch_runner(model, "fp32", "cpu", channels_last=False, labels=True)(x)
    assert ids.dtype == np.uint8 and ids.shape == (1, 24, 40)
    np.testing.assert_array_equal(ids, logits.argmax(1))


def test_eager_bf16_autocast_rounds_the_logits_like_bf16(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = np.random.default_rng(5).standard_normal((1, 3, 40, 56), dtype=np.float32)
    reference = torch.from_numpy(torch_runner(model, "fp32", "cpu", channels_last=False)(x))
    logits = torch.from_numpy(torch_runner(model, "bf16", "cpu", channels_last=False)(x))
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    # bf16 was applied (the logits moved by more than fp32 rounding can move them), and moved them
    # no more than bf16 rounding can: on every CPU, native bf16 or not
    change = (logits - reference).abs().max()
    assert fp32_difference_bound(model, reference) < change <= bf16_difference_bound(model, reference)


@pytest.mark.compile
def test_compiled_bf16_runner_agrees_with_eager_fp32(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = np.random.default_rng(5).standard_normal((1, 3, 40, 56), dtype=np.float32)
    reference = torch.from_numpy(torch_runner(model, "fp32", "cpu", channels_last=False)(x))
    ids = compiled_torch_runner(model, "bf16", "cpu", labels=True)(x)
    logits = compiled_torch_runner(model, "bf16", "cpu")(x)
    assert ids.dtype == np.uint8 and logits.dtype == np.float32
    ids, logits = torch.from_numpy(ids).long(), torch.from_numpy(logits)
    change = (logits - reference).abs()
    assert fp32_difference_bound(model, reference) < change.max() <= bf16_difference_bound(model, reference)
    # the fused argmax sees the upsampled scores before their rounding to the bf16 output (and may
    # keep the classifier's output unrounded): two bf16 roundings of the largest logit away from them
    fused = 2 * BF16_U * float(logits.abs().max())
    # a pixel's class differs from fp32's only where its top-2 gap is within what its logits moved
    clear = ~near_ties(reference, change.amax(1) + fused)
    assert torch.equal(ids[clear], reference.argmax(1)[clear])
    clear_own = ~near_ties(logits, fused)
    assert torch.equal(ids[clear_own], logits.argmax(1)[clear_own])
    assert clear.float().mean() > 0.5 and clear_own.float().mean() > 0.5  # not vacuous


def test_cuda_graphs_need_cuda(randomized_ckpt):
    with pytest.raises(ValueError, match=r"^CUDA graphs need a CUDA device, not cpu$"):
        compile_for_inference(load_model(randomized_ckpt), "cpu", cuda_graphs=True)


@pytest.mark.compile
def test_predict_compile_writes_the_eager_masks(randomized_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), image)
    masks = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert main(["predict", str(tmp_path / "frame.png"), "--checkpoint", str(randomized_ckpt), "--backend", "torch",
                     "--device", "cpu", "--no-progress", "--out", str(tmp_path / name), *extra]) == 0
        masks[name] = cv2.imread(str(tmp_path / name / "masks" / "frame.png"), cv2.IMREAD_UNCHANGED)
    assert "with torch-compiled (fp32)" in capsys.readouterr().out
    eager = torch.from_numpy(make_predictor(randomized_ckpt, backend="torch", device="cpu").logits(
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))[None]
    np.testing.assert_array_equal(masks["eager"], eager.argmax(1)[0].numpy())
    near = near_ties(eager, fp32_difference_bound(load_model(randomized_ckpt), eager))[0].numpy()
    assert not ((masks["compiled"] != masks["eager"]) & ~near).any()  # only near ties may change class
    predictor = make_predictor(randomized_ckpt, backend="torch", device="cpu", compile=True)
    np.testing.assert_array_equal(predictor.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), masks["compiled"])


@pytest.mark.parametrize("argv, message", [
    (["--compile", "--backend", "onnxruntime"], "cgnet predict: error: --compile needs the torch backend, not onnxruntime"),
    (["--precision", "fp16", "--backend", "openvino"],
     "cgnet predict: error: --precision fp16 needs --backend torch or ncnn, not openvino"),
])
def test_predict_compile_and_fp16_need_torch(randomized_ckpt, tmp_path, capsys, argv, message):
    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", str(tmp_path / "frame.png"), "--checkpoint", str(randomized_ckpt), "--out", str(tmp_path / "o"), *argv]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "o").exists()


def test_predict_compile_refuses_an_exported_file(tmp_path, capsys):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"")
    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", str(tmp_path / "frame.png"), "--checkpoint", str(exported), "--compile", "--out",
                 str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cgnet predict: error: --compile compiles a checkpoint with torch, not an exported file ({exported})")


@pytest.mark.compile
def test_eval_compile_scores_like_eager(randomized_ckpt, camvid, tmp_path):
    scores = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--checkpoint", str(randomized_ckpt), "--data-root", str(camvid), "--split", "val",
                     "--device", "cpu", "--workers", "0", "--json", str(out), "--save-dir", str(tmp_path / name),
                     *extra]) == 0
        scores[name] = json.loads(out.read_text())
    # the eager logits of each frame tell which pixels are near ties (fp32 rounding can flip them)
    model = load_model(randomized_ckpt)
    conf = {name: np.zeros((11, 11), np.int64) for name in scores}
    ties = 0
    for line in (camvid / "camvid_val_list.txt").read_text().splitlines():
        image_path, label_path = (camvid / p for p in line.split())
        with torch.no_grad():
            logits = model(to_tensor(cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB),
                                     model.meta["preprocess"])[None])
        near = near_ties(logits, fp32_difference_bound(model, logits))[0].numpy()
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        valid = label != 11
        pred = {name: cv2.imread(str(tmp_path / name / "trainids" / image_path.name), cv2.IMREAD_UNCHANGED)
                for name in scores}
        np.testing.assert_array_equal(pred["eager"], logits.argmax(1)[0].numpy())
        assert not ((pred["compiled"] != pred["eager"]) & ~near).any()  # only near ties changed class
        ties += int((near & valid).sum())
        for name, cm in conf.items():
            np.add.at(cm, (label[valid], pred[name][valid]), 1)
    for name, cm in conf.items():  # each command's scores are those of its saved predictions
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        assert scores[name]["pixels"] == cm.sum() > 0
        assert scores[name]["miou"] == pytest.approx((tp[union > 0] / union[union > 0]).mean(), abs=1e-12)
    # a changed pixel moves one count from a cell of its label's row to another: at most two per tie
    assert np.abs(conf["compiled"] - conf["eager"]).sum() <= 2 * ties


@pytest.mark.compile
def test_bench_labels_output_and_agreement(randomized_ckpt, camvid, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(randomized_ckpt), "--sizes", "32x48", "--paths", "torch-eager-fp32",
                 "torch-fp32", "torch-eager-bf16",
                 "--runs", "2", "--warmup", "1", "--data-root", str(camvid), "--agreement-frames", "2",
                 "--output", "labels", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["output"] == "labels"
    assert [r["path"] for r in result["rows"]] == ["torch-eager-fp32", "torch-fp32", "torch-eager-bf16"]
    assert all(r["ratio_to_eager_fp32"] > 0 for r in result["rows"])
    assert result["argmax_agreement"]["torch-fp32"] > 0.999
    # bf16 keeps 8 significant bits: a few near ties may change (or none, e.g. on a CPU with native
    # bf16; test_eager_bf16_autocast_rounds_the_logits_like_bf16 shows the rounding is applied)
    assert 0.97 <= result["argmax_agreement"]["torch-eager-bf16"] <= 1.0
    assert "output: uint8 class ids on the host" in capsys.readouterr().out
