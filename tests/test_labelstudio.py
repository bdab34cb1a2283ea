"""`cgnet data import --from labelstudio` against label-studio-sdk's own code: an export and the
SDK's conversions of it (tests/data/labelstudio/, written by tests/helpers/labelstudio_export.py
with label-studio-sdk 2.1.2). Every pixel of the import equals the regions the SDK converts
(polygons from its COCO export, rotated rectangles from its YOLO OBB corners, brush masks from
its BRUSH_TO_PNG images), painted in result order; the JSON-MIN export, which keeps the regions
in a list per labelling tag, gives the same regions painted tag by tag."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cgnet.data.labelstudio import decode_brush_rle
from test_import_formats import read_ids, refused, run

FIXTURE = Path(__file__).parent / "data" / "labelstudio"
HEIGHT, WIDTH = 30, 40


def fill(flat):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([list(flat)], HEIGHT, WIDTH))).astype(bool)


def expected_labels(order: list[str], by_tag: bool = False) -> dict[str, np.ndarray]:
    """Each task's label from the SDK's outputs, its regions in result order (later over earlier);
    `by_tag`: in JSON-MIN's order instead, the regions grouped by their tag in the order the tags
    first appear (JSON-MIN keeps a list per tag, not the result order)."""
    export = json.loads((FIXTURE / "export.json").read_text())
    coco = json.loads((FIXTURE / "sdk" / "coco" / "result.json").read_text())
    obb = json.loads((FIXTURE / "sdk" / "obb.json").read_text())
    out = {}
    for image_id, (task, name) in enumerate(zip(export, ("frame_a", "frame_b"))):
        polygons = iter([a["segmentation"][0] for a in coco["annotations"]
                         if a["image_id"] == image_id and a.get("segmentation")])
        rectangles = iter(obb[str(task["id"])])
        chosen = {1: 11, 2: 22}[task["id"]]
        result = next(a for a in task["annotations"] if a["id"] == chosen)["result"]
        if by_tag:
            tags = list(dict.fromkeys(r["from_name"] for r in result))
            result = sorted(result, key=lambda r: tags.index(r["from_name"]))
        brushes = {}
        label = np.full((HEIGHT, WIDTH), 255, np.uint8)
        for region in result:
            kind = region["type"]
            if kind == "keypointlabels":
                continue
            cls = region["value"][kind][0]
            if kind == "polygonlabels":
                mask = fill(next(polygons))
            elif kind == "rectanglelabels":
                mask = fill([v for corner in next(rectangles) for v in corner])
            else:
                index = brushes.setdefault(cls, 0)
                brushes[cls] += 1
                png = FIXTURE / "sdk" / "brush" / f"task-{task['id']}-annotation-{chosen}-by-1-brush-{cls}-{index}.png"
                mask = np.asarray(Image.open(png)) != 0
            label[mask] = order.index(cls)
        out[name] = label
    return out


@pytest.mark.parametrize("export", ["export.json", "export_min.json"])
def test_equals_label_studio_sdks_conversion_on_every_pixel(tmp_path, capsys, export):
    code, out, err = run(capsys, "--from", "labelstudio", FIXTURE / export, "--root", tmp_path / "ls",
                         "--images", FIXTURE / "images")
    assert code == 0, err
    order = ["car", "road", "tree"]   # the labels found, sorted
    assert [line.split()[0] for line in (tmp_path / "ls" / "classes.txt").read_text().splitlines()
            if not line.startswith("#")] == order
    if export == "export.json":
        assert "skipped shapes (they cover no area): 1 keypointlabels\n" in out
    for name, want in expected_labels(order, by_tag=export == "export_min.json").items():
        assert len(np.unique(want)) == 4    # every class and unlabelled pixels show
        np.testing.assert_array_equal(read_ids(tmp_path / "ls" / "labels" / f"{name}.png"), want)


def test_brush_decoder_equals_the_sdks_on_the_fixture():
    """The decoded values against the SDK's own PNG of each brush region (its alpha channel)."""
    export = json.loads((FIXTURE / "export.json").read_text())
    region = export[0]["annotations"][0]["result"][2]
    values = decode_brush_rle(region["value"]["rle"], HEIGHT * WIDTH * 4, "r")
    png = np.asarray(Image.open(FIXTURE / "sdk" / "brush" / "task-1-annotation-11-by-1-brush-tree-0.png"))
    np.testing.assert_array_equal(values.reshape(HEIGHT, WIDTH, 4)[:, :, 3], png)


def bad_export(tmp_path, change) -> Path:
    folder = tmp_path / "bad"
    shutil.copytree(FIXTURE / "images", folder)
    export = json.loads((FIXTURE / "export.json").read_text())
    change(export)
    (folder / "export.json").write_text(json.dumps(export))
    return folder / "export.json"


