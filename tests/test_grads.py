"""The training-only backward passes (cgnet.engine.grads): gradients against ATen's and against
float64, within the rounding bound of the sums they compute; the model keeps its state_dict.

A length-K dot product in fp32 is within gamma_K * sum|products| of the exact value
(gamma_K = K*u / (1 - K*u), u the fp32 unit roundoff): each gradient element below is such a dot
product (K = k*k taps for the input gradient of a depthwise convolution, N*H*W pixels for its
weight gradient and for PReLU's slope gradient), and float64 stands in for the exact value.
"""
import pytest
import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn import functional

from cgnet import CGNet
from cgnet.checkpoint import load_checkpoint, make_meta, save_checkpoint
from cgnet.engine.grads import (DepthwiseConv, DepthwiseConvFunction, FusedPReLU, KeptResize, PReLUFunction,
                                bilinear_resize, bilinear_resize_backward, depthwise_input_grad,
                                use_training_kernels)
from cgnet.preprocess import make_spec
from helpers.rounding import FP32_U


def gamma(k: int) -> float:
    return k * FP32_U / (1 - k * FP32_U)


def depthwise_case(dilation, channels_last, shape=(3, 8, 23, 19), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(shape[1], 1, 3, 3, generator=gen)
    gy = torch.randn(*shape, generator=gen)
    if channels_last:
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))
    return x, w, gy


def grads_of(fn, x, w, gy):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    fn(x, w).backward(gy)
    return x.grad, w.grad


def aten_depthwise(d):
    return lambda x, w: functional.conv2d(x, w, padding=d, dilation=d, groups=w.shape[0])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("method", ["taps", "conv"])
@pytest.mark.parametrize("dilation", [1, 2, 4])  # CGNet's: loc 1, stage 2 sur 2, stage 3 sur 4 (all stride 1)
def test_depthwise_gradients_within_the_rounding_of_their_sums(dilation, method, channels_last):
    x, w, gy = depthwise_case(dilation, channels_last)
    n, _, h, width = x.shape
    exact_x, exact_w = grads_of(aten_depthwise(dilation), x.double(), w.double(), gy.double())
    # sum |products| of each element: the same sums over absolute values
    abs_x = depthwise_input_grad(gy.double().abs(), w.double().abs(), dilation)
    abs_w = torch.nn.grad.conv2d_weight(x.double().abs(), w.shape, gy.double().abs(), padding=dilation,
                                        dilation=dilation, groups=w.shape[0])
    bound_x, bound_w = gamma(9) * abs_x, gamma(n * h * width) * abs_w
    ours = grads_of(lambda a, b: DepthwiseConvFunction.apply(a, b, dilation, method), x, w, gy)
    aten = grads_of(aten_depthwise(dilation), x, w, gy)
    for got in (ours, aten):  # ATen obeys the same bound: it is the right one
        assert ((got[0].double() - exact_x).abs() <= bound_x).all()
        assert ((got[1].double() - exact_w).abs() <= bound_w).all()
    assert ours[0].shape == x.shape and ours[1].shape == w.shape
    assert ours[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # the bound tells a wrong formula apart: taps not flipped
    unflipped = functional.conv2d(gy, w, padding=dilation, dilation=dilation, groups=w.shape[0])
    assert not ((unflipped.double() - exact_x).abs() <= bound_x).all()


def test_depthwise_forward_is_atens_and_frozen_weights_get_no_gradient():
    x, w, gy = depthwise_case(2, False)
    assert torch.equal(DepthwiseConvFunction.apply(x, w, 2, "taps"), aten_depthwise(2)(x, w))
    xr = x.clone().requires_grad_()
    DepthwiseConvFunction.apply(xr, w, 2, "taps").backward(gy)  # w does not require grad
    assert xr.grad is not None and w.grad is None


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("slopes", [8, 1])
def test_prelu_gradients_within_the_rounding_of_their_sums(channels_last, slopes):
    x, _, gy = depthwise_case(1, channels_last, seed=1)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])  # the kink: x = 0 takes the slope (x > 0 does not)
    a = torch.linspace(-0.3, 0.7, slopes)
    n, _, h, width = x.shape
    exact_x, exact_a = grads_of(functional.prelu, x.double(), a.double(), gy.double())
    negative = x.double().clamp(max=0)
    dims = [0, 2, 3] if slopes > 1 else [0, 1, 2, 3]
    bound_a = gamma(n * h * width * (1 if slopes > 1 else x.shape[1])) * (gy.double() * negative).abs().sum(dims)
    ours = grads_of(PReLUFunction.apply, x, a, gy)
    aten = grads_of(functional.prelu, x, a, gy)
    assert torch.equal(ours[0], aten[0])  # one product per element: both round it the same way
    assert torch.equal(PReLUFunction.apply(x, a), functional.prelu(x, a))
    for got in (ours, aten):
        assert ((got[1].double() - exact_a).abs() <= bound_a).all()
    assert ours[1].shape == a.shape and ours[1].dtype == a.dtype


def small_model():
    torch.manual_seed(0)
    model = CGNet(11, m=2, n=3)
    for module in model.modules():  # slopes away from PyTorch's 0.25 everywhere
        if isinstance(module, nn.PReLU):
            module.weight.data.uniform_(-0.2, 0.6)
    return model


