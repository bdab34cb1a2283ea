"""Phone formats (cgnet.deploy.mobile): ExecuTorch .pte (XNNPACK, fp32 / int8) and LiteRT .tflite,
plain and app-ready, against eager PyTorch; and the two XNNPACK-friendly simplifications."""
import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from cgnet import CGNet, load_model
from cgnet.cli import main
from cgnet.data.listset import read_list
from cgnet.deploy import mobile
from cgnet.deploy.predictor import make_predictor
from cgnet.deploy.simplify import KeepdimGlobalContext, simplify_for_inference
from cgnet.images import read_rgb
from cgnet.model import GlobalContext, inject
from cgnet.preprocess import make_spec, original_spec, to_tensor
from helpers.randomize import randomized

HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("litert_torch") is not None
needs_executorch = pytest.mark.skipif(not HAS_EXECUTORCH, reason="executorch is not installed "
                                      "(pip install 'cgnet[executorch]')")
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="litert-torch / ai-edge-litert are not installed "
                                  "(pip install 'cgnet[litert]')")

# CI installs the phone runtimes (the extras executorch and litert) and requires them
REQUIRED = os.environ.get("CGNET_REQUIRE_MOBILE") == "1"

SIZE = (48, 64)  # the tiny model's export size: small, so lowering stays quick


def test_the_phone_runtimes_are_installed_where_required():
    if not REQUIRED:
        pytest.skip("CGNET_REQUIRE_MOBILE is not set: the phone runtimes are optional")
    assert HAS_EXECUTORCH, "CGNET_REQUIRE_MOBILE=1 but executorch is missing: pip install -e '.[executorch]'"
    assert HAS_LITERT, "CGNET_REQUIRE_MOBILE=1 but litert-torch / ai-edge-litert are missing: pip install -e '.[litert]'"
EPS32 = float(np.finfo(np.float32).eps)


# ---- the rewrites in the inference simplification -------------------------------------------

def test_keepdim_global_context_and_explicit_injection_padding_change_no_value():
    torch.manual_seed(0)
    glo = GlobalContext(64, 8)
    x = torch.randn(2, 64, 17, 13)
    assert torch.equal(KeepdimGlobalContext(glo)(x), glo(x))
    for shape in ((2, 3, 37, 51), (1, 3, 2, 3), (1, 3, 1, 1)):  # odd sizes: the padded border matters
        x = torch.randn(*shape)
        assert torch.equal(inject(x, explicit_pad=True), inject(x))
    # PyTorch's default counts the padding zeros (count_include_pad=True): a corner of ones averages to 4/9
    corner = inject(torch.ones(1, 1, 4, 4), explicit_pad=True)[0, 0, 0, 0]
    assert corner.item() == pytest.approx(4 / 9)


def test_simplified_model_uses_both_rewrites_and_equals_the_original_at_fp32_rounding():
    torch.manual_seed(0)
    model = randomized(CGNet(11, m=3, n=21))
    simple = simplify_for_inference(model)
    assert simple.explicit_inject_pad and not model.explicit_inject_pad
    assert not any(type(m) is GlobalContext for m in simple.modules())
    assert sum(isinstance(m, KeepdimGlobalContext) for m in simple.modules()) == 3 + 21  # m + n blocks
    x = torch.randn(2, 3, 61, 93)
    with torch.no_grad():
        a, b = model(x), simple(x)
    # BN folding reassociates each convolution's sums: fp32 rounding relative to the logits' size
    assert (a - b).abs().max().item() <= 64 * EPS32 * a.abs().max().item()


# ---- the tiny model's files -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(randomized_ckpt):
    model = load_model(randomized_ckpt)
    return model, simplify_for_inference(model)


@pytest.fixture(scope="module")
def frames():
    """Street-like uint8 frames at the export size (smooth regions + texture)."""
    from cgnet.deploy.export import synthetic_frames
    return synthetic_frames(3, SIZE, seed=5)


