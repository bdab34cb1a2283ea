import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional

from cgnet.data import augment as augmentation
from cgnet.data import listset
from cgnet.data import stats as data_stats
from cgnet.cli import main
from cgnet.data.catalog import CAMVID, CITYSCAPES, custom_dataset
from cgnet.data.info import resolve_list_file
from cgnet.images import read_rgb
from cgnet.preprocess import make_spec, normalize_, original_spec
from cgnet.visualize import denormalize
from helpers.camvid_like import make_camvid_like

SPEC = make_spec("standard", mean=[0.4, 0.4, 0.4], std=[0.25, 0.25, 0.25])


@pytest.fixture()
def camvid(tmp_path):
    return make_camvid_like(tmp_path / "CamVid")


def test_real_camvid_split_sizes(camvid_root):
    root = camvid_root
    sizes = {s: len(listset.SegDataset(root, CAMVID.list_file(s), CAMVID, SPEC)) for s in
             ("train", "val", "test", "trainval")}
    assert sizes == {"train": 367, "val": 101, "test": 233, "trainval": 468}


def test_real_camvid_sample_loads_at_full_resolution(camvid_root):
    ds = listset.SegDataset(camvid_root, "camvid_val_list.txt", CAMVID, SPEC)
    image, label, index = ds[0]
    assert image.shape == (3, 360, 480) and label.shape == (360, 480) and index == 0
    assert set(label.unique().tolist()) <= set(range(12))


def test_list_errors_name_file_and_line(tmp_path, camvid):
    bad = tmp_path / "bad.txt"
    bad.write_text("train/0001TP_000000.png trainannot/0001TP_000000.png\ntrain/nope.png trainannot/nope.png\n")
    with pytest.raises(FileNotFoundError, match=r"bad\.txt:2: image .*nope\.png does not exist"):
        listset.read_list(bad, camvid)
    bad.write_text("a b c\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected"):
        listset.read_list(bad, camvid)
    bad.write_text("train/0001TP_000000.png\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected '<image> <label>'"):
        listset.read_list(bad, camvid)
    assert listset.read_list(bad, camvid, labels=False)[0].label is None
    bad.write_text("\n\n")
    with pytest.raises(ValueError, match="the list is empty"):
        listset.read_list(bad, camvid)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = read_rgb(tmp_path / "g.png")
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 255
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 10]