def model_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = functional.cross_entropy(model(x), y, ignore_index=11)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_kept_resize_is_atens_up_sampling_and_its_gradient_bit_for_bit_also_compiled(channels_last):
    """The same ATen kernels, forward and backward, in eager and as an opaque call in an
    inductor-compiled function (which would otherwise decompose both): equal to the bit."""
    x, _, _ = depthwise_case(1, channels_last, shape=(2, 5, 6, 7), seed=2)
    gy = torch.randn(2, 5, 48, 56, generator=torch.Generator().manual_seed(3))

    def interpolate(t):
        return functional.interpolate(t, size=(48, 56), mode="bilinear", align_corners=False)

    expected_y, (expected_g, _) = interpolate(x), grads_of(lambda t, _: interpolate(t), x, x, gy)
    compiled = torch.compile(lambda t: bilinear_resize(t, 48, 56), fullgraph=True)
    for fn in (lambda t: bilinear_resize(t, 48, 56), compiled, lambda t: KeptResize()(t, torch.Size([48, 56]))):
        xr = x.clone().requires_grad_()
        y = fn(xr)
        y.backward(gy)
        assert torch.equal(y, expected_y) and torch.equal(xr.grad, expected_g)
        assert y.stride() == expected_y.stride()
    # the compiled graph calls it rather than tracing it: inductor's own decomposition of the
    # backward (scatter-adds) would sum in another order than ATen's kernel
    counter = CompileCounterWithBackend("aot_eager")
    torch.compile(lambda t: bilinear_resize(t, 48, 56), backend=counter)(x.clone().requires_grad_()).sum().backward()
    ops = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    assert "cgnet.bilinear_resize.default" in ops and not any("upsample" in op for op in ops)


@pytest.mark.parametrize("depthwise, prelu, upsample", [("taps", "fused", "aten"), ("conv", "aten", "compiler"),
                                                        ("aten", "fused", "aten")])
def test_a_model_with_the_training_kernels_keeps_its_weights_and_gradients(depthwise, prelu, upsample, tmp_path):
    plain = small_model().train()
    model = small_model().train()
    names = {n for n, _ in model.named_modules()}
    dw = sum(1 for m in plain.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    prelus = sum(1 for m in plain.modules() if isinstance(m, nn.PReLU))
    before = list(model.parameters())
    counts = use_training_kernels(model, depthwise=depthwise, prelu=prelu, upsample=upsample)
    assert counts == {"depthwise": dw if depthwise != "aten" else 0, "prelu": prelus if prelu == "fused" else 0,
                      "upsample": int(upsample == "aten")}
    # stem 3, bn_act1-3 3, down blocks 2 x 2, CG blocks (1 + 2) x 2 (reduce, bn_act)
    assert dw == 2 * (2 + 3) and prelus == 3 + 3 + 4 + 6
    assert {n for n, _ in model.named_modules()} == names
    assert all(a is b for a, b in zip(before, model.parameters()))  # the optimiser's parameters stay valid
    assert sum(isinstance(m, DepthwiseConv) for m in model.modules()) == counts["depthwise"]
    assert sum(isinstance(m, FusedPReLU) for m in model.modules()) == counts["prelu"]
    assert isinstance(model.resize, KeptResize) == (upsample == "aten")
    state = model.state_dict()
    assert list(state) == list(plain.state_dict()) and all(torch.equal(state[k], v)
                                                          for k, v in plain.state_dict().items())
    # gradients: no further from float64's than ATen's own (the same sums, another order)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 48, 40, generator=gen), torch.randint(0, 12, (2, 48, 40), generator=gen)
    exact_loss, exact = model_grads(small_model().double().train(), x.double(), y)
    aten_loss, aten = model_grads(plain, x, y)
    loss, ours = model_grads(model, x, y)
    aten_error = float((aten.double() - exact).norm())
    assert float((ours.double() - exact).norm()) <= 3 * aten_error
    assert abs(float(loss) - float(exact_loss)) <= 3 * abs(float(aten_loss) - float(exact_loss)) + 1e-6
    # a checkpoint of it loads into a plain CGNet, tensor for tensor
    meta = make_meta(model, preprocess=make_spec("standard"), classes=[str(i) for i in range(11)],
                     palette=[[i, i, i] for i in range(11)], ignore_index=11, dataset="camvid")
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    loaded, _, _ = load_checkpoint(path)
    fresh = CGNet(11, m=2, n=3)
    fresh.load_state_dict(loaded)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_only_same_depthwise_convolutions_are_replaced():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),              # replaced
                          nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),    # stride 2
                          nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=True),               # bias
                          nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False),  # not depthwise
                          nn.Conv2d(4, 4, 3, padding=1, dilation=2, groups=4, bias=False))  # not "same"
    assert use_training_kernels(model, depthwise="taps") == {"depthwise": 1, "prelu": 0, "upsample": 0}
    assert isinstance(model[0], DepthwiseConv) and all(type(m) is nn.Conv2d for m in model[1:])
    with pytest.raises(ValueError, match="unknown backward: depthwise 'fast'"):
        use_training_kernels(model, depthwise="fast")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_the_resize_operators_pass_torch_library_opcheck_also_with_symbolic_sizes(channels_last):
    """Schema, autograd registration, fake implementations (shapes and strides against the real
    kernels) and an AOT trace with dynamic sizes, for the forward and the backward operator."""
    x, _, _ = depthwise_case(1, channels_last, shape=(2, 3, 11, 13), seed=4)
    for op, args in ((bilinear_resize, (x, 17, 19)), (bilinear_resize_backward, (x, 5, 7))):
        results = torch.library.opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, results
