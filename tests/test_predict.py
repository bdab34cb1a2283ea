"""`cgnet predict` on small generated images and a tiny video, with a tiny checkpoint."""
import random
import re
import sys
import threading
import time
from contextlib import closing

import cv2
import numpy as np
import pytest
import torch

from cgnet import CGNet, load_model, make_meta, save_checkpoint
from cgnet.cli import main
from cgnet.common import InputError
from cgnet.deploy import predict as predict_module
from cgnet.deploy.predict import predict_images, predict_video
from cgnet.pipeline import OrderedWorker, prefetch
from cgnet.data.catalog import CAMVID
from cgnet.preprocess import make_spec, to_tensor
from cgnet.deploy.predictor import make_predictor
from helpers.videos import write_video

H, W = 40, 56


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = CGNet(11, m=2, n=2).eval()
    meta = make_meta(model, preprocess=make_spec("standard"), classes=list(CAMVID.classes),
                     palette=[list(c) for c in CAMVID.palette], ignore_index=11, dataset="camvid")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, meta)


def write_image(path, seed, size=(H, W)):
    """A random RGB image with some structure; returns it as RGB."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    img[: size[0] // 2] //= 3
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return img


def run(*argv):
    return main(["predict", "--backend", "torch", "--device", "cpu", "--no-progress", *map(str, argv)])


def test_folder_file_and_glob(ckpt, tmp_path, capsys):
    write_image(tmp_path / "folder" / "a.png", 1)
    write_image(tmp_path / "folder" / "b.png", 2)
    (tmp_path / "folder" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "single.png", 3)
    write_image(tmp_path / "glob" / "g1.png", 4)
    write_image(tmp_path / "glob" / "g2.bmp", 5)
    out = tmp_path / "out"
    # the folder's a.png is named again, directly and through the glob: processed once
    assert run(tmp_path / "folder", tmp_path / "single.png", str(tmp_path / "glob" / "g*"),
               tmp_path / "folder" / "a.png", str(tmp_path / "**" / "a.png"),
               "--checkpoint", ckpt, "--out", out) == 0
    stems = ["a", "b", "g1", "g2", "single"]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == stems
    assert sorted(p.name for p in (out / "color").iterdir()) == [f"{s}.png" for s in stems]
    assert sorted(p.name for p in (out / "overlay").iterdir()) == [f"{s}.jpg" for s in stems]
    assert "5 images" in capsys.readouterr().out

    predictor = make_predictor(ckpt, backend="torch", device="cpu")
    model = load_model(ckpt)
    palette = np.asarray(CAMVID.palette, dtype=np.uint8)
    for src in [tmp_path / "folder" / "a.png", tmp_path / "glob" / "g2.bmp", tmp_path / "single.png"]:
        image = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(out / "masks" / f"{src.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask, predictor.predict(image))
        with torch.no_grad():
            direct = model(to_tensor(image, model.meta["preprocess"])[None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(mask, direct)
        color = cv2.cvtColor(cv2.imread(str(out / "color" / f"{src.stem}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(color, palette[mask])
        overlay = cv2.imread(str(out / "overlay" / f"{src.stem}.jpg"))
        assert overlay.shape == (H, W, 3)
    check_legend(out / "legend.png", list(CAMVID.classes), palette)


def check_legend(path, names, palette):
    """OUT/legend.png: one class a row, each swatch in its palette colour where the layout rule of
    visualize.legend puts it (font scale 0.6; a line as tall as 'Ag' with its descent, padding half
    a line; a cell is swatch, padding, the widest name and two paddings)."""
    legend = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    (_, above), descent = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    line = above + descent
    pad = line // 2
    widest = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0] for n in names)
    assert legend.shape == (pad + len(names) * (line + pad), pad + line + pad + widest + 2 * pad, 3)
    for i, color in enumerate(palette[:len(names)]):
        y = pad + i * (line + pad)
        assert (legend[y + 1:y + line - 1, pad + 1:pad + line - 1] == color).all(), names[i]


def test_duplicate_stems_do_not_overwrite_and_no_overlay(ckpt, tmp_path):
    a = write_image(tmp_path / "left" / "frame.png", 1)
    b = write_image(tmp_path / "right" / "frame.png", 2)
    out = tmp_path / "out"
    assert run(tmp_path / "left", tmp_path / "right", "--checkpoint", ckpt, "--out", out, "--no-overlay") == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["left_frame.png", "right_frame.png"]
    assert not (out / "overlay").exists()
    predictor = make_predictor(ckpt, backend="torch", device="cpu")
    for name, image in (("left_frame", a), ("right_frame", b)):
        np.testing.assert_array_equal(cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED),
                                      predictor.predict(image))


def test_video(ckpt, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(clip, [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(5)])
    out = tmp_path / "out"
    assert run(clip, "--checkpoint", ckpt, "--out", out) == 0
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert cap.isOpened()
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 5 and all(f.shape == (48, 64, 3) for f in frames)
    assert "5 frames from 1 video" in capsys.readouterr().out


def test_errors(ckpt, tmp_path, capsys):
    missing = tmp_path / "nowhere.png"
    assert run(missing, "--checkpoint", ckpt, "--out", tmp_path / "o") == 2
    assert str(missing) in capsys.readouterr().err
    assert run(str(tmp_path / "none*.png"), "--checkpoint", ckpt, "--out", tmp_path / "o") == 2
    assert "none*.png" in capsys.readouterr().err
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    assert run(bad, "--checkpoint", ckpt, "--out", tmp_path / "o") == 2
    assert str(bad) in capsys.readouterr().err
    badvid = tmp_path / "broken.mp4"
    badvid.write_bytes(b"not a video either")
    assert run(badvid, "--checkpoint", ckpt, "--out", tmp_path / "o") == 2
    assert str(badvid) in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(tmp_path / "empty", "--checkpoint", ckpt, "--out", tmp_path / "o") == 2
    assert "no images" in capsys.readouterr().err
    write_image(tmp_path / "ok.png", 0)
    assert run(tmp_path / "ok.png", "--checkpoint", ckpt, "--out", tmp_path / "o", "--precision", "int8") == 2
    assert "int8" in capsys.readouterr().err


def test_missing_backend_says_how_to_install(ckpt, tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "x.png", 0)
    # whether or not onnxruntime is installed here, make it unimportable
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--no-progress"]) == 2
    assert "pip install 'cgnet[onnx]'" in capsys.readouterr().err


def test_an_image_that_cannot_be_written_is_one_line_naming_it(ckpt, tmp_path, capsys):
    """cv2.imwrite answers False and writes nothing where it cannot write (a full disk, a folder in
    the way); every image write goes through cgnet.images.write_image, which says so."""
    write_image(tmp_path / "in" / "a.png", 0)
    write_image(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "out"
    (out / "color" / "b.png").mkdir(parents=True)  # a folder where b's colour mask goes
    assert run(tmp_path / "in", "--checkpoint", ckpt, "--out", out) == 2
    err = capsys.readouterr().err
    assert err == f"cgnet predict: error: cannot write {out / 'color' / 'b.png'} (Is a directory)\n"
    assert (out / "color" / "a.png").is_file() and not (out / "legend.png").exists()


def test_write_image_refuses_what_it_cannot_encode_and_leaves_no_file(tmp_path):
    from cgnet.common import CGNetError
    from cgnet.images import write_image as write_checked
    with pytest.raises(CGNetError, match=r"^cannot write .*/x\.nosuchformat: OpenCV cannot encode a uint8 4x4 image as \.nosuchformat$"):
        write_checked(tmp_path / "x.nosuchformat", np.zeros((4, 4), np.uint8))
    with pytest.raises(CGNetError, match=r"^cannot write .*/missing/x\.png \(No such file or directory\)$"):
        write_checked(tmp_path / "missing" / "x.png", np.zeros((4, 4), np.uint8))
    assert not (tmp_path / "x.nosuchformat").exists() and not (tmp_path / "missing").exists()
    written = write_checked(tmp_path / "ok.png", np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert cv2.imread(str(written), cv2.IMREAD_UNCHANGED).tolist() == np.arange(12).reshape(3, 4).tolist()


# ---- the fastest accurate path by default -----------------------------------------------------

EVERY_BACKEND = ["torch", "onnxruntime", "openvino", "executorch", "litert"]


@pytest.mark.parametrize("capability, bf16, installed, expected", [
    ("AVX512", True, EVERY_BACKEND, ("openvino", "bf16")),    # native bf16: OpenVINO bf16
    ("AVX2", True, EVERY_BACKEND, ("openvino", "bf16")),      # the flag decides, whatever ATen picked
    ("AVX512", False, EVERY_BACKEND, ("openvino", "fp32")),   # ONNX Runtime lost to eager there: not listed
    ("AVX512", False, ["torch", "onnxruntime"], ("torch", "fp32")),
    ("AVX2", False, EVERY_BACKEND, ("onnxruntime", "fp32")),  # 1.52x against OpenVINO's 1.44x
    ("AVX2", False, ["torch", "openvino"], ("openvino", "fp32")),
    ("AVX2", False, ["torch"], ("torch", "fp32")),
    ("DEFAULT", False, EVERY_BACKEND, ("openvino", "fp32")),  # not measured: the earlier default
    ("DEFAULT", False, ["torch"], ("torch", "fp32")),
])
def test_the_default_path_for_each_kind_of_cpu(capability, bf16, installed, expected):
    from cgnet.deploy.fastest import fastest_paths
    paths, description = fastest_paths("auto", "auto", installed, capability, bf16)
    assert (paths[0].backend, paths[0].precision) == expected
    assert paths[-1].backend == "torch"  # the exact reference is always the last resort
    assert description == (f"{capability} CPU with native bf16" if bf16 else
                           f"{capability} CPU without native bf16" if capability != "DEFAULT" else "DEFAULT CPU")
    # what the user fixes narrows the choice: --precision fp32 on a bf16 CPU, --backend torch
    fp32, _ = fastest_paths("auto", "fp32", installed, capability, bf16)
    assert all(p.precision == "fp32" for p in fp32) and fp32
    assert [p.backend for p in fastest_paths("torch", "auto", installed, capability, bf16)[0]] == ["torch"]


def test_native_bf16_is_read_from_the_cpu_flags():
    from cgnet.common import cpu_has_native_bf16
    line = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\nbogomips\t: 4800\n"
    assert cpu_has_native_bf16(line.format("avx512_bf16 avx512_vnni"))
    assert cpu_has_native_bf16(line.format("amx_bf16 amx_tile"))
    assert not cpu_has_native_bf16(line.format("avx512_vnni"))
    assert not cpu_has_native_bf16(line.format("xavx512_bf16y"))  # whole flags only
    assert not cpu_has_native_bf16("model name\t: avx512_bf16 in a name, not a flag\n")


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a given kind of CPU with a given set of installed runtimes."""
    from cgnet.deploy import fastest, predictor

    def pretend(capability: str, bf16: bool, installed: list[str]):
        monkeypatch.setattr(fastest.torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(fastest, "cpu_has_native_bf16", lambda: bf16)
        monkeypatch.setattr(predictor, "available_backends", lambda: list(installed))
    return pretend


def test_predict_prints_the_path_it_chose_and_obeys_an_override(ckpt, tmp_path, cpu, capsys):
    write_image(tmp_path / "x.png", 0)
    cpu("AVX2", False, ["torch"])
    out = tmp_path / "o"
    args = ["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu",
            "--no-progress"]
    pace = r": \d+\.\d\d images/s"  # the run's last line ends with its pace
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("inference path: AVX2 CPU without native bf16: torch fp32 (eager PyTorch, the exact "
                        "reference); override with --backend/--precision")
    assert len(lines) == 2 and re.fullmatch(re.escape(f"segmented 1 image with torch (fp32) -> {out}") + pace, lines[1])
    assert main([*args, "--backend", "torch", "--precision", "bf16"]) == 0  # overridden: nothing chosen, no line
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and re.fullmatch(re.escape(f"segmented 1 image with torch (bf16) -> {out}") + pace, lines[0])
    cpu("AVX512", True, ["torch"])  # OpenVINO missing: the bf16 path is not installed, torch fp32 runs
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(
        "inference path: AVX512 CPU with native bf16: torch fp32 (")


def test_a_refused_fast_path_gives_way_to_the_next_one_once(ckpt, tmp_path, cpu, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from cgnet.deploy import formats
    monkeypatch.setenv("CGNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(formats.AGREEMENT, "fp32", 1.01)  # no export can pass
    cpu("AVX2", False, ["torch", "onnxruntime"])
    write_image(tmp_path / "x.png", 0)
    args = ["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("inference path: AVX2 CPU without native bf16: onnxruntime fp32 (measured 1.52x")
    assert lines[-2] == ("inference path: onnxruntime fp32 refused (the onnx fp32 export disagrees with PyTorch "
                         "beyond the tolerance (argmax agreement 100.00%, max |diff| " + lines[-2].split("max |diff| ")[1])
    assert lines[-2].endswith("); not kept); torch fp32 instead (eager PyTorch, the exact reference)")
    assert lines[-1].startswith("segmented 1 image with torch (fp32)")
    # remembered: the next run does not export again
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "refused" in lines[1] and not any("verified" in line for line in lines)


def test_eval_keeps_exact_fp32_unless_asked():
    from cgnet.cli import make_parser
    args = make_parser().parse_args(["eval"])
    assert (args.backend, args.precision) == ("torch", "fp32")
    predict = make_parser().parse_args(["predict", "x.png"])
    assert (predict.backend, predict.precision) == ("auto", "auto")

# ---- decoding, the model and writing overlapped ----------------------------------------------------

def jitter(fn, rng, most=0.004):
    """fn with a random delay of up to `most` seconds before each call: stages finish out of step."""
    def slow(*args):
        time.sleep(most * rng.random())
        return fn(*args)
    return slow


def stage_threads():
    return [t for t in threading.enumerate() if t.name.startswith("cgnet-")]


def test_prefetch_and_ordered_worker_keep_order_under_random_delays():
    rng = random.Random(0)
    written = []
    with closing(prefetch((jitter(lambda i: i, rng)(i) for i in range(60)), depth=2)) as items, \
            OrderedWorker(jitter(written.append, rng), depth=3) as writer:
        for i in items:
            writer.put(jitter(lambda k: k * k, rng)(i))
    assert written == [i * i for i in range(60)]
    assert stage_threads() == []


def test_an_error_in_any_stage_stops_at_its_item():
    def source():
        for i in range(100):
            if i == 7:
                raise InputError("frame 7 is broken")
            yield i

    written = []
    with pytest.raises(InputError, match="frame 7 is broken"):
        with closing(prefetch(source(), depth=2)) as items, OrderedWorker(written.append, depth=3) as writer:
            for i in items:
                writer.put(i)
    assert written == list(range(7))  # what the sequential loop writes before the error; nothing after

    def write(i):
        if i == 4:
            raise OSError("disk full")
        written.append(i)

    written.clear()
    put = 0
    with pytest.raises(OSError, match="disk full"):
        with closing(prefetch(iter(range(100)), depth=2)) as items, OrderedWorker(write, depth=3) as writer:
            for i in items:
                writer.put(i)
                put += 1
    assert written == [0, 1, 2, 3]
    assert put <= 4 + 3 + 1  # the error is raised by a put at most the queue's depth later
    assert stage_threads() == []  # both threads have ended


def test_folder_overlapped_gives_the_sequential_files_under_random_delays(ckpt, tmp_path, monkeypatch):
    sources = [write_image(tmp_path / "in" / f"{i:02d}.png", i, size=(H + i % 3, W)) for i in range(12)]
    paths = sorted((tmp_path / "in").iterdir())
    predictor = make_predictor(ckpt, backend="torch", device="cpu")
    predict_images(predictor, paths, tmp_path / "sequential", overlap=False, progress=False)
    rng = random.Random(1)
    monkeypatch.setattr(predict_module, "read_rgb", jitter(predict_module.read_rgb, rng))
    monkeypatch.setattr(predict_module, "write_image", jitter(predict_module.write_image, rng, 0.002))
    predictor.predict = jitter(predictor.predict, rng)
    predict_images(predictor, paths, tmp_path / "overlapped", progress=False)
    for sub, suffix in (("masks", "png"), ("color", "png"), ("overlay", "jpg")):
        for i in range(12):
            assert ((tmp_path / "overlapped" / sub / f"{i:02d}.{suffix}").read_bytes()
                    == (tmp_path / "sequential" / sub / f"{i:02d}.{suffix}").read_bytes())
    for i, image in enumerate(sources):  # each file holds its own image's mask
        mask = cv2.imread(str(tmp_path / "overlapped" / "masks" / f"{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, predictor.predict(image))


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    return frames


N_FRAMES = 23  # more than the queues hold


def test_video_frames_written_in_order_under_random_delays(ckpt, tmp_path, monkeypatch, capsys):
    # frame i is flat grey 10 * i; a model that labels a frame by its grey level (class i % 11), slowly
    write_video(tmp_path / "clip.mp4", [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(N_FRAMES)])
    predictor = make_predictor(ckpt, backend="torch", device="cpu")
    rng = random.Random(2)
    predictor.predict = jitter(lambda rgb: np.full(rgb.shape[:2], round(rgb.mean() / 10) % 11, np.uint8), rng)
    monkeypatch.setattr(predict_module, "make_predictor", lambda *a, **k: predictor)
    monkeypatch.setattr(predict_module, "blend", jitter(predict_module.blend, rng))
    assert run(tmp_path / "clip.mp4", "--checkpoint", ckpt, "--out", tmp_path / "out") == 0
    frames = read_video(tmp_path / "out" / "clip_overlay.mp4")
    assert len(frames) == N_FRAMES
    palette = np.asarray(CAMVID.palette, dtype=np.float64)[:, ::-1]  # BGR
    # overlay of frame i: 0.5 grey + 0.5 colour of class i % 11; the nearest expected colour names the frame
    expected = np.stack([0.5 * 10 * i + 0.5 * palette[i % 11] for i in range(N_FRAMES)])
    means = np.stack([f.reshape(-1, 3).mean(0) for f in frames])
    nearest = np.linalg.norm(means[:, None] - expected[None], axis=2).argmin(1)
    assert nearest.tolist() == list(range(N_FRAMES))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf"segmented 0 images and {N_FRAMES} frames from 1 video with torch \(fp32\) -> "
                        rf"{re.escape(str(tmp_path / 'out'))}: \d+\.\d\d frames/s", last)


def test_video_overlapped_gives_the_sequential_frames(ckpt, tmp_path):
    rng = np.random.default_rng(3)
    write_video(tmp_path / "clip.mp4", [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(N_FRAMES)])
    predictor = make_predictor(ckpt, backend="torch", device="cpu")
    assert predict_video(predictor, tmp_path / "clip.mp4", tmp_path / "a.mp4", progress=False) == N_FRAMES
    assert predict_video(predictor, tmp_path / "clip.mp4", tmp_path / "b.mp4", progress=False,
                         overlap=False) == N_FRAMES
    overlapped, sequential = read_video(tmp_path / "a.mp4"), read_video(tmp_path / "b.mp4")
    assert len(overlapped) == len(sequential) == N_FRAMES
    for a, b in zip(overlapped, sequential):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "clip.mp4"]  # no partial files


def test_an_error_mid_video_or_mid_folder_is_one_line_and_leaves_no_partial_output(ckpt, tmp_path, monkeypatch,
                                                                                   capsys):
    write_video(tmp_path / "clip.mp4", [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(N_FRAMES)])
    predictor = make_predictor(ckpt, backend="torch", device="cpu")
    model_predict, calls = predictor.predict, []

    def failing(rgb):
        calls.append(1)
        if len(calls) == 9:
            raise InputError("the model failed on frame 9")
        return model_predict(rgb)

    predictor.predict = failing
    monkeypatch.setattr(predict_module, "make_predictor", lambda *a, **k: predictor)
    out = tmp_path / "out"
    assert run(tmp_path / "clip.mp4", "--checkpoint", ckpt, "--out", out) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["cgnet predict: error: the model failed on frame 9"]
    assert list(out.iterdir()) == []  # neither the overlay video nor its partial file
    assert stage_threads() == []

    # a broken image amid a folder: the images before it are written, it and those after it are not
    predictor.predict = model_predict
    for name in "ab":
        write_image(tmp_path / "folder" / f"{name}.png", ord(name))
    (tmp_path / "folder" / "c.png").write_bytes(b"not a png")
    for name in "de":
        write_image(tmp_path / "folder" / f"{name}.png", ord(name))
    assert run(tmp_path / "folder", "--checkpoint", ckpt, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "folder" / "c.png") in err[0]
    for sub, suffix in (("masks", "png"), ("color", "png"), ("overlay", "jpg")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"a.{suffix}", f"b.{suffix}"]
    assert stage_threads() == []


def test_folder_last_line_states_images_per_second(ckpt, tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / "folder" / f"{i}.png", i)
    assert run(tmp_path / "folder", "--checkpoint", ckpt, "--out", tmp_path / "out") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"segmented 3 images with torch \(fp32\) -> .*: \d+\.\d\d images/s", last)
    # --no-overlap: one stage after the other, the same files
    assert run(tmp_path / "folder", "--checkpoint", ckpt, "--out", tmp_path / "seq", "--no-overlap") == 0
    for sub, suffix in (("masks", "png"), ("color", "png"), ("overlay", "jpg")):
        for i in range(3):
            assert ((tmp_path / "out" / sub / f"{i}.{suffix}").read_bytes()
                    == (tmp_path / "seq" / sub / f"{i}.{suffix}").read_bytes())
