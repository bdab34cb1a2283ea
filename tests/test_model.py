"""The model: parameter counts of the paper's release, arguments, any input size, determinism, dropout,
stored reference logits, fp32 depthwise convolutions under CPU bf16 autocast."""
import pytest
import torch

from cgnet import CGNet
from helpers.paths import DATA
from helpers.rounding import fp32_difference_bound
from helpers.reference_weights import ARCH, seeded_model


@pytest.mark.parametrize("classes, m, n, expected", [
    (19, 3, 21, 496_306), (11, 3, 21, 494_258), (19, 3, 15, 423_682)])
def test_parameter_count_matches_paper_release(classes, m, n, expected):
    model = CGNet(classes, m=m, n=n)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("m, n", [(1, 21), (3, 1), (0, 0)])
def test_too_few_blocks_is_a_clear_error(m, n):
    with pytest.raises(ValueError, match="m >= 2 and n >= 2"):
        CGNet(19, m=m, n=n)


@pytest.mark.parametrize("h, w", [(97, 131), (8, 8), (64, 33)])
def test_forward_backward_arbitrary_size(h, w):
    model = CGNet(5, m=2, n=3, dropout=0.1).train()
    x = torch.randn(2, 3, h, w)
    out = model(x)
    assert out.shape == (2, 5, h, w)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.stem[0].conv.weight.grad.abs().sum() > 0


def test_eval_mode_is_deterministic_and_batch_independent():
    model = CGNet(11, m=2, n=4, dropout=0.1).eval()
    x = torch.randn(3, 3, 45, 61)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    # a batch of 3 and a batch of 1 may be blocked and summed in another order by the kernels
    assert float((a[1:2] - single).abs().max()) <= fp32_difference_bound(model, single)


def test_dropout_is_only_active_in_training():
    model = CGNet(4, m=2, n=2, dropout=0.5)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))


def test_config_rebuilds_the_same_architecture():
    model = CGNet(7, m=4, n=5, dropout=0.1)
    again = CGNet(**model.config)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == \
        [(k, v.shape) for k, v in again.state_dict().items()]


def test_stored_reference_logits():
    # tests/data/reference_small.pt was written by tests/make_reference.py: an input and the
    # logits of a small CGNet with seeded weights, computed when the architecture was checked.
    ref = torch.load(DATA / "reference_small.pt", weights_only=True)
    assert ref["arch"] == ARCH
    model = seeded_model()
    with torch.no_grad():
        out = model(ref["input"])
    # written on another CPU, whose kernels may sum in another order: fp32 rounding only
    assert out.shape == ref["logits"].shape
    assert float((out - ref["logits"]).abs().max()) <= fp32_difference_bound(model, ref["logits"])


def test_depthwise_convs_stay_fp32_under_cpu_bf16_autocast():
    # the CPU bf16 depthwise weight gradient went non-finite in training (see model.depthwise)
    model = CGNet(4, m=2, n=2)
    seen = []
    model.stage2[0].sur.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model.stage2[0].reduce.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 32, 32))
    assert seen == [torch.bfloat16, torch.float32]  # 1x1 conv in bf16, depthwise in fp32
    out.float().sum().backward()
    assert model.stage2[0].sur.weight.grad.dtype == torch.float32