def fp32_tolerance(simple: nn.Module, logits: np.ndarray) -> float:
    """What fp32 reassociation can move a logit by: eps * sqrt(longest reduction * depth) * the
    logits' magnitude (rounding errors of independent sums add like a random walk)."""
    convs = [m for m in simple.modules() if isinstance(m, nn.Conv2d)]
    longest = max(m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] for m in convs)
    return EPS32 * math.sqrt(longest * len(convs)) * float(np.abs(logits).max())


def eager_logits(simple: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return simple(torch.from_numpy(x)).numpy()


def near_ties(logits: np.ndarray, tol: float) -> np.ndarray:
    """Pixels whose top two eager logits are within 2 * tol: the argmax may flip there."""
    top = np.sort(logits, axis=-3)
    return (top[..., -1, :, :] - top[..., -2, :, :]) <= 2 * tol


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    """Each file is written once per module, on first use."""
    model, simple = tiny
    folder = tmp_path_factory.mktemp("mobile")
    cache = {}

    def get(fmt: str, precision: str = "fp32", app_io: bool = False):
        key = (fmt, precision, app_io)
        if key not in cache:
            path = folder / f"m_{precision}{'_app' if app_io else ''}.{'pte' if fmt == 'executorch' else 'tflite'}"
            write = mobile.write_executorch if fmt == "executorch" else mobile.write_litert
            calibration = None
            if precision == "int8":
                rng = np.random.default_rng(0)
                calibration = [to_tensor(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
                                         model.meta["preprocess"])[None].numpy() for _ in range(6)]
            write(simple, path, model.meta, precision, calibration, SIZE, app_io=app_io)
            cache[key] = path
        return cache[key]
    return get


FORMATS = [pytest.param("executorch", marks=[needs_executorch, pytest.mark.slow]),
           pytest.param("litert", marks=[needs_litert, pytest.mark.slow])]


def runner(fmt, path, precision="fp32"):
    return (mobile.executorch_runner if fmt == "executorch" else mobile.litert_runner)(path, precision)


def app_runner(fmt, path):
    return (mobile.executorch_app_runner if fmt == "executorch" else mobile.litert_app_runner)(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_file_agrees_with_eager_logits(fmt, tiny, written, frames):
    model, simple = tiny
    path = written(fmt)
    assert path.is_file() and list(path.parent.glob(f".{path.name}*")) == []  # no temporary left
    run = runner(fmt, path)
    x = np.concatenate([to_tensor(f, model.meta["preprocess"])[None].numpy() for f in frames])
    got, expected = run(x), eager_logits(simple, x)
    assert got.shape == expected.shape == (3, 11, *SIZE) and got.dtype == np.float32
    tol = fp32_tolerance(simple, expected)
    assert np.abs(got - expected).max() <= tol
    same = got.argmax(1) == expected.argmax(1)
    assert same[~near_ties(expected, tol)].all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_other_sizes_are_resized_to_the_model_and_back(fmt, tiny, written):
    _, simple = tiny
    run = runner(fmt, written(fmt))
    x = torch.randn(1, 3, 40, 50)
    resized = torch.nn.functional.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(simple(resized), size=(40, 50), mode="bilinear",
                                                   align_corners=False).numpy()
    got = run(x.numpy())
    assert got.shape == (1, 11, 40, 50)
    assert np.abs(got - expected).max() <= fp32_tolerance(simple, expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_non_contiguous_input_gives_the_contiguous_result(fmt, tiny, written):
    _, simple = tiny
    run = runner(fmt, written(fmt))
    base = np.random.default_rng(1).standard_normal((2, 3, SIZE[1], SIZE[0])).astype(np.float32)
    view = base.transpose(0, 1, 3, 2)  # N x 3 x H x W, not C-contiguous
    assert not view.flags.c_contiguous
    expected = eager_logits(simple, np.ascontiguousarray(view))
    got = run(view)
    assert np.abs(got - expected).max() <= fp32_tolerance(simple, expected)
    np.testing.assert_array_equal(got, run(np.ascontiguousarray(view)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_round_trip(fmt, tiny, written):
    model, _ = tiny
    meta = mobile.read_mobile_meta(written(fmt))
    assert meta == dict(model.meta, export_format=fmt, export_precision="fp32", input_size=list(SIZE), app_io=False)
    predictor = make_predictor(written(fmt))  # through the formats table, as predict / eval / serve open it
    assert predictor.meta["classes"] == model.meta["classes"] and predictor.precision == "fp32"


@pytest.mark.parametrize("fmt", FORMATS)
def test_app_ready_file_gives_eager_class_ids(fmt, tiny, written, frames):
    model, simple = tiny
    path = written(fmt, app_io=True)
    assert mobile.read_mobile_meta(path)["app_io"] is True
    run_image = app_runner(fmt, path)
    for frame in frames:
        logits = eager_logits(simple, to_tensor(frame, model.meta["preprocess"])[None].numpy())[0]
        ids = run_image(frame)
        assert ids.dtype == np.uint8 and ids.shape == SIZE
        ok = (ids == logits.argmax(0)) | near_ties(logits, fp32_tolerance(simple, logits))
        assert ok.all()
    with pytest.raises(ValueError, match="app-ready"):
        runner(fmt, path)
    with pytest.raises(ValueError, match="expected an H x W x 3 uint8 RGB image"):
        run_image(frames[0].astype(np.float32))


@pytest.mark.parametrize("spec", [make_spec("standard"), make_spec("standard", mean=(0.3, 0.4, 0.5), std=(0.2, 0.3, 0.4)),
                                  original_spec((104.0, 117.0, 123.0)),
                                  dict(make_spec("standard"), channel_order="BGR")])
def test_app_io_normalisation_is_to_tensor_bit_for_bit(spec):
    image = np.random.default_rng(2).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    app = mobile.AppIOModel(nn.Identity(), spec)
    assert torch.equal(app.normalise(torch.from_numpy(image)), to_tensor(image, spec)[None])


@needs_executorch
def test_int8_quantises_every_convolution_but_the_stem(tiny):
    """The stem (the first three convolutions and their PReLUs) stays float; every other
    convolution and linear layer reads int8 weights (a per-channel dequantisation before it)."""
    model, simple = tiny
    rng = np.random.default_rng(0)
    graph = mobile.quantize_xnnpack(simple, [rng.standard_normal((1, 3, 40, 56)).astype(np.float32)
                                             for _ in range(2)], progress=False)
    weighted = [n for n in graph.graph.nodes if n.op == "call_function" and n.target in
                (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)]
    in_stem = {n.name: any(path.startswith("stem.") for path, _ in n.meta["nn_module_stack"].values())
               for n in weighted}
    int8 = {n.name: getattr(n.args[1], "target", None) is torch.ops.quantized_decomposed.dequantize_per_channel.default
            for n in weighted}
    assert sum(in_stem.values()) == 3 == sum(isinstance(m, nn.Conv2d) for m in simple.stem.modules())
    assert int8 == {name: not stem for name, stem in in_stem.items()}
    assert sum(int8.values()) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in simple.modules()) - 3


@needs_executorch
@pytest.mark.slow
def test_int8_executorch_runs_and_mostly_agrees(tiny, written, frames):
    model, simple = tiny
    path = written("executorch", "int8")
    assert mobile.read_mobile_meta(path)["export_precision"] == "int8"
    x = np.concatenate([to_tensor(f, model.meta["preprocess"])[None].numpy() for f in frames])
    got, expected = mobile.executorch_runner(path, "int8")(x), eager_logits(simple, x)
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    print(f"int8 argmax agreement with eager fp32 (tiny random model): {100 * agreement:.2f}%")
    assert agreement >= 0.8  # a random tiny model has many close logits; real weights: see the docs
    with pytest.raises(ValueError, match="was exported as int8, not fp32"):
        mobile.executorch_runner(path, "fp32")


def test_writers_refuse_bad_arguments_before_any_work(tiny, tmp_path):
    model, simple = tiny
    with pytest.raises(ValueError, match="fp32 or int8, not 'bf16'"):
        mobile.write_executorch(simple, tmp_path / "m.pte", model.meta, "bf16", None)
    with pytest.raises(ValueError, match="int8 needs calibration frames"):
        mobile.write_executorch(simple, tmp_path / "m.pte", model.meta, "int8", None)
    with pytest.raises(ValueError, match="LiteRT export is fp32 only"):
        mobile.write_litert(simple, tmp_path / "m.tflite", model.meta, "int8", [np.zeros((1, 3, 8, 8), np.float32)])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no such file"):
        mobile.read_mobile_meta(tmp_path / "missing.pte")


# ---- the shipped weights on a real CamVid frame ---------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_shipped_weights_app_ready_file_gives_cgnet_predict_class_ids(fmt, camvid_root, tmp_path):
    sample = read_list(camvid_root / "camvid_test_list.txt", camvid_root, labels=False)[0]
    image = read_rgb(sample.image)
    model = load_model("camvid")
    simple = simplify_for_inference(model)
    size = image.shape[:2]
    path = tmp_path / f"camvid_app.{'pte' if fmt == 'executorch' else 'tflite'}"
    write = mobile.write_executorch if fmt == "executorch" else mobile.write_litert
    write(simple, path, model.meta, "fp32", None, size, app_io=True)
    ids = app_runner(fmt, path)(image)
    predictor = make_predictor("camvid", backend="torch", device="cpu")
    expected = predictor.predict(image)
    logits = predictor.logits(image)
    ties = near_ties(logits, fp32_tolerance(simple, logits))
    assert ((ids == expected) | ties).all()
    print(f"{fmt}: {int((ids != expected).sum())} of {ids.size} pixels differ, {int(ties.sum())} near-ties")


# ---- through cgnet export and the formats table ----------------------------------------------

@needs_executorch
@pytest.mark.slow
def test_cgnet_export_app_io_file_predicts_the_eager_class_ids(randomized_ckpt, camvid, tmp_path, capsys):
    out = tmp_path / "tiny_app.pte"
    assert main(["export", "--checkpoint", str(randomized_ckpt), "--format", "executorch", "--app-io",
                 "--size", "40x48", "--out", str(out), "--data-root", str(camvid)]) == 0
    printed = capsys.readouterr().out
    assert "resized to the file's 40x48" in printed and "class-id agreement" in printed
    predictor = make_predictor(out)
    assert predictor.meta["app_io"] is True and predictor.meta["input_size"] == [40, 48]
    image = read_rgb(sorted((camvid / "test").iterdir())[0])  # the generated frames are 40x48
    eager = make_predictor(randomized_ckpt, backend="torch", device="cpu")
    logits = eager.logits(image)
    ties = near_ties(logits, fp32_tolerance(simplify_for_inference(load_model(randomized_ckpt)), logits))
    assert ((predictor.predict(image) == eager.predict(image)) | ties).all()
    with pytest.raises(ValueError, match="an app-ready file .* gives class ids from images, not logits"):
        predictor.logits(image)


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--app-io"], "--app-io: --format onnx has no app-ready form (executorch, litert have)"),
    (["--format", "onnx", "--size", "64x64"], "--size: --format onnx keeps height and width dynamic; --size is for "
                                              "executorch, litert"),
    (["--format", "litert", "--precision", "int8"], "--format litert writes fp32, not int8: use --format onnx or "
                                                    "openvino or executorch"),
])
def test_export_refuses_phone_options_where_they_do_not_apply(argv, message, randomized_ckpt, capsys):
    assert main(["export", "--checkpoint", str(randomized_ckpt), *argv]) == 2
    assert capsys.readouterr().err == f"cgnet export: error: {message}\n"


# ---- what cgnet prints around the converters and runtimes -------------------------------------

def export_lines(fmt: str, camvid, out) -> list[str]:
    """The exact stdout of `cgnet export` of the tiny model at 40x48 (the generated frames' size),
    the verification's largest logit difference left as a pattern."""
    return [re.escape("folded BatchNorm into convolutions; PReLU as max(x, a*x): yes"),
            rf"verified on 3 real frames from {re.escape(str(camvid))}, resized to the file's 40x48 against eager "
            r"fp32: max \|logit diff\| [0-9.e+-]+, argmax agreement 100\.000% \(needs >= 99\.9%, diff <= 0\.01\)",
            f"wrote {re.escape(str(out))}"]


def assert_lines(text: str, patterns: list[str]) -> None:
    lines = text.splitlines()
    assert len(lines) == len(patterns), lines
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), (line, pattern)


@needs_litert
@pytest.mark.slow
def test_litert_export_prints_the_converters_log_only_with_debug(randomized_ckpt, camvid, tmp_path, capfd):
    """Its progress log (`[START] LiteRT-Torch Convert > ...`, Python prints) and absl's C++ lines
    (`I0000 ... flatbuffer_export.cc`, written to file descriptor 2) appear under --debug only."""
    argv = ["export", "--checkpoint", str(randomized_ckpt), "--format", "litert", "--size", "40x48",
            "--data-root", str(camvid)]
    out = tmp_path / "quiet.tflite"
    assert main([*argv, "--out", str(out)]) == 0
    printed = capfd.readouterr()
    assert_lines(printed.out, export_lines("litert", camvid, out))
    assert printed.err == ""
    loud = tmp_path / "loud.tflite"
    assert main([*argv, "--out", str(loud), "--debug"]) == 0
    printed = capfd.readouterr()
    assert "[START] LiteRT-Torch Convert" in printed.out and "flatbuffer_export.cc" in printed.err
    cgnet_lines = [line for line in printed.out.splitlines()
                   if line.startswith(("folded", "verified", "wrote"))]
    assert_lines("\n".join(cgnet_lines), export_lines("litert", camvid, loud))


@needs_executorch
@pytest.mark.slow
def test_executorch_export_and_predict_print_only_cgnets_lines(randomized_ckpt, camvid, tmp_path, capfd):
    """No torchao "Failed to load ... .so" lines, warnings or ExecuTorch cpuinfo lines."""
    out = tmp_path / "m.pte"
    assert main(["export", "--checkpoint", str(randomized_ckpt), "--format", "executorch", "--size", "40x48",
                 "--data-root", str(camvid), "--out", str(out)]) == 0
    printed = capfd.readouterr()
    assert_lines(printed.out, export_lines("executorch", camvid, out))
    assert printed.err == ""
    image = sorted((camvid / "test").iterdir())[0]
    assert main(["predict", str(image), "--checkpoint", str(out), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    printed = capfd.readouterr()
    lines = printed.out.splitlines()  # the run's one line, ending with its pace
    assert len(lines) == 1 and re.fullmatch(re.escape(f"segmented 1 image with executorch (fp32) -> {tmp_path / 'o'}")
                                            + r": \d+\.\d\d images/s", lines[0])
    assert printed.err == ""


@needs_executorch
@pytest.mark.slow
def test_shipped_weights_int8_executorch_file_keeps_the_test_miou_within_half_a_point(camvid_root, tmp_path):
    """The phone int8 file (`cgnet export --format executorch --precision int8`, calibrated on 200
    training crops) scored by `cgnet eval --backend executorch --precision int8` through ExecuTorch's
    runtime on all 233 CamVid test frames: at most 0.5 test mIoU under eager fp32 (issue 33's budget
    for phones). With the stem quantised too it lost 0.59 (64.74 against 65.33, benchmarks.deploy_table)."""
    miou = {}
    for backend, precision in (("torch", "fp32"), ("executorch", "int8")):
        scores = tmp_path / f"{backend}_{precision}.json"
        assert main(["eval", "--data-root", str(camvid_root), "--split", "test", "--backend", backend,
                     "--precision", precision, "--json", str(scores)]) == 0
        miou[backend] = 100 * json.loads(scores.read_text())["miou"]
    print(f"test mIoU: eager fp32 {miou['torch']:.2f}, executorch int8 {miou['executorch']:.2f}")
    assert miou["torch"] - miou["executorch"] <= 0.5, miou