def test_corrupt_image_and_bad_labels(tmp_path, camvid):
    ds = listset.SegDataset(camvid, "camvid_train_list.txt", CAMVID, SPEC)
    ds.samples[0].image.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"camvid_train_list\.txt:1: cannot read the image"):
        ds[0]
    label_path = ds.samples[1].label
    lab = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    lab[0, 0], lab[0, 1] = 12, 40
    cv2.imwrite(str(label_path), lab)
    with pytest.raises(ValueError, match=r"camvid_train_list\.txt:2: label .* has ids \[12, 40\]"):
        ds[1]
    cv2.imwrite(str(ds.samples[2].label), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r":3: image .* is 48x40 but label .* is 10x10"):
        ds[2]
    cv2.imwrite(str(ds.samples[3].label), np.zeros((40, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="single-channel 8-bit"):
        ds[3]


def test_augmentation_pads_with_zero_and_ignore_and_keeps_pairs_aligned():
    h, w = 20, 30
    image = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w).expand(3, h, w) % 256
    image = image.to(torch.uint8)
    label = (torch.arange(h * w).reshape(h, w) % 7).to(torch.uint8)
    spec = make_spec("standard", mean=[0, 0, 0], std=[1, 1, 1])
    # scale 1, crop bigger than the image: padded bottom/right
    params = {"size": (h, w), "top": 0, "left": 0, "flip": False}
    img, lab = augmentation.augment(image, label, params, (24, 32), spec, ignore_index=11)
    assert img.shape == (3, 24, 32) and lab.shape == (24, 32)
    assert (img[:, h:, :] == 0).all() and (img[:, :, w:] == 0).all()
    assert (lab[h:, :] == 11).all() and (lab[:, w:] == 11).all()
    torch.testing.assert_close(img[:, :h, :w], image.float() / 255)
    # flip moves image and label together
    params = {"size": (h, w), "top": 2, "left": 3, "flip": True}
    img, lab = augmentation.augment(image, label, params, (10, 12), spec, ignore_index=11)
    torch.testing.assert_close(img, (image[:, 2:12, 3:15].float() / 255).flip(-1))
    assert torch.equal(lab, label[2:12, 3:15].flip(-1).long())


def test_scales_and_nearest_labels():
    assert augmentation.SCALES[0] == 0.5 and augmentation.SCALES[-1] == 2.0 and len(augmentation.SCALES) == 16
    label = torch.tensor([[0, 1], [2, 3]], dtype=torch.uint8)
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    params = {"size": (4, 4), "top": 0, "left": 0, "flip": False}
    _, lab = augmentation.augment(image, label, params, (4, 4), SPEC, 11)
    assert lab.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_random_draws_depend_on_seed_epoch_index_only(camvid):
    ds = listset.SegDataset(camvid, "camvid_train_list.txt", CAMVID, SPEC, train=True, crop=(32, 32), seed=5)
    a = [ds[i] for i in range(len(ds))]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    b = list(loader)
    for (ia, la, _), (ib, lb, _) in zip(a, b):
        # the same draws; bilinear resizing may round differently with another thread count
        torch.testing.assert_close(ia, ib, rtol=0, atol=1e-5)
        assert torch.equal(la, lb)
    ds.set_epoch(1)
    assert any(not torch.equal(x[0], ds[i][0]) for i, x in enumerate(a))
    draws = {tuple(sorted(augmentation.draw_params(augmentation.sample_rng(0, 0, i), 360, 480, (360, 360)).items())) for i in range(64)}
    assert len(draws) > 50


def test_memory_trainset_matches_dataset(camvid):
    ds = listset.SegDataset(camvid, "camvid_train_list.txt", CAMVID, SPEC, train=True, crop=(32, 32), seed=3)
    ds.set_epoch(2)
    mem = listset.MemoryTrainSet(ds, torch.device("cpu"), progress=False)
    images, labels = mem.batch([4, 1], epoch=2)
    assert torch.equal(images[0], ds[4][0]) and torch.equal(labels[1], ds[1][1])
    # built ahead in background threads: the same batches, in order
    groups = [[0, 5], [7, 2], [3, 1], [6, 4]]
    direct = [mem.batch(g, epoch=2) for g in groups]
    for threads in (1, 2):
        ahead = list(mem.batches(groups, epoch=2, threads=threads))
        assert len(ahead) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                       for a, b in zip(ahead, direct))
    assert 8 * 40 * 48 * 4 == listset.memory_estimate(ds)  # 8 frames of 48 x 40: 3 bytes + 1 label byte a pixel


def random_frame(h, w, seed):
    gen = np.random.default_rng(seed)
    return gen.integers(0, 256, (h, w, 3), dtype=np.uint8), gen.integers(0, 12, (h, w), dtype=np.uint8)


def test_batch_augmentation_agrees_with_the_tensor_augmentation():
    """Labels identical, images within one 8-bit level (the 8-bit resize's rounding), over draws
    that scale down and up (2x included), pad, crop and flip."""
    spec = make_spec("standard", mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.3])
    level = torch.tensor([1 / 255 / s for s in spec["std"]])[:, None, None]  # one 8-bit level, normalised
    frames = [random_frame(37, 53, 0), random_frame(20, 30, 1)]
    params = [augmentation.draw_params(augmentation.sample_rng(0, 0, i), *frames[i % 2][1].shape, (24, 32))
              for i in range(46)]
    params += [{"size": (37, 53), "top": 5, "left": 9, "flip": True},
               {"size": (40, 60), "top": 16, "left": 0, "flip": False}]
    assert {p["size"] == frames[i % 2][1].shape for i, p in enumerate(params)} == {True, False}
    assert any(p["size"][0] == 2 * frames[i % 2][1].shape[0] for i, p in enumerate(params))
    assert {p["flip"] for p in params} == {True, False}
    images, labels = augmentation.augment_batch([frames[i % 2][0] for i in range(48)],
                                                [frames[i % 2][1] for i in range(48)], params, (24, 32), spec, 11)
    assert images.shape == (48, 3, 24, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    for i, p in enumerate(params):
        image, label = frames[i % 2]
        ref_image, ref_label = augmentation.augment(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label),
                                                    p, (24, 32), spec, 11)
        assert torch.equal(labels[i], ref_label), p
        assert ((images[i] - ref_image).abs() <= level * (1 + 1e-4)).all(), p
        if p["size"] == label.shape:  # no resize: the same values, padding included
            assert torch.equal(images[i], ref_image), p


