"""Frames in flight: `runners.in_order` (results in input order, bounded, errors at their turn),
`Predictor.predict_stream` on OpenVINO (THROUGHPUT, async requests) against `predict`, and
`cgnet predict` through it."""
import gc
import os
import random
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from cgnet import load_model
from cgnet.common import InputError
from cgnet.deploy import export as exporter, runners
from cgnet.deploy.formats import AGREEMENT
from cgnet.deploy.predict import predict_images, predict_video
from cgnet.deploy.predictor import Predictor, load_exported
from cgnet.preprocess import make_spec
from helpers.rounding import fp32_difference_bound, near_ties
from helpers.videos import write_video

H, W = 40, 56


def slow_square(pool, rng, running, limit_seen):
    """submit(x) -> a Future of x * x that finishes after a random delay (so out of order)."""
    lock = threading.Lock()

    def work(x, delay):
        time.sleep(delay)
        with lock:
            running[0] -= 1
        return x * x

    def submit(x):
        with lock:
            running[0] += 1
            limit_seen[0] = max(limit_seen[0], running[0])
        return pool.submit(work, x, rng.uniform(0, 0.01))
    return submit


def test_in_order_keeps_input_order_when_work_finishes_out_of_order():
    rng, running, most = random.Random(0), [0], [0]
    with ThreadPoolExecutor(4) as pool:
        got = list(runners.in_order(slow_square(pool, rng, running, most), range(40), limit=3))
    assert got == [x * x for x in range(40)]
    assert most[0] <= 3  # never more than `limit` in flight


@pytest.mark.parametrize("where", ["input", "result"])
def test_in_order_an_error_at_item_k_comes_after_the_items_before_it(where):
    k, submitted = 7, []

    def inputs():
        for x in range(20):
            if where == "input" and x == k:
                raise InputError(f"frame {k} is broken")
            yield x

    with ThreadPoolExecutor(4) as pool:
        rng = random.Random(1)

        def submit(x):
            submitted.append(x)
            if where == "result" and x == k:
                return runners._failed(InputError(f"frame {k} is broken"))
            return pool.submit(lambda: (time.sleep(rng.uniform(0, 0.01)), x)[1])

        got = []
        with pytest.raises(InputError, match=f"frame {k} is broken"):
            for x in runners.in_order(submit, inputs(), limit=3):
                got.append(x)
    assert got == list(range(k))
    assert max(submitted) <= k + 2  # no more than `limit` submitted beyond the last result taken


def fake_stream_predictor(fail_at=None):
    """A Predictor whose stream runner is `in_order` over a thread pool with random delays (frames
    finish out of order): frame i's class ids are all 2 * i; frame `fail_at` raises."""
    rng, pool = random.Random(2), ThreadPoolExecutor(3)

    def open_stream(labels=False):
        assert labels  # Predictor asks for class ids from the graph
        def stream(inputs, finish):
            count = [0]

            def submit(x):
                index, count[0] = count[0], count[0] + 1

                def work():
                    time.sleep(rng.uniform(0, 0.01))
                    if index == fail_at:
                        raise InputError(f"the model failed on frame {index}")
                    return finish(np.full((1, *x.shape[2:]), 2 * index, np.uint8))
                return pool.submit(work)
            return runners.in_order(submit, inputs, limit=3)
        return stream

    return Predictor(None, {"preprocess": make_spec("standard")}, "fake", open_stream=open_stream)


