"""Every entry of `IMPORTERS`, through the command line: each has a small example export here
(two classes, road and car, and pixels no shape covers where the format has them), and the
shared behaviour holds for all of them: `--classes` fixes the ids by name, a `.zip` of the export
imports the same, `--unpack-limit` refuses a zip before extracting, `--background` fills the
uncovered pixels (or is refused, one line, by formats without it), a missing source is one line.
A new format adds its example to EXAMPLES; a test fails when one is missing."""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cgnet.data.importer import IMPORTERS
from cgnet.images import read_rgb
from test_import_formats import class_lines, read_ids, refused, run, write_image

H, W = 10, 12


def cvat(d: Path) -> list:
    write_image(d / "images" / "f.png", H, W)
    (d / "annotations.xml").write_text(
        '<annotations><meta><task><labels><label><name>road</name></label><label><name>car</name></label></labels>'
        '</task></meta><image id="0" name="f.png" width="12" height="10">'
        '<polygon label="road" points="0,6;12,6;12,10;0,10" z_order="0"/>'
        '<box label="car" xtl="1" ytl="1" xbr="5" ybr="4" z_order="0"/></image></annotations>')
    return []


def coco(d: Path) -> list:
    write_image(d / "images" / "f.png", H, W)
    (d / "annotations").mkdir()
    (d / "annotations" / "instances_default.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "f.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 6, 12, 6, 12, 10, 0, 10]]},
                        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}]}))
    return []


def labelme(d: Path) -> list:
    write_image(d / "f.png", H, W)
    shapes = [{"label": "road", "shape_type": "polygon", "points": [[0, 6], [11, 6], [11, 9], [0, 9]]},
              {"label": "car", "shape_type": "rectangle", "points": [[1, 1], [5, 4]]}]
    (d / "f.json").write_text(json.dumps({"shapes": shapes, "imagePath": "f.png", "imageData": None,
                                          "imageHeight": H, "imageWidth": W}))
    return []