def test_batch_augmentation_pads_crops_and_flips_exactly():
    image, label = random_frame(20, 30, 2)
    spec = make_spec("standard", mean=[0, 0, 0], std=[1, 1, 1])
    params = [{"size": (20, 30), "top": 0, "left": 0, "flip": False},   # crop bigger than the image: padded
              {"size": (20, 30), "top": 2, "left": 3, "flip": True},
              {"size": (20, 30), "top": 0, "left": 4, "flip": True}]    # padded, then flipped: padding on the left
    images, labels = augmentation.augment_batch([image] * 3, [label] * 3, params, (24, 32), spec, 11)
    chw = normalize_(torch.from_numpy(image).permute(2, 0, 1).float(), spec)  # the values normalize_ gives
    assert torch.equal(images[0, :, :20, :30], chw)
    assert (images[0, :, 20:] == 0).all() and (images[0, :, :, 30:] == 0).all()
    assert (labels[0, 20:] == 11).all() and (labels[0, :, 30:] == 11).all()
    assert torch.equal(labels[0, :20, :30], torch.from_numpy(label).long())
    assert torch.equal(images[1, :, :18, 5:], chw[:, 2:, 3:].flip(-1)) and (images[1, :, :, :5] == 0).all()
    assert torch.equal(labels[1, :18, 5:], torch.from_numpy(label[2:, 3:][:, ::-1].copy()).long())
    assert (labels[1, 18:] == 11).all() and (labels[1, :, :5] == 11).all()
    assert torch.equal(images[2, :, :20, 6:], chw[:, :, 4:].flip(-1)) and (labels[2, :, :6] == 11).all()


@pytest.mark.parametrize("size_in, size_out", [(360, 180), (360, 612), (480, 240), (480, 960), (7, 3),
                                               (37, 74), (360, 504), (480, 336), (45, 45)])
def test_nearest_indices_are_torchs(size_in, size_out):
    ramp = torch.arange(size_in, dtype=torch.float32)[None, None, :, None]
    expected = functional.interpolate(ramp, size=(size_out, 1), mode="nearest")[0, 0, :, 0].long()
    assert augmentation.nearest_indices(size_in, size_out).tolist() == expected.tolist()


def test_prefetch_keeps_order_raises_at_its_turn_and_stops_early():
    for threads in (0, 1, 3):
        assert list(listset.prefetch(range(10), lambda j: j * j, threads)) == [j * j for j in range(10)]
    started = []

    def make(job):
        started.append(job)
        if job == 4:
            raise ValueError("bad job 4")
        return job

    got = []
    with pytest.raises(ValueError, match="bad job 4"):
        for value in listset.prefetch(range(100), make, 2):
            got.append(value)
    assert got == [0, 1, 2, 3] and len(started) <= 8  # at most threads + 1 ahead of the consumer
    started.clear()
    stream = listset.prefetch(range(3, -1, -1), make, 1)
    assert next(stream) == 3
    stream.close()  # a loop that breaks: nothing more is started than was queued
    assert len(started) <= 3


def test_stats_by_hand_and_cache_keyed_by_list(tmp_path, camvid):
    ds = listset.SegDataset(camvid, "camvid_train_list.txt", CAMVID, SPEC)
    stats = data_stats.dataset_stats(ds, cache_dir=tmp_path / "run", workers=0, progress=False)
    imgs = [read_rgb(s.image).reshape(-1, 3) / 255.0 for s in ds.samples]
    np.testing.assert_allclose(stats["mean_rgb"], np.mean([i.mean(0) for i in imgs], 0), rtol=1e-9)
    np.testing.assert_allclose(stats["std_rgb"], np.mean([i.std(0) for i in imgs], 0), rtol=1e-9)
    labels = np.concatenate([cv2.imread(str(s.label), cv2.IMREAD_UNCHANGED).ravel() for s in ds.samples])
    counts = np.array([(labels == c).sum() for c in range(11)])
    assert stats["pixel_counts"] == counts.tolist()
    p = counts / counts.sum()
    np.testing.assert_allclose(stats["class_weights"], 1 / np.log(1.10 + p), rtol=1e-12)
    cache = list((tmp_path / "run").glob("stats_*.json"))
    assert len(cache) == 1 and json.loads(cache[0].read_text())["images"] == 8
    # a changed list is a different key: recomputed, not read from the old cache
    lst = camvid / "camvid_train_list.txt"
    lst.write_text("".join(lst.read_text().splitlines(keepends=True)[:4]))
    ds2 = listset.SegDataset(camvid, "camvid_train_list.txt", CAMVID, SPEC)
    assert data_stats.dataset_stats(ds2, cache_dir=tmp_path / "run", workers=0, progress=False)["images"] == 4
    assert len(list((tmp_path / "run").glob("stats_*.json"))) == 2


