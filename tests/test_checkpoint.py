import itertools

import numpy as np
import pytest
import torch

from cgnet import CGNet, CheckpointError, load_checkpoint, load_model, make_meta, save_checkpoint
from cgnet.checkpoint import atomic_save
from cgnet.preprocess import original_spec, to_tensor
from helpers import original_reference as ref
from helpers.paths import ORIGINAL_KEYS
from helpers.rounding import fp32_difference_bound


@pytest.fixture(scope="module")
def base_shapes():
    return ref.read_key_list(ORIGINAL_KEYS)


def original_file(tmp_path, state, *, wrapped, prefixed, with_tracked, dropout, name="orig.pth"):
    state = dict(state)
    if not with_tracked:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if dropout:
        state["classifier.1.conv.weight"] = state.pop("classifier.0.conv.weight")
    if prefixed:
        state = {"module." + k: v for k, v in state.items()}
    obj = {"epoch": 300, "model": state} if wrapped else state
    path = tmp_path / name
    torch.save(obj, path)
    return path


# every combination; the quick selection (`-m "not slow"`) keeps one, the full M3N21 forward is seconds each
VARIANTS = [pytest.param(*v, marks=() if all(v) else pytest.mark.slow)
            for v in itertools.product([False, True], repeat=4)]


@pytest.mark.parametrize("wrapped, prefixed, with_tracked, dropout", VARIANTS)
def test_original_checkpoints_load_and_match_reference_forward(tmp_path, base_shapes, wrapped, prefixed,
                                                               with_tracked, dropout):
    state = ref.random_original_state(base_shapes, torch.Generator().manual_seed(3))
    path = original_file(tmp_path, state, wrapped=wrapped, prefixed=prefixed,
                         with_tracked=with_tracked, dropout=dropout)
    model = load_model(path)
    assert model.config == {"num_classes": 19, "m": 3, "n": 21, "dropout": 0.1 if dropout else 0.0}
    assert model.meta["source"] == "original"
    x = torch.randn(1, 3, 67, 91)
    with torch.no_grad():
        ours = model(x)
        expected = ref.forward(state, x)
    # the reference is a plain functional re-implementation: the same sums in ATen's other kernels
    assert float((ours - expected).abs().max()) <= fp32_difference_bound(model, expected)


@pytest.mark.parametrize("classes, n", [pytest.param(11, 21, marks=pytest.mark.slow),
                                        pytest.param(19, 15, marks=pytest.mark.slow), (3, 2)])
def test_original_architecture_is_inferred_from_tensors(tmp_path, base_shapes, classes, n):
    shapes = ref.variant_shapes(base_shapes, num_classes=classes, n=n)
    state = ref.random_original_state(shapes, torch.Generator().manual_seed(5))
    path = original_file(tmp_path, state, wrapped=True, prefixed=True, with_tracked=False, dropout=False)
    model = load_model(path)
    assert (model.num_classes, model.m, model.n) == (classes, 3, n)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        ours, expected = model(x), ref.forward(state, x)
    assert float((ours - expected).abs().max()) <= fp32_difference_bound(model, expected)


def test_original_preprocessing_reproduces_the_release_quirk():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # as cv2.imread returns it
    bgr_mean = [72.4, 82.9, 73.2]
    # the release: float image, reversed to RGB, minus the mean computed on BGR arrays
    expected = bgr[:, :, ::-1].astype(np.float32) - np.array(bgr_mean, dtype=np.float32)
    got = to_tensor(bgr[:, :, ::-1], original_spec(bgr_mean))
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-4)


def test_round_trip_keeps_outputs_and_metadata(tmp_path):
    model = CGNet(11, m=2, n=4, dropout=0.1).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)
    meta = make_meta(model, preprocess=original_spec([1, 2, 3]), classes=[f"c{i}" for i in range(11)],
                     palette=[[i, i, i] for i in range(11)], ignore_index=11, dataset="camvid",
                     config={"lr": 0.001, "epochs": 3})
    path = save_checkpoint(tmp_path / "m.pt", model, meta, epoch=3)
    assert not list(tmp_path.glob(".*tmp"))
    loaded = load_model(path)
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.meta["classes"][3] == "c3" and loaded.meta["ignore_index"] == 11
    assert loaded.meta["config"] == {"lr": 0.001, "epochs": 3}
    assert loaded.meta["preprocess"]["mean"] == [1.0, 2.0, 3.0]
    assert loaded.config == model.config
    state, meta2, whole = load_checkpoint(path)
    assert whole["epoch"] == 3 and meta2["dataset"] == "camvid"


