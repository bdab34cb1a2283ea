"""The compiled inference path (cgnet.deploy.runners.compile_for_inference) against eager
PyTorch, on the CPU: logits, class ids computed inside the compiled graph, and the commands that
use it (predict/eval --compile, bench --output labels). CUDA graphs need a GPU: the device
script (scripts/gpu_bench.sh) measures them."""
import json

import cv2
import numpy as np
import pytest
import torch

from cgnet import load_model
from cgnet.cli import main
from cgnet.deploy.predictor import make_predictor
from cgnet.deploy.runners import compile_for_inference, compiled_torch_runner, torch_runner


def test_compiled_logits_and_class_ids_equal_eager(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = model(x)
        logits = compile_for_inference(model)(x)
        ids = compile_for_inference(model, labels=True)(x)
    assert logits.dtype == torch.float32 and logits.shape == (2, 11, 40, 56)
    torch.testing.assert_close(logits, eager, rtol=1e-4, atol=1e-4)
    # class ids: computed inside the compiled graph (bilinear upsampling fused into the argmax)
    assert ids.dtype == torch.uint8 and ids.shape == (2, 40, 56)
    top2 = eager.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # pixels whose best class is not a near-tie
    assert clear.float().mean() > 0.99
    assert torch.equal(ids[clear], eager.argmax(1).to(torch.uint8)[clear])


def test_eager_runner_class_ids_are_the_argmax_of_its_logits(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = np.random.default_rng(3).standard_normal((1, 3, 24, 40), dtype=np.float32)
    logits = torch_runner(model, "fp32", "cpu", channels_last=False)(x)
    ids = torch_runner(model, "fp32", "cpu", channels_last=False, labels=True)(x)
    assert ids.dtype == np.uint8 and ids.shape == (1, 24, 40)
    np.testing.assert_array_equal(ids, logits.argmax(1))


def test_compiled_bf16_runner_agrees_with_eager_fp32(randomized_ckpt):
    model = load_model(randomized_ckpt)
    x = np.random.default_rng(5).standard_normal((1, 3, 40, 56), dtype=np.float32)
    reference = torch_runner(model, "fp32", "cpu", channels_last=False, labels=True)(x)
    ids = compiled_torch_runner(model, "bf16", "cpu", labels=True)(x)
    logits = compiled_torch_runner(model, "bf16", "cpu")(x)
    assert ids.dtype == np.uint8 and logits.dtype == np.float32
    assert (ids == reference).mean() > 0.97  # bf16 keeps 8 bits of mantissa
    # the fused argmax may see the upsampled scores before their rounding to bf16: near-ties differ
    assert (ids == logits.argmax(1)).mean() > 0.99


def test_cuda_graphs_need_cuda(randomized_ckpt):
    with pytest.raises(ValueError, match=r"^CUDA graphs need a CUDA device, not cpu$"):
        compile_for_inference(load_model(randomized_ckpt), "cpu", cuda_graphs=True)


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
    assert (masks["compiled"] == masks["eager"]).mean() > 0.999
    predictor = make_predictor(randomized_ckpt, backend="torch", device="cpu", compile=True)
    np.testing.assert_array_equal(predictor.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), masks["compiled"])


@pytest.mark.parametrize("argv, message", [
    (["--compile", "--backend", "onnxruntime"], "cgnet predict: error: --compile needs the torch backend, not onnxruntime"),
    (["--precision", "fp16", "--backend", "openvino"],
     "cgnet predict: error: --precision fp16 needs the torch backend, not openvino"),
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


def test_eval_compile_scores_like_eager(randomized_ckpt, camvid, tmp_path):
    scores = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--checkpoint", str(randomized_ckpt), "--data-root", str(camvid), "--split", "val",
                     "--device", "cpu", "--workers", "0", "--json", str(out), *extra]) == 0
        scores[name] = json.loads(out.read_text())
    assert scores["compiled"]["pixels"] == scores["eager"]["pixels"] > 0
    assert scores["compiled"]["miou"] == pytest.approx(scores["eager"]["miou"], abs=0.5)


def test_bench_labels_output_and_agreement(randomized_ckpt, camvid, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(randomized_ckpt), "--sizes", "32x48", "--paths", "torch-eager-fp32",
                 "torch-fp32", "torch-eager-bf16",
                 "--runs", "2", "--warmup", "1", "--data-root", str(camvid), "--agreement-frames", "2",
                 "--output", "labels", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["output"] == "labels"
    assert [r["path"] for r in result["rows"]] == ["torch-eager-fp32", "torch-fp32", "torch-eager-bf16"]
    assert result["argmax_agreement"]["torch-fp32"] > 0.999
    assert 0.97 < result["argmax_agreement"]["torch-eager-bf16"] < 1.0  # bf16 autocast did change pixels
    assert "output: uint8 class ids on the host" in capsys.readouterr().out