def test_denormalize_inverts_both_preprocessing_modes():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    for spec in (SPEC, original_spec([100.0, 110.0, 120.0])):
        from cgnet.preprocess import to_tensor
        assert (denormalize(to_tensor(rgb, spec), spec) == rgb).all()


def test_dataset_descriptions():
    assert CAMVID.num_classes == 11 and CAMVID.ignore_index == 11
    assert CITYSCAPES.num_classes == 19 and CITYSCAPES.ignore_index == 255
    custom = custom_dataset(["bg", "fg"], 255, {"train": "t.txt"})
    assert custom.num_classes == 2 and len(custom.palette) == 2
    with pytest.raises(ValueError, match="ignore index 1 is a class id"):
        custom_dataset(["bg", "fg"], 1, {})


@pytest.mark.parametrize("command", [["stats"], ["show", "--out", "aug.png"]])
def test_a_relative_root_is_joined_once(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e").mkdir()
    argv = ["data", *command, "--dataset", "camvid", "--root", "e", "--workers", "0"]
    assert main(argv) == 2
    split = "trainval" if command == ["stats"] else "train"  # each tool's default --split
    assert capsys.readouterr().err == f"cgnet data: error: list file e/camvid_{split}_list.txt does not exist\n"
    make_camvid_like(tmp_path / "e")  # the same relative root, now with its lists: it reads them
    assert main(argv) == 0
    assert not (tmp_path / "e" / "e").exists()


def test_resolving_a_list_file_twice_names_it_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for root in ("e", "data/e", str(tmp_path / "e")):
        once = resolve_list_file(root, "camvid_val_list.txt")
        assert once == Path(root) / "camvid_val_list.txt"
        assert resolve_list_file(root, once) == once
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "e").mkdir()
    (tmp_path / "e" / "e" / "x.txt").write_text("")
    # a root-relative path that exists under the root wins over keeping it as given
    assert resolve_list_file(tmp_path / "e", Path("e") / "x.txt") == tmp_path / "e" / "e" / "x.txt"


def test_a_loader_worker_ignores_others_stop_signals_and_ends_on_its_parents_sigterm():
    """A group signal (`pkill -f`, systemd) must leave the workers to the main process; SIGTERM from
    the main process itself (how multiprocessing stops workers still alive at exit) must end them."""
    import signal
    import subprocess
    loader = torch.utils.data.DataLoader(range(8), batch_size=2, num_workers=1, persistent_workers=True,
                                         worker_init_fn=listset.ignore_stop_signals)
    running = iter(loader)
    assert next(running).tolist() == [0, 1]
    worker = running._workers[0]
    for name in ("TERM", "INT"):
        subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)  # sent by another process
    worker.join(timeout=2)  # an unprotected worker dies of either within milliseconds
    assert worker.is_alive() and next(running).tolist() == [2, 3]
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=60)
    assert worker.exitcode == 0
    del running


LEAKED_LOADER = """
import sys
from torch.utils.data import DataLoader
from cgnet.data.listset import ignore_stop_signals
if __name__ == "__main__":
    loader = DataLoader(range(8), batch_size=2, num_workers=1, persistent_workers=True,
                        worker_init_fn=ignore_stop_signals, multiprocessing_context=sys.argv[1])
    running = iter(loader)  # still alive at exit, as a stored traceback or a cycle keeps one
    print(next(running).tolist(), flush=True)
"""


@pytest.mark.parametrize("context", ["fork", pytest.param("forkserver", marks=pytest.mark.slow)])
def test_python_exits_with_a_loaders_workers_still_running(tmp_path, context):
    """At exit multiprocessing stops the workers of a loader still alive with SIGTERM and waits for
    them: workers that ignored every SIGTERM kept the exit (and CI's test run) waiting forever."""
    import subprocess
    import sys
    script = tmp_path / "leaked.py"
    script.write_text(LEAKED_LOADER)
    done = subprocess.run([sys.executable, str(script), context], capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stdout) == (0, "[0, 1]\n"), done.stderr
