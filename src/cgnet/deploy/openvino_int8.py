"""int8 OpenVINO IR by NNCF's post-training quantisation, with accuracy control.

The fp32 IR is quantised (FakeQuantize on activations and weights, calibrated on training crops),
then `nncf.quantize_with_accuracy_control` scores it against the fp32 IR with the checkpoint's own
metric (mIoU from `cgnet.confusion`, on labelled frames of the dataset's val split) and reverts to
float, one group of operations at a time and the costliest first, until the int8 graph loses at
most `MAX_DROP` of mIoU. OpenVINO runs what stays float in fp32 (`runners.openvino_runner` at
int8). The report says what was quantised and what was kept in float; it goes into the file's metadata.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..confusion import ConfusionMatrix
from .runners import require, signal_stack_kept

# the largest mIoU accuracy control lets int8 lose, absolute, as a fraction (cgnet.confusion's
# mIoU is in 0..1): 0.003 is 0.3 mIoU points
MAX_DROP = 0.003
# accuracy control ranks the quantised groups by their cost on this many of the validation frames
# (the ones int8 hurts most); each group is one run over them, so this bounds the ranking's time
RANKING_FRAMES = 8
# at most this many groups reverted to float (each revert is one run over the validation frames)
MAX_REVERTS = 24
# operations whose inputs NNCF quantises; one of them without a FakeQuantize before it runs in float
QUANTISABLE = ("Convolution", "GroupConvolution", "MatMul")


@dataclass(frozen=True)
class Validation:
    """Labelled frames for accuracy control.

    Args:
        items: (normalised 1 x 3 x H x W float32 image, H x W int64 label) pairs.
        num_classes, ignore_index: of the labels.
        source: what the frames are, for the metadata ("20 of 101 val frames of ...").
    """
    items: list[tuple[np.ndarray, np.ndarray]]
    num_classes: int
    ignore_index: int
    source: str


def miou_function(num_classes: int, ignore_index: int):
    """validate(compiled, items) -> (mIoU over the items, per-item mIoU), NNCF's validation function:
    `compiled` is an OpenVINO compiled model (logits out), `items` (image, label) pairs."""
    def validate(compiled, items) -> tuple[float, list[float]]:
        total = ConfusionMatrix(num_classes, ignore_index)
        each = []
        for x, label in items:
            with signal_stack_kept():  # NNCF's compiled models and ours: see runners.signal_stack_kept
                logits = np.asarray(compiled(x)[0])
            pred = torch.from_numpy(logits.argmax(1)[0])
            one = ConfusionMatrix(num_classes, ignore_index)
            one.update(pred, torch.from_numpy(np.asarray(label)))
            total.mat += one.mat
            each.append(one.scores()["miou"])
        return total.scores()["miou"], each
    return validate


def quantize(model, calibration: list[np.ndarray], validation: Validation | None):
    """The OpenVINO model `model` (fp32) quantised to int8 by NNCF.

    Args:
        model: an `openvino.Model` with one N x 3 x H x W input.
        calibration: normalised 1 x 3 x H x W float32 crops for the activation ranges.
        validation: labelled frames for accuracy control (at most `MAX_DROP` mIoU lost; the
            costliest groups reverted to float), or None for plain post-training quantisation.

    Returns:
        (the quantised model, what it runs in int8 and keeps in float: `_report`).
    """
    nncf = require("nncf", "openvino-int8")
    calib = nncf.Dataset(calibration)
    common = dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                  subset_size=len(calibration))
    if validation is None:
        quantized = nncf.quantize(model, calib, **common)
        return quantized, _report(quantized, {"accuracy_control": None})
    valid = nncf.Dataset(validation.items, lambda item: item[0])
    validate = miou_function(validation.num_classes, validation.ignore_index)
    openvino = require("openvino")
    with tempfile.TemporaryDirectory() as plain_dir:  # NNCF saves its plain quantisation there, before reverting
        advanced = nncf.AdvancedAccuracyRestorerParameters(
            ranking_subset_size=min(RANKING_FRAMES, len(validation.items)), max_num_iterations=MAX_REVERTS,
            intermediate_model_dir=plain_dir)
        quantized = nncf.quantize_with_accuracy_control(
            model, calib, valid, validate, max_drop=MAX_DROP, drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=advanced, **common)
        plain = openvino.Core().read_model(str(Path(plain_dir) / "intermediate_model.xml"))
    scores = {}
    for name, m in (("fp32", model), ("plain_int8", plain), ("int8", quantized)):
        with signal_stack_kept():
            compiled = openvino.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        scores[name] = validate(compiled, validation.items)[0]
    reverted = sorted(_quantized_inputs(plain) - _quantized_inputs(quantized))
    control = {"metric": "mIoU (0-1)", "frames": validation.source, "max_drop": MAX_DROP,
               "ranking_frames": advanced.ranking_subset_size, "max_reverts": MAX_REVERTS,
               **{f"miou_{name}": value for name, value in scores.items()},
               "held": scores["fp32"] - scores["int8"] <= MAX_DROP, "reverted_to_float": reverted}
    return quantized, _report(quantized, {"accuracy_control": control})


def _split(model) -> tuple[list[str], list[str]]:
    """The names of `model`'s convolutions and matrix products (`QUANTISABLE`) with a FakeQuantize
    on their data input (int8), and without (float)."""
    int8, kept = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() in QUANTISABLE:
            source = op.input_value(0).get_node()
            (int8 if source.get_type_name() == "FakeQuantize" else kept).append(op.get_friendly_name())
    return int8, kept


def _quantized_inputs(model) -> set[str]:
    """Every operation input of `model` fed by an activation's FakeQuantize, as 'name:input' (any
    operation: accuracy control also reverts the quantisers in front of PReLU's maximum and
    multiplication, additions and concatenations, which `_split` does not list). The weights'
    quantisers are left out: NNCF's intermediate file keeps them as FakeQuantize, the final file
    may hold them compressed, so comparing them would list every weight."""
    return {f"{op.get_friendly_name()}:{i}" for op in model.get_ordered_ops()
            for i, value in enumerate(op.input_values())
            if value.get_node().get_type_name() == "FakeQuantize"
            and value.get_node().input_value(0).get_node().get_type_name() != "Constant"}


def _report(quantized, control: dict) -> dict:
    """What the quantised model runs in int8 and what it keeps in float (`_split`), by the names
    of the fp32 IR's operations; with accuracy control, `control` also lists the ones it reverted."""
    int8, kept = _split(quantized)
    return {"tool": f"nncf {require('nncf').__version__}", "int8_ops": len(int8), "float_ops": kept, **control}