def labelstudio(d: Path) -> list:
    write_image(d / "f.png", H, W)
    size = {"original_width": W, "original_height": H}
    result = [{"type": "polygonlabels", **size,
               "value": {"points": [[0, 60], [100, 60], [100, 100], [0, 100]], "polygonlabels": ["road"]}},
              {"type": "rectanglelabels", **size,
               "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["car"]}}]
    (d / "export.json").write_text(json.dumps([{"id": 1, "data": {"image": "/data/upload/1/0a1b2c3d-f.png"},
                                                "annotations": [{"id": 1, "result": result}]}]))
    return []


def yolo(d: Path) -> list:
    write_image(d / "images" / "train" / "f.png", H, W)
    (d / "labels" / "train").mkdir(parents=True)
    (d / "labels" / "train" / "f.txt").write_text("0 0 0.6 1 0.6 1 1 0 1\n1 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n")
    (d / "data.yaml").write_text("train: images/train\nnames: [road, car]\n")
    return ["--ignore-class", "background"]   # Ultralytics' background class, as the ignore id here


def index_mask(path: Path, mode: str) -> None:
    values = np.full((H, W), 255, np.uint8)
    values[6:] = 0
    values[1:4, 1:5] = 1
    image = Image.fromarray(values, "L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([128, 64, 128, 64, 0, 128] + [0, 0, 0] * 253 + [224, 224, 192])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def voc(d: Path) -> list:
    write_image(d / "JPEGImages" / "f.png", H, W)
    index_mask(d / "SegmentationClass" / "f.png", "P")
    (d / "class_names.txt").write_text("road\ncar\n")
    return []


def ids(d: Path) -> list:
    write_image(d / "f.png", H, W)
    index_mask(d / "masks" / "f.png", "L")
    (d.parent / "ids_classes.txt").write_text("road\ncar\n")
    return ["--masks", d / "masks", "--classes", d.parent / "ids_classes.txt"]


def colors(d: Path) -> list:
    write_image(d / "f.png", H, W)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[6:] = (128, 64, 128)
    rgb[1:4, 1:5] = (64, 0, 128)
    Image.fromarray(rgb).save(d / "f_L.png")
    (d.parent / "colors_classes.txt").write_text("void 0,0,0\nroad 128,64,128\ncar 64,0,128\n")
    return ["--mask-suffix", "_L", "--classes", d.parent / "colors_classes.txt", "--ignore-class", "void"]


EXAMPLES = {"cvat": cvat, "coco": coco, "labelme": labelme, "labelstudio": labelstudio, "yolo": yolo, "voc": voc,
            "ids": ids, "colors": colors}
NAMES = list(IMPORTERS)


def example(tmp_path: Path, name: str) -> tuple[Path, list]:
    src = tmp_path / name
    src.mkdir()
    return src, EXAMPLES[name](src)


def imported(capsys, name, src, root, *extra) -> tuple[list[str], np.ndarray]:
    code, out, err = run(capsys, "--from", name, src, "--root", root, "--val-fraction", "0", *extra)
    assert code == 0, err
    assert "add --init camvid" in out
    label = read_ids(next((root / "labels").rglob("*.png")))
    return [line.split()[0] for line in class_lines(root)], label


def test_every_entry_has_an_example():
    assert sorted(EXAMPLES) == sorted(IMPORTERS)


@pytest.mark.parametrize("name", NAMES)
def test_classes_file_fixes_the_ids_by_name(tmp_path, capsys, name):
    src, extra = example(tmp_path, name)
    names, label = imported(capsys, name, src, tmp_path / "base", *extra)
    assert sorted(names) == ["car", "road"] and set(np.unique(label)) == {0, 1, 255}
    if name == "ids":   # the classes file names the mask values: reversing it renames them
        return
    order = tmp_path / "order.txt"
    order.write_text("car\nroad\n")
    extra = [v for v in extra if not str(v).endswith("_classes.txt") and v != "--classes"]
    if name == "colors":
        order.write_text("void 0,0,0\ncar 64,0,128\nroad 128,64,128\n")
    reordered, label2 = imported(capsys, name, src, tmp_path / "again", *extra, "--classes", order)
    assert reordered == ["car", "road"]
    lut = np.full(256, 255, np.int64)
    for i, n in enumerate(names):
        lut[i] = reordered.index(n)
    np.testing.assert_array_equal(label2, lut[label])


@pytest.mark.parametrize("name", NAMES)
def test_a_zip_imports_the_same_and_the_limit_refuses_it_first(tmp_path, capsys, name):
    src, extra = example(tmp_path, name)
    _, label = imported(capsys, name, src, tmp_path / "base", *extra)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, f"{name}/{path.relative_to(src)}")
    _, zipped = imported(capsys, name, archive, tmp_path / "zipped", *extra)
    np.testing.assert_array_equal(zipped, label)
    total = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    err = refused(capsys, tmp_path / "small", "--from", name, archive, *extra, "--unpack-limit", total - 1)
    assert err == (f"cgnet data: error: {archive}: unpacks to {total:,} bytes, more than {total - 1:,} (the limit "
                   "given); refusing to unpack; give a larger --unpack-limit\n")


@pytest.mark.parametrize("name", NAMES)
def test_background_fills_what_no_shape_covers_or_is_refused(tmp_path, capsys, name):
    src, extra = example(tmp_path, name)
    if "background" not in IMPORTERS[name].options:
        takers = ", ".join(n for n, e in IMPORTERS.items() if "background" in e.options)
        err = refused(capsys, tmp_path / "bg", "--from", name, src, *extra, "--background", "ground")
        assert err == f"cgnet data: error: --background is not an option of --from {name} (it is for --from {takers})\n"
        return
    names, label = imported(capsys, name, src, tmp_path / "base", *extra)
    extra = [v for v in extra if v not in ("--ignore-class", "background")]
    with_bg, filled = imported(capsys, name, src, tmp_path / "bg", *extra, "--background", "ground")
    assert with_bg == ["ground"] + names
    np.testing.assert_array_equal(filled, np.where(label == 255, 0, label + 1))


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_source_is_one_line(tmp_path, capsys, name):
    err = refused(capsys, tmp_path / "out", "--from", name, tmp_path / "nothing")
    assert err == f"cgnet data: error: {tmp_path / 'nothing'}: no such file or folder\n"


@pytest.mark.parametrize("name", NAMES)
def test_a_phone_photo_is_labelled_in_its_displayed_frame(tmp_path, capsys, name):
    """The example's photo stored turned a quarter (its pixels W x H) with the EXIF orientation
    that shows it upright (6: turn 90 degrees clockwise): shapes and masks are drawn in the frame
    the photo is shown in, so the labels equal the upright photo's, and the imported photo reads
    (as training reads it) as the upright one."""
    src, extra = example(tmp_path, name)
    _, upright = imported(capsys, name, src, tmp_path / "upright", *extra)
    photo = next(p for p in src.rglob("f.png") if p.parent.name not in ("SegmentationClass", "masks"))
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1))).save(photo, exif=exif)
    _, label = imported(capsys, name, src, tmp_path / "phone", *extra)
    np.testing.assert_array_equal(label, upright)
    image = next((tmp_path / "phone" / "images").rglob("*.*"))
    shown = read_rgb(image)  # as training reads it: in the displayed frame
    assert shown.shape == (H, W, 3) and np.array_equal(shown, pixels)