def test_predict_images_through_a_stream_keeps_order_and_stops_at_an_error(tmp_path):
    paths = []
    for i in range(9):
        paths.append(tmp_path / "in" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        cv2.imwrite(str(paths[-1]), np.full((H, W, 3), 20 * i, np.uint8))
    predict_images(fake_stream_predictor(), paths, tmp_path / "out", progress=False, overlay=False)
    for i in range(9):  # each file holds its own frame's class ids, whatever order the frames finished in
        mask = cv2.imread(str(tmp_path / "out" / "masks" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (H, W) and (mask == 2 * i).all()

    with pytest.raises(InputError, match="the model failed on frame 4"):
        predict_images(fake_stream_predictor(fail_at=4), paths, tmp_path / "failed", progress=False, overlay=False)
    for sub in ("masks", "color"):
        assert sorted(p.name for p in (tmp_path / "failed" / sub).iterdir()) == [f"{i}.png" for i in range(4)]


@pytest.fixture(scope="module")
def openvino_file(randomized_ckpt, tmp_path_factory):
    pytest.importorskip("openvino")
    return exporter.export(load_model(randomized_ckpt), tmp_path_factory.mktemp("ov") / "m.xml", "openvino",
                           log=lambda *a: None)


def frames(count, seed=0, size=(H, W)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_stream_gives_the_argmax_of_the_same_models_logits(openvino_file, randomized_ckpt, precision):
    # The stream's graph ends in TopK (k=1, stable); against numpy's argmax of the logits of the same
    # THROUGHPUT model without it. Appending a node may let OpenVINO pick other kernels for the last
    # layers, so the bounds are those of two computations, as in the next test: fp32 class ids differ
    # only at near ties of the logits, bf16 ones within the formats table's agreement.
    predictor = load_exported(openvino_file, precision)
    assert predictor._stream is None  # nothing compiled for streams until one is asked for
    shots = frames(7)
    streamed = np.stack(list(predictor.predict_stream(shots)))
    stream = predictor._stream
    assert stream.jobs >= 2
    assert str(stream.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert int(stream.compiled.get_property("NUM_STREAMS")) == runners.STREAMS
    assert streamed.dtype == np.uint8 and streamed.shape == (7, H, W)
    logits = np.concatenate(list(predictor.open_stream()(map(predictor.input, shots))))
    same = streamed == logits.argmax(1)
    if precision == "fp32":
        reference = torch.from_numpy(logits)
        bound = fp32_difference_bound(load_model(randomized_ckpt).eval(), reference)
        assert not (~same & ~near_ties(reference, bound).numpy()).any()
    else:
        assert same.mean() >= AGREEMENT["bf16"]


def test_openvino_argmax_takes_the_lowest_class_of_equal_maxima(tmp_path):
    """with_argmax on a graph whose logits tie: equal maxima give the lowest class index, as numpy."""
    openvino = pytest.importorskip("openvino")
    ops = openvino.opset13
    x = ops.parameter([1, 4, 2, 3], np.float32)
    model = openvino.Model([ops.result(ops.multiply(x, ops.constant(np.float32(1))))], [x])
    openvino.save_model(model, str(tmp_path / "tie.xml"))
    logits = np.array([[[[0, 1, 2], [3, 3, 5]], [[0, 1, 2], [3, 4, 5]], [[0, 0, 2], [3, 4, 5]],
                        [[-1, 1, 1], [3, 4, 5]]]], np.float32)
    stream = runners.openvino_stream_runner(tmp_path / "tie.xml", "fp32", labels=True)
    (ids,) = list(stream([logits]))
    np.testing.assert_array_equal(ids, logits.argmax(1).astype(np.uint8))
    np.testing.assert_array_equal(ids[0], [[0, 0, 0], [0, 1, 0]])


def test_openvino_throughput_and_latency_models_agree(openvino_file, randomized_ckpt):
    # The THROUGHPUT model runs each frame in one stream (its own threads), the LATENCY one across
    # the cores: kernels may split their sums differently, so fp32 logits may differ by rounding
    # alone (bounded as two fp32 computations, tests/helpers/rounding.py) and class ids only at near
    # ties. bf16 rounds between layers, so a rounding difference can grow: it is held to the formats
    # table's agreement. On the machine this was written on both were bitwise identical.
    model = load_model(randomized_ckpt).eval()
    shots = frames(5, seed=3)
    for precision in ("fp32", "bf16"):
        predictor = load_exported(openvino_file, precision)
        latency = np.stack([predictor.logits(s) for s in shots])
        throughput = np.concatenate(list(predictor.open_stream()(map(predictor.input, shots))))
        same = (latency.argmax(1) == throughput.argmax(1))
        if precision == "fp32":
            reference = torch.from_numpy(latency)
            bound = fp32_difference_bound(model, reference)
            assert np.abs(latency - throughput).max() <= bound
            assert not (~same & ~near_ties(reference, bound).numpy()).any()
        else:
            assert same.mean() >= AGREEMENT["bf16"]
        streamed = np.stack(list(predictor.predict_stream(shots)))
        np.testing.assert_array_equal(streamed, throughput.argmax(1).astype(np.uint8))


def test_openvino_video_with_frames_in_flight_and_an_error_at_frame_k(openvino_file, tmp_path, monkeypatch):
    write_video(tmp_path / "clip.mp4", frames(11, seed=4, size=(48, 64)))
    predictor = load_exported(openvino_file)
    assert predict_video(predictor, tmp_path / "clip.mp4", tmp_path / "a.mp4", progress=False) == 11
    stream = predictor._stream
    assert stream is not None  # the video ran through the THROUGHPUT model

    calls = []

    def failing(ids):  # in OpenVINO's callback threads: the sixth frame to finish fails
        calls.append(1)
        if len(calls) == 6:
            raise InputError("the model failed on a frame")
        return ids[0].copy()
    monkeypatch.setattr("cgnet.deploy.predictor._first", failing)
    with pytest.raises(InputError, match="the model failed on a frame"):
        predict_video(predictor, tmp_path / "clip.mp4", tmp_path / "b.mp4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "clip.mp4"]  # no partial file, no b.mp4

    # Nothing keeps the stream model once the predictor is dropped, not even the frame's error
    # (through its traceback, it holds the frames that held the predictor): left alive, OpenVINO's
    # stream threads made a later fork and subprocess crash the test process.
    gone = weakref.ref(predictor), weakref.ref(stream)
    del predictor, stream
    gc.collect()
    assert [ref() for ref in gone] == [None, None]


def test_one_image_does_not_compile_the_stream_model(openvino_file, tmp_path):
    predictor = load_exported(openvino_file)
    shot = frames(1, seed=5)[0]
    cv2.imwrite(str(tmp_path / "one.png"), cv2.cvtColor(shot, cv2.COLOR_RGB2BGR))
    predict_images(predictor, [tmp_path / "one.png"], tmp_path / "out", progress=False)
    assert predictor._stream is None
    mask = cv2.imread(str(tmp_path / "out" / "masks" / "one.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, predictor.predict(shot))


FORK_AFTER_PREDICT = """
import subprocess, sys, torch
from cgnet.cli import main
assert main(["predict", sys.argv[1], "--no-progress", "--out", sys.argv[2], "--backend", "openvino",
             "--precision", "fp32", "--checkpoint", sys.argv[3]]) == 0
loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2, num_workers=1, multiprocessing_context="fork")
assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
print(subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True).stdout, end="")
"""


@pytest.mark.slow
def test_forking_after_cgnet_predict_on_openvino_streams(tmp_path, randomized_ckpt):
    """`cgnet predict` frees its stream model when done (`Predictor.close`). With OpenVINO's stream
    threads left alive, a fork for a loader worker and then a subprocess crashed the process
    (segmentation fault): the test suite did so, a predict test followed by the CLI's loader tests."""
    pytest.importorskip("openvino")
    for i in range(2):
        (tmp_path / "in").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), frames(1, seed=i)[0])
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_PREDICT, str(tmp_path / "in"), str(tmp_path / "out"),
                           str(randomized_ckpt)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CGNET_NO_REEXEC": "1", "CGNET_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith("child\n")


SIGNAL_AFTER_MODELS_FREED_OUT_OF_ORDER = """
import gc, os, signal, sys
import numpy as np
from cgnet.deploy.predictor import load_exported
shot = np.zeros((48, 64, 3), np.uint8)
first, second = load_exported(sys.argv[1]), load_exported(sys.argv[1])
first.predict(shot), second.predict(shot)
list(second.predict_stream([shot] * 3))
del first  # freed in the order they were made, not the reverse
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGUSR1, lambda *args: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive")
"""


def test_a_signal_after_openvino_models_are_freed_out_of_order_is_handled(openvino_file):
    """OpenVINO gives a thread that runs inference an alternate signal stack of its own, and a
    compiled model puts back the one it found when it is destroyed: freed in creation order, the
    thread was left with a freed stack, and the next signal with a Python handler killed the process
    (SIGSEGV from the kernel, no traceback; the test suite died so in a SIGTERM test). The runners
    give the thread its own stack back after each call (`runners.signal_stack_kept`)."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_MODELS_FREED_OUT_OF_ORDER, str(openvino_file)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "CGNET_NO_REEXEC": "1"})
    assert (done.returncode, done.stdout) == (0, "handled\nalive\n"), done.stderr[-2000:]
