import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cgnet import CGNet, count_activation_bytes, count_flops, count_params, save_checkpoint
from cgnet.cli import main


@pytest.mark.parametrize("h, w", [(64, 96), (97, 131)])
def test_flops_agree_with_torch_flop_counter(h, w):
    model = CGNet(19).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, h, w))
    # torch counts the same thing (2 x MACs of convolutions and matmuls)
    assert count_flops(model, h, w)["total"] == counter.get_total_flops()


def test_classifier_flops_by_hand():
    model = CGNet(19)
    # 256 -> 19 1x1 convolution at 1/8 resolution of 64x96: 8 x 12 positions
    assert count_flops(model, 64, 96)["head"] == 2 * 8 * 12 * 256 * 19


def test_params_per_stage_sum_to_total():
    params = count_params(CGNet(19))
    assert params["total"] == 496_306
    assert params["head"] == 256 * 19
    assert sum(params[s] for s in ("stage1", "stage2", "stage3", "head")) == params["total"]


def test_activation_bytes_scale_with_input_area():
    model = CGNet(4, m=2, n=2)
    small = count_activation_bytes(model, 64, 64)["total"]
    large = count_activation_bytes(model, 128, 128)["total"]
    assert 3.5 < large / small <= 4.0
    # at least the stem's first output (32 x 32 x 32 fp32) must have been saved for backward
    assert small > 32 * 32 * 32 * 4


def test_cli_info_prints_paper_parameter_count(capsys):
    assert main(["info", "--num-classes", "19", "--size", "64x128", "--no-activations"]) == 0
    out = capsys.readouterr().out
    assert "496,306" in out and "GFLOPs" in out


def test_cli_info_from_checkpoint(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "c.pt", CGNet(11, m=3, n=15))
    assert main(["info", "--checkpoint", str(path), "--size", "32x32", "--no-activations"]) == 0
    out = capsys.readouterr().out
    assert "classes=11" in out and "N=15" in out


def test_cli_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00\x01garbage")
    assert main(["info", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "not a PyTorch checkpoint" in err


@pytest.mark.slow
def test_cli_bad_size_and_version():
    with pytest.raises(SystemExit):
        main(["info", "--size", "12by3"])
    done = subprocess.run([sys.executable, "-m", "cgnet", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("cgnet ")