def test_bare_state_dict_of_our_model_loads(tmp_path):
    model = CGNet(6, m=2, n=2).eval()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt")
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


# ---- bad files -------------------------------------------------------------------------------

def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "full.pt", CGNet(4, m=2, n=2))
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(cut)


def test_unknown_keys_are_named(tmp_path, base_shapes):
    state = ref.random_original_state(base_shapes, torch.Generator().manual_seed(1))
    state["level9.0.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"level9\.0\.extra\.weight"):
        load_model(tmp_path / "x.pth")


def test_unknown_keys_in_our_format_are_named(tmp_path):
    model = CGNet(4, m=2, n=2)
    sd = model.state_dict()
    sd["head.bias"] = torch.zeros(4)
    torch.save({"format": "cgnet", "format_version": 1, "model": sd, "meta": make_meta(model)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"unknown keys head\.bias"):
        load_model(tmp_path / "x.pt")


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path, base_shapes):
    state = ref.random_original_state(base_shapes, torch.Generator().manual_seed(1))
    state["level2.1.F_loc.conv.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "x.pth")
    msg = str(info.value)
    assert "stage2.1.loc.weight" in msg and "(16, 1, 3, 3)" in msg and "(32, 1, 3, 3)" in msg


def test_classifier_size_disagreeing_with_num_classes(tmp_path, base_shapes):
    state = ref.random_original_state(base_shapes, torch.Generator().manual_seed(1))
    torch.save({"model": state}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="19 classes but 11 were asked for"):
        load_model(tmp_path / "x.pth", num_classes=11)


def test_dict_without_tensors_is_rejected(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a CGNet checkpoint|neither our format"):
        load_model(tmp_path / "x.pt")


def test_missing_keys_are_named(tmp_path):
    sd = CGNet(4, m=2, n=2).state_dict()
    del sd["bn_act2.act.weight"]
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"missing keys bn_act2\.act\.weight"):
        load_model(tmp_path / "x.pt")


class _RunsCode:
    """Pickles as a call to os.system: loading it unsafely would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    from cgnet.cli import main
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker)}, evil)
    assert main(["info", "--checkpoint", str(evil)]) == 2
    err = capsys.readouterr().err
    assert err == (f"cgnet info: error: {evil}: holds Python code or objects that cgnet refuses to load (it reads "
                   "only tensors and plain data); it is not a checkpoint cgnet or the original release wrote\n")
    assert "weights_only" not in err and not marker.exists()


def test_garbage_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"junk.pt: not a PyTorch checkpoint \(unreadable pickle data\)$"):
        load_model(junk)


def test_subnormal_weights_load_as_zero_and_change_no_output(tmp_path):
    # Adam's weight decay leaves weights without gradient subnormal; x86 CPUs compute with them
    # in microcode (10x slower): load_model sets them to zero, which moves no logit beyond rounding
    torch.manual_seed(0)
    model = CGNet(5, m=2, n=2).eval()
    planted = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 4 and p.numel() > 100:
                flat_view = p.view(-1)
                flat_view[::7] = 1e-39 * torch.sign(flat_view[::7])  # subnormal in fp32
                planted[name] = int((flat_view[::7] != 0).sum())
    assert sum(planted.values()) > 1000
    path = save_checkpoint(tmp_path / "subnormal.pt", model, make_meta(model))
    loaded = load_model(path)
    tiny = torch.finfo(torch.float32).tiny
    for name, p in loaded.named_parameters():
        assert not ((p.abs() < tiny) & (p != 0)).any(), name
    # the file itself is unchanged: a resumed run reads it through load_checkpoint, bit for bit
    state, _, _ = load_checkpoint(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        ours, expected = loaded(x), model(x)
    assert float((ours - expected).abs().max()) <= fp32_difference_bound(model, expected)