def test_bad_inputs_are_one_line(tmp_path, capsys):
    path = bad_export(tmp_path, lambda e: e[0]["annotations"][0]["result"][2]["value"]["rle"].__setitem__(3, 7))
    err = refused(capsys, tmp_path / "a", "--from", "labelstudio", path)
    assert err == (f"cgnet data: error: {path}: task 1: result 2 ('tree'): the brush RLE holds 4615 values, expected "
                   f"original_width x original_height x 4 = 4800 (0 imported before it; nothing written to "
                   f"{tmp_path / 'a'})\n")

    def shrink(export):
        for region in export[0]["annotations"][0]["result"]:
            region["original_width"] = 20
    path = bad_export(tmp_path / "b", shrink)
    err = refused(capsys, tmp_path / "b" / "out", "--from", "labelstudio", path)
    assert err.startswith(f"cgnet data: error: {path}: task 1: result 2 ('tree'): the brush RLE holds 4800 values, "
                          "expected original_width x original_height x 4 = 2400")

    def no_brush_shrink(export):
        result = export[0]["annotations"][0]["result"]
        del result[2]
        for region in result:
            region["original_width"] = 20
    path = bad_export(tmp_path / "c", no_brush_shrink)
    err = refused(capsys, tmp_path / "c" / "out", "--from", "labelstudio", path)
    assert err == (f"cgnet data: error: {path}: task 1 (original_width x original_height) is 20x30 but its image "
                   f"{path.parent / 'frame_a.png'} is 40x30 (width x height) (0 imported before it; nothing written "
                   f"to {tmp_path / 'c' / 'out'})\n")



def result_of(export, index):
    return export[0]["annotations"][0]["result"][index]


@pytest.mark.parametrize("change, message", [
    (lambda e: result_of(e, 2)["value"].__setitem__("rle", result_of(e, 2)["value"]["rle"][:20]),
     "task 1: result 2 ('tree'): the brush RLE ends early (20 bytes)"),
    (lambda e: result_of(e, 0)["value"]["points"][1].append(3.0),
     "task 1: result 0 ('road'): point 1 is [99.1, 51.7, 3.0], not an [x, y] pair of numbers"),
    (lambda e: result_of(e, 0)["value"]["points"][1].__setitem__(0, 100.5),
     "task 1: result 0 ('road'): point [100.5, 51.7] is outside the image (Label Studio's points are percent, "
     "0..100)"),
    (lambda e: result_of(e, 1)["value"].__setitem__("x", 120),
     "task 1: result 1 ('car'): x 120.0, y 10.7 must be in 0..100 and width 30.25, height 25.5 at least 0 "
     "(percent)"),
], ids=["truncated brush RLE", "odd coordinate count", "point outside 0..100", "rectangle outside 0..100"])
def test_bad_regions_are_one_line_naming_task_and_result(tmp_path, capsys, change, message):
    path = bad_export(tmp_path, change)
    root = tmp_path / "out"
    err = refused(capsys, root, "--from", "labelstudio", path)
    assert err == f"cgnet data: error: {path}: {message} (0 imported before it; nothing written to {root})\n"


def test_a_bad_original_size_is_found_before_anything_is_drawn(tmp_path, capsys):
    path = bad_export(tmp_path, lambda e: result_of(e, 0).__setitem__("original_width", 0))
    err = refused(capsys, tmp_path / "out", "--from", "labelstudio", path)
    assert err == (f"cgnet data: error: {path}: task 1: result 0: original_width and original_height must be "
                   "positive whole numbers, got 0 and 30\n")


def test_media_folder_and_local_storage_subfolders(tmp_path, capsys):
    """`--images` given Label Studio's media folder (uploads under upload/<project>/) and a
    local-storage task whose path's tail is found there with its subfolder: found by the longest
    tail of their paths, the subfolders kept in the output names."""
    media = tmp_path / "media"
    (media / "upload" / "1").mkdir(parents=True)
    shutil.copy(FIXTURE / "images" / "frame_a.png", media / "upload" / "1" / "1a2b3c4d-frame_a.png")
    (media / "site").mkdir()
    shutil.copy(FIXTURE / "images" / "frame_b.png", media / "site" / "frame_b.png")
    export = json.loads((FIXTURE / "export.json").read_text())
    export[1]["data"]["image"] = "/data/local-files/?d=photos/site/frame_b.png"
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    code, out, err = run(capsys, "--from", "labelstudio", path, "--images", media, "--root", tmp_path / "mine",
                         "--val-fraction", "0")
    assert code == 0, err
    assert (tmp_path / "mine" / "train.txt").read_text().splitlines() == [
        "images/site/frame_b.png labels/site/frame_b.png",
        "images/upload/1/1a2b3c4d-frame_a.png labels/upload/1/1a2b3c4d-frame_a.png"]
    flat = tmp_path / "flat"
    assert run(capsys, "--from", "labelstudio", FIXTURE / "export.json", "--root", flat)[0] == 0
    np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / "site" / "frame_b.png"),
                                  read_ids(flat / "labels" / "frame_b.png"))
    np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / "upload" / "1" / "1a2b3c4d-frame_a.png"),
                                  read_ids(flat / "labels" / "frame_a.png"))
