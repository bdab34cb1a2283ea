"""The NCNN format's own pieces: the per-layer fp32 mask written into the .param, both
precisions verified on every export, the metadata beside the file (the round trip itself is
tests/test_export.py's, over every format)."""
import json

import pytest

from cgnet.cli import main
from cgnet.deploy import ncnn_format
from cgnet.deploy.formats import FORMATS

PARAM = """7767517
4 4
Input                    in0                      0 1 in0
Convolution              conv_0                   1 1 in0 1 0=8 1=3 6=216
InnerProduct             fc_0                     1 1 1 2 0=4 1=1 2=32
Interp                   up_0                     1 1 2 out0 0=2 31=1
"""


def test_keep_fp32_masks_exactly_the_layers_of_the_given_types():
    text, marked = ncnn_format.keep_fp32(PARAM, ("InnerProduct", "Interp"))
    lines = text.splitlines()
    assert marked == 1  # Interp already carries a mask of its own: left as it is
    assert lines[4].endswith("2=32 31=7") and lines[5].endswith("0=2 31=1")
    assert lines[:4] == PARAM.splitlines()[:4]  # header, input and the convolution untouched
    assert ncnn_format.keep_fp32(text, ("InnerProduct",)) == (text, 0)  # idempotent


def test_ncnn_runs_fp32_or_its_default_options_only(tmp_path):
    pytest.importorskip("ncnn")
    (tmp_path / "m.param").write_text(PARAM)
    (tmp_path / "m.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="ncnn runs fp32 or fp16 \\(its default options\\), not int8"):
        ncnn_format.ncnn_net(tmp_path / "m.param", "int8")
    (tmp_path / "m.bin").unlink()
    with pytest.raises(FileNotFoundError, match="m.bin: no such file"):
        ncnn_format.ncnn_net(tmp_path / "m.param", "fp32")


@pytest.mark.slow
def test_export_verifies_both_precisions_and_writes_the_mask_and_metadata(randomized_ckpt, camvid, tmp_path,
                                                                          capsys):
    if not FORMATS["ncnn"].installed():
        pytest.skip("ncnn or pnnx not installed (pip install 'cgnet[ncnn]')")
    out = tmp_path / "m.param"
    assert main(["export", "--checkpoint", str(randomized_ckpt), "--format", "ncnn", "--precision", "fp16",
                 "--out", str(out), "--data-root", str(camvid)]) == 0
    printed = capsys.readouterr().out.splitlines()
    checks = [line for line in printed if line.startswith("verified on ")]
    assert [line.rsplit(" ", 1)[1] for line in checks] == ["[fp16]", "[fp32]"]
    assert "needs >= 99.9%, diff <= 0.01)" in checks[1]
    assert printed[-1] == f"wrote {out} and {tmp_path / 'm.bin'} and {tmp_path / 'm.json'}"
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["export_format"] == "ncnn" and meta["export_precision"] == "fp16"
    layers = [line.split() for line in out.read_text().splitlines()[2:]]
    for fields in layers:
        assert ("31=7" in fields) == (fields[0] in ncnn_format.FP32_LAYER_TYPES)
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_the_shipped_weights_ncnn_export_scores_the_camvid_test_split_within_0_05_of_pytorch(camvid_root, tmp_path):
    """The test mIoU of the shipped weights through ncnn's own runtime, with its default options
    (fp16 where the CPU has it) and with fp16 off, each within 0.05 points of eager fp32 PyTorch
    on CamVid's 233 test frames."""
    if not FORMATS["ncnn"].installed():
        pytest.skip("ncnn or pnnx not installed (pip install 'cgnet[ncnn]')")
    miou = {}
    for backend, precision in (("torch", "fp32"), ("ncnn", "fp16"), ("ncnn", "fp32")):
        scores = tmp_path / f"{backend}_{precision}.json"
        assert main(["eval", "--data-root", str(camvid_root), "--split", "test", "--backend", backend,
                     "--precision", precision, "--json", str(scores)]) == 0
        miou[backend, precision] = 100 * json.loads(scores.read_text())["miou"]
    for precision in ("fp16", "fp32"):
        assert abs(miou["ncnn", precision] - miou["torch", "fp32"]) <= 0.05, miou
