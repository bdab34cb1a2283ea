"""Every entry of `IMPORTERS`, through the command line: each has a small example export here
(two classes, road and car, and pixels no shape covers where the format has them), and the
shared behaviour holds for all of them: `--classes` fixes the ids by name, a `.zip` of the export
imports the same, `--unpack-limit` refuses a zip before extracting, `--background` fills the
uncovered pixels (or is refused, one line, by formats without it), images in subfolders keep their
relative names, phone photos are labelled as shown, and bad inputs (a missing source, an empty
export, a label without its image, a corrupt label file or image) are one line, exit code 2,
with nothing left in --root. A new format adds its example to EXAMPLES, its files to IMAGE_FILE
and LABEL_FILE and its error lines to BAD_INPUTS; a test fails when one is missing."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cgnet.data.importer import IMPORTERS
from cgnet.images import read_rgb
from test_import_formats import class_lines, read_ids, refused, run, write_image

H, W = 10, 12


def cvat(d: Path, stem: str = "f") -> list:
    write_image(d / "images" / f"{stem}.png", H, W)
    (d / "annotations.xml").write_text(
        '<annotations><meta><task><labels><label><name>road</name></label><label><name>car</name></label></labels>'
        f'</task></meta><image id="0" name="{stem}.png" width="12" height="10">'
        '<polygon label="road" points="0,6;12,6;12,10;0,10" z_order="0"/>'
        '<box label="car" xtl="1" ytl="1" xbr="5" ybr="4" z_order="0"/></image></annotations>')
    return []


def coco(d: Path, stem: str = "f") -> list:
    write_image(d / "images" / f"{stem}.png", H, W)
    (d / "annotations").mkdir()
    (d / "annotations" / "instances_default.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": f"{stem}.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 6, 12, 6, 12, 10, 0, 10]]},
                        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}]}))
    return []


def labelme(d: Path, stem: str = "f") -> list:
    write_image(d / f"{stem}.png", H, W)
    shapes = [{"label": "road", "shape_type": "polygon", "points": [[0, 6], [11, 6], [11, 9], [0, 9]]},
              {"label": "car", "shape_type": "rectangle", "points": [[1, 1], [5, 4]]}]
    (d / f"{stem}.json").write_text(json.dumps({"shapes": shapes, "imagePath": "f.png", "imageData": None,
                                          "imageHeight": H, "imageWidth": W}))
    return []


def labelstudio(d: Path, stem: str = "f") -> list:
    """A flat export names an upload (prefix added by Label Studio); one in subfolders a local
    file under a storage folder (`photos/`) that the export's folder does not repeat."""
    write_image(d / f"{stem}.png", H, W)
    value = "/data/upload/1/0a1b2c3d-f.png" if stem == "f" else f"/data/local-files/?d=photos/{stem}.png"
    size = {"original_width": W, "original_height": H}
    result = [{"type": "polygonlabels", **size,
               "value": {"points": [[0, 60], [100, 60], [100, 100], [0, 100]], "polygonlabels": ["road"]}},
              {"type": "rectanglelabels", **size,
               "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["car"]}}]
    (d / "export.json").write_text(json.dumps([{"id": 1, "data": {"image": value},
                                                "annotations": [{"id": 1, "result": result}]}]))
    return []


def yolo(d: Path, stem: str = "f") -> list:
    write_image(d / "images" / "train" / f"{stem}.png", H, W)
    (d / "labels" / "train" / stem).parent.mkdir(parents=True)
    (d / "labels" / "train" / f"{stem}.txt").write_text("0 0 0.6 1 0.6 1 1 0 1\n1 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n")
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


def voc(d: Path, stem: str = "f") -> list:
    write_image(d / "JPEGImages" / f"{stem}.png", H, W)
    index_mask(d / "SegmentationClass" / f"{stem}.png", "P")
    (d / "class_names.txt").write_text("road\ncar\n")
    return []


def ids(d: Path, stem: str = "f") -> list:
    write_image(d / f"{stem}.png", H, W)
    index_mask(d / "masks" / f"{stem}.png", "L")
    (d.parent / "ids_classes.txt").write_text("road\ncar\n")
    return ["--masks", d / "masks", "--classes", d.parent / "ids_classes.txt"]


def colors(d: Path, stem: str = "f") -> list:
    write_image(d / f"{stem}.png", H, W)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[6:] = (128, 64, 128)
    rgb[1:4, 1:5] = (64, 0, 128)
    Image.fromarray(rgb).save(d / f"{stem}_L.png")
    (d.parent / "colors_classes.txt").write_text("void 0,0,0\nroad 128,64,128\ncar 64,0,128\n")
    return ["--mask-suffix", "_L", "--classes", d.parent / "colors_classes.txt", "--ignore-class", "void"]


EXAMPLES = {"cvat": cvat, "coco": coco, "labelme": labelme, "labelstudio": labelstudio, "yolo": yolo, "voc": voc,
            "ids": ids, "colors": colors}
NAMES = list(IMPORTERS)


def example(tmp_path: Path, name: str, stem: str = "f") -> tuple[Path, list]:
    src = tmp_path / name
    src.mkdir(parents=True)
    return src, EXAMPLES[name](src, stem)


def imported(capsys, name, src, root, *extra) -> tuple[list[str], np.ndarray]:
    code, out, err = run(capsys, "--from", name, src, "--root", root, "--val-fraction", "0", *extra)
    assert code == 0, err
    # every import's summary ends with the command that trains on it, and the --init camvid line
    assert out.splitlines()[-2:] == [
        f"train with: cgnet train --dataset {root.name} --classes {root / 'classes.txt'} --ignore-index 255 "
        f"--data-root {root} --train-split {root / 'train.txt'} --val-split none",
        "start from the shipped CamVid weights (classifier rows matched by class name): add --init camvid"]
    assert (root / "classes.txt").is_file() and (root / "train.txt").is_file() and not (root / "val.txt").exists()
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
        # what macOS's Compress adds beside the folder: no image, and no second top-level folder
        zf.writestr(f"__MACOSX/{name}/._{Path(IMAGE_FILE[name]).name}", b"\x00\x05\x16\x07 resource fork")
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


# the example's image and its label file (the file that holds its shapes, or its mask)
IMAGE_FILE = {"cvat": "images/f.png", "coco": "images/f.png", "labelme": "f.png", "labelstudio": "f.png",
              "yolo": "images/train/f.png", "voc": "JPEGImages/f.png", "ids": "f.png", "colors": "f.png"}
LABEL_FILE = {"cvat": "annotations.xml", "coco": "annotations/instances_default.json", "labelme": "f.json",
              "labelstudio": "export.json", "yolo": "labels/train/f.txt", "voc": "SegmentationClass/f.png",
              "ids": "masks/f.png", "colors": "f_L.png"}
# a yolo dataset's names start with its split folder (train.txt and val.txt keep its split)
SPLIT_FOLDER = {"yolo": "train/"}


def test_every_entry_has_its_files_named():
    assert sorted(IMAGE_FILE) == sorted(LABEL_FILE) == sorted(IMPORTERS)


@pytest.mark.parametrize("name", NAMES)
def test_images_in_subfolders_keep_their_relative_names(tmp_path, capsys, name):
    """The example with its image (and its label file, where there is one per image) two folders
    down, `a/b/`: the output keeps `a/b/` in the image's, the label's and the list's names, and
    the label equals the flat example's."""
    src, extra = example(tmp_path, name)
    _, flat = imported(capsys, name, src, tmp_path / "flat", *extra)
    nested, extra = example(tmp_path / "nested", name, "a/b/f")
    root = tmp_path / "out"
    _, label = imported(capsys, name, nested, root, *extra)
    np.testing.assert_array_equal(label, flat)
    want = SPLIT_FOLDER.get(name, "") + "a/b/f"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == \
        ["classes.txt", f"images/{want}.png", f"labels/{want}.png", "train.txt"]
    assert (root / "train.txt").read_text() == f"images/{want}.png labels/{want}.png\n"


GARBAGE = b"\xff\xd8\x00 not a file of its kind \xfe\xff\n"


def emptied(src: Path, name: str) -> None:
    for path in [p for p in src.rglob("*") if p.is_file()]:
        path.unlink()


def without_its_image(src: Path, name: str) -> None:
    (src / IMAGE_FILE[name]).unlink()


def corrupt_label(src: Path, name: str) -> None:
    (src / LABEL_FILE[name]).write_bytes(GARBAGE)


def corrupt_image(src: Path, name: str) -> None:
    (src / IMAGE_FILE[name]).write_bytes(GARBAGE)


AFTER = " (0 imported before it; nothing written to {root})"     # an error met while writing
SKIPPED = " (0 imported, 1 skipped before it; nothing written to {root})"
BAD_IMAGE = "{image}: cannot read the image {image} (corrupt or not an image)" + AFTER
# case -> (what it does to the example, the error line of each entry); {src}: the export's folder,
# {root}: --root, {image}, {label}: IMAGE_FILE and LABEL_FILE in it
BAD_INPUTS = {
    "an empty export (its folders, no file)": (emptied, {
        "cvat": "{src} is not a CVAT export: no labelmap.txt ('Segmentation mask 1.1') and no annotations.xml "
                "('CVAT for images 1.1') in it",
        "coco": "{src}: no COCO .json in it or in its annotations/ folder",
        "labelme": "{src}: no LabelMe .json files in it or its subfolders",
        "labelstudio": "{src}: expected one Label Studio .json export in it, found none",
        "yolo": "{src}: no data.yaml (an Ultralytics dataset's names and splits) in it",
        "voc": "{src}: no SegmentationClass/*.png (or SegmentationClassPNG/*.png) palette masks",
        "ids": "{src}: no images in it",
        "colors": "{src}: no images in it"}),
    "no image for its one label": (without_its_image, {
        "cvat": "{src}: nothing to import (1 without an image; images not found in {src}/images (1): f.png)" + SKIPPED,
        "coco": "{src}: nothing to import (1 without an image; images not found in {src}/annotations, {src}/images, "
                "{src}/images/default (1): f.png)" + SKIPPED,
        "labelme": "{label}: imagePath f.png not found ({image}) and no imageData" + AFTER,
        "labelstudio": "{src}: nothing to import (1 without an image; images not found in {src}, {src}/images (1): "
                       "0a1b2c3d-f.png)" + SKIPPED,
        "yolo": "{src}/data.yaml: no images in its train/val folders",
        "voc": "{src}: nothing to import (1 without an image; images not found in {src}/JPEGImages (1): {label})"
               + SKIPPED,
        "ids": "{src}: no images in it",
        "colors": "{src}: no images in it"}),
    "a corrupt label file": (corrupt_label, {
        "cvat": "{label}: not valid XML (not well-formed (invalid token): line 1, column 0)",
        "coco": "{label}: not a COCO file (not UTF-8 text)",
        "labelme": "{src}: no LabelMe .json files in it or its subfolders (1 .json files that are not valid JSON "
                   "(first: f.json))",
        "labelstudio": "{label}: not a Label Studio JSON export ('utf-8' codec can't decode byte 0xff in position 0: "
                       "invalid start byte)",
        "yolo": "{label}: not a label file: 'class x1 y1 x2 y2 ...' lines (not UTF-8 text: byte 0)" + AFTER,
        "voc": "{label}: cannot read the mask (cannot identify image file '{label}')",
        "ids": "{label}: cannot read the mask (cannot identify image file '{label}')" + AFTER,
        "colors": "{label}: cannot read the mask (cannot identify image file '{label}')" + AFTER}),
    "a corrupt image": (corrupt_image, {
        **{name: BAD_IMAGE for name in EXAMPLES},
        "labelme": "{label}: cannot read the image {image} (corrupt or not an image)" + AFTER}),
}


def test_every_bad_input_names_every_entry():
    for case, (_, messages) in BAD_INPUTS.items():
        assert sorted(messages) == sorted(IMPORTERS), case


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, name, case):
    """Each entry's example spoilt the same way: one error line naming the file, exit code 2,
    no --root and no staging folder beside it."""
    spoil, messages = BAD_INPUTS[case]
    src, extra = example(tmp_path, name)
    spoil(src, name)
    before = sorted(tmp_path.iterdir())
    root = tmp_path / "out"
    err = refused(capsys, root, "--from", name, src, *extra)
    assert err == "cgnet data: error: " + messages[name].format(src=src, root=root, image=src / IMAGE_FILE[name],
                                                                 label=src / LABEL_FILE[name]) + "\n"
    assert sorted(tmp_path.iterdir()) == before
