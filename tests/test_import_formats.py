"""`cgnet data import` of CVAT for images 1.1 (annotations.xml), COCO, VOC palette PNGs and id
masks, and `--classes` fixing the class order for every format. Expected labels come from the
tools' own libraries (pycocotools rasterises polygons and boxes exactly as CVAT's datumaro does;
Pillow writes the palette PNGs) or from the masks an RLE was made of; each new bad input is one
line, exit code 2, and nothing in --root."""
import json
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cgnet.cli import main

IGNORE = 255
RNG = np.random.default_rng(0)


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", "import", *map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_image(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), RNG.integers(0, 256, (height, width, 3)).astype(np.uint8))
    return path


def read_ids(path: Path) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label.ndim == 2 and label.dtype == np.uint8
    return label


def class_lines(root: Path) -> list[str]:
    return [line for line in (root / "classes.txt").read_text().splitlines() if not line.startswith("#")]


def refused(capsys, dst: Path, *argv) -> str:
    """Run an import that must fail: exit code 2, nothing left at --root; returns stderr."""
    code, out, err = run(capsys, *argv, "--root", dst)
    assert code == 2, (out, err)
    assert not dst.exists()
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def poly_mask(flat: list[float], height: int, width: int, float32: bool = False) -> np.ndarray:
    """A polygon as pycocotools rasterises it; `float32`: with the coordinates as datumaro keeps
    them (what CVAT's own mask export draws)."""
    if float32:
        flat = [float(v) for v in np.float32(flat)]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], height, width))).astype(bool)


# ---- CVAT for images 1.1 ----------------------------------------------------------------------

CVAT_COLORS = {"car": "#fa3253", "road": "#8c78f0", "tree": "#33ddff"}


def cvat_rle(mask: np.ndarray) -> str:
    """CVAT's mask RLE, written here from its definition: run lengths over the mask's box, row
    by row, starting with a run of 0s (which may be empty)."""
    flat = mask.astype(np.uint8).ravel()
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = list(np.diff(bounds))
    if flat[0] == 1:
        runs = [0] + runs
    return ", ".join(str(int(r)) for r in runs)


def cvat_xml(frames: list[dict], colors: dict = CVAT_COLORS) -> str:
    """annotations.xml as CVAT writes it for a task (see CVAT's "CVAT for images 1.1" format)."""
    labels = "".join(f"<label><name>{n}</name><color>{c}</color><type>any</type><attributes></attributes></label>"
                     for n, c in colors.items())
    images = []
    for i, frame in enumerate(frames):
        images.append(f'  <image id="{i}" name="{frame["name"]}" width="{frame["width"]}" '
                      f'height="{frame["height"]}">\n' + "".join(f"    {s}\n" for s in frame["shapes"]) + "  </image>\n")
    return ('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n  <meta>\n'
            f'    <task><id>1</id><name>t</name><size>{len(frames)}</size><mode>annotation</mode>'
            f'<labels>{labels}</labels></task>\n  </meta>\n' + "".join(images) + "</annotations>\n")


def polygon(label, flat, z=0):
    pts = ";".join(f"{flat[i]:.2f},{flat[i + 1]:.2f}" for i in range(0, len(flat), 2))
    return f'<polygon label="{label}" source="manual" occluded="0" points="{pts}" z_order="{z}"></polygon>'


def box(label, x0, y0, x1, y1, z=0):
    return (f'<box label="{label}" source="manual" occluded="0" xtl="{x0:.2f}" ytl="{y0:.2f}" xbr="{x1:.2f}" '
            f'ybr="{y1:.2f}" z_order="{z}"></box>')


def rle_mask(label, mask, left, top, z=0):
    h, w = mask.shape
    return (f'<mask label="{label}" source="manual" occluded="0" rle="{cvat_rle(mask)}" left="{left}" '
            f'top="{top}" width="{w}" height="{h}" z_order="{z}"></mask>')


def cvat_task(root: Path, with_images=True) -> tuple[Path, dict[str, np.ndarray]]:
    """A task export (annotations.xml, images/) with fractional polygons, a box, an RLE mask,
    a polyline, and z_order against file order; returns it and the expected label of each frame."""
    h, w = 30, 40
    ids = {"car": 0, "road": 1, "tree": 2}
    road = [0.0, 18.4, 39.6, 15.2, 39.6, 29.7, 0.0, 29.7]
    tree = [5.3, 2.2, 17.8, 4.9, 12.1, 20.6, 3.3, 14.4]
    blob = np.zeros((9, 11), dtype=bool)
    blob[1:8, 2:10] = True
    blob[4, 5] = False
    blob[0, 0] = True
    # frame a: the tree polygon has z_order 1 but comes first in the file: it stays above the road
    a = np.full((h, w), IGNORE, dtype=np.uint8)
    a[poly_mask(road, h, w, float32=True)] = ids["road"]
    a[poly_mask(tree, h, w, float32=True)] = ids["tree"]
    canvas = np.zeros((h, w), dtype=bool)
    canvas[12:21, 25:36] = blob
    a[canvas] = ids["car"]
    frame_a = {"name": "frame_a.png", "width": w, "height": h, "shapes": [
        polygon("tree", tree, z=1), polygon("road", road, z=0), rle_mask("car", blob, 25, 12, z=2),
        '<polyline label="road" source="manual" occluded="0" points="1.0,1.0;30.0,2.0" z_order="5"></polyline>']}
    # frame b: a box (datumaro draws it as its 4-corner polygon), a later polygon over it
    b = np.full((h, w), IGNORE, dtype=np.uint8)
    b[poly_mask([2.5, 3.5, 20.25, 3.5, 20.25, 17.75, 2.5, 17.75], h, w, float32=True)] = ids["car"]
    over = [10.5, 10.5, 30.2, 12.1, 22.7, 26.9]
    b[poly_mask(over, h, w, float32=True)] = ids["road"]
    frame_b = {"name": "frame_b.png", "width": w, "height": h, "shapes": [
        box("car", 2.5, 3.5, 20.25, 17.75), polygon("road", over)]}
    root.mkdir(parents=True)
    (root / "annotations.xml").write_text(cvat_xml([frame_a, frame_b]))
    if with_images:
        for frame in ("frame_a", "frame_b"):
            write_image(root / "images" / f"{frame}.png", h, w)
    return root, {"frame_a": a, "frame_b": b}


def test_cvat_for_images_round_trip(tmp_path, capsys):
    src, expected = cvat_task(tmp_path / "task")
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "cvat", src, "--root", dst)
    assert code == 0, err
    for name, label in expected.items():
        np.testing.assert_array_equal(read_ids(dst / "labels" / f"{name}.png"), label)
        assert (dst / "images" / f"{name}.png").read_bytes() == (src / "images" / f"{name}.png").read_bytes()
    # each pixel class appears: the test covers every kind of shape
    assert set(np.unique(expected["frame_a"])) == {0, 1, 2, IGNORE}
    # the task's label colours, in its label order
    assert class_lines(dst) == ["car 250,50,83", "road 140,120,240", "tree 51,221,255"]
    assert "skipped shapes (they cover no area): 1 polyline\n" in out


def test_cvat_rle_against_pycocotools(tmp_path, capsys):
    """CVAT's row-major runs equal pycocotools' column-major RLE of the transposed box: the
    runs written here decode to the same mask through `mask.encode`/`decode`."""
    blob = RNG.random((7, 9)) < 0.5
    runs = [int(v) for v in cvat_rle(blob).split(",")]
    encoded = mask_utils.encode(np.asfortranarray(blob.T.astype(np.uint8)))
    assert mask_utils.decode(mask_utils.frPyObjects({"counts": runs, "size": [9, 7]}, 9, 7)).T.tolist() == \
        blob.astype(np.uint8).tolist()
    assert mask_utils.decode(encoded).T.astype(bool).tolist() == blob.tolist()
    src = tmp_path / "task"
    src.mkdir()
    frame = {"name": "f.png", "width": 12, "height": 10, "shapes": [rle_mask("tree", blob, 3, 2)]}
    (src / "annotations.xml").write_text(cvat_xml([frame]))
    write_image(src / "images" / "f.png", 10, 12)
    assert run(capsys, "--from", "cvat", src, "--root", tmp_path / "mine")[0] == 0
    expected = np.full((10, 12), IGNORE, dtype=np.uint8)
    expected[2:9, 3:12][blob] = 2
    np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / "f.png"), expected)


def test_cvat_zip_without_images_and_the_temporary_folder_is_removed(tmp_path, capsys, monkeypatch):
    """A downloaded task zip; frames without an image are named and skipped; --images gives them."""
    src, expected = cvat_task(tmp_path / "task")
    archive = tmp_path / "task_export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(src / "annotations.xml", "annotations.xml")
        zf.write(src / "images" / "frame_b.png", "images/frame_b.png")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, out, err = run(capsys, "--from", "cvat", archive, "--root", tmp_path / "mine", "--val-fraction", "0")
    assert code == 0, err
    assert "skipped images: 1 without an image\n" in out
    assert "images not found in " in out and "(1): frame_a.png\n" in out
    np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / "frame_b.png"), expected["frame_b"])
    assert sorted((tmp_path / "mine" / "labels").iterdir()) == [tmp_path / "mine" / "labels" / "frame_b.png"]
    assert list(scratch.iterdir()) == []
    # an annotations-only export with the images elsewhere
    code, out, err = run(capsys, "--from", "cvat", src / "annotations.xml", "--images", src / "images",
                         "--root", tmp_path / "other", "--background", "road")
    assert code == 0, err
    label = expected["frame_a"].copy()
    label[label == IGNORE] = 1
    np.testing.assert_array_equal(read_ids(tmp_path / "other" / "labels" / "frame_a.png"), label)


def test_classes_file_orders_cvat_both_exports(tmp_path, capsys):
    src, expected = cvat_task(tmp_path / "task")
    classes = tmp_path / "classes.txt"
    classes.write_text("tree\nroad\ncar\n")
    assert run(capsys, "--from", "cvat", src, "--root", tmp_path / "mine", "--classes", classes)[0] == 0
    lut = np.array([2, 1, 0] + [IGNORE] * 253, dtype=np.uint8)
    np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / "frame_a.png"), lut[expected["frame_a"]])
    # colours from the task where the classes file gives none
    assert class_lines(tmp_path / "mine") == ["tree 51,221,255", "road 140,120,240", "car 250,50,83"]
    # Segmentation mask 1.1: the label map's order is replaced by the file's
    seg = tmp_path / "seg"
    (seg / "ImageSets" / "Segmentation").mkdir(parents=True)
    (seg / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\n"
                                      "tree:51,221,255::\n")
    (seg / "ImageSets" / "Segmentation" / "default.txt").write_text("x\n")
    write_image(seg / "JPEGImages" / "x.jpg", 2, 3)
    colours = np.array([[[0, 0, 0], [250, 50, 83], [51, 221, 255]], [[51, 221, 255], [0, 0, 0], [0, 0, 0]]])
    (seg / "SegmentationClass").mkdir()
    cv2.imwrite(str(seg / "SegmentationClass" / "x.png"), colours[..., ::-1].astype(np.uint8))
    (tmp_path / "order.txt").write_text("tree\ncar\n")
    code, out, err = run(capsys, "--from", "cvat", seg, "--root", tmp_path / "seg_out", "--classes",
                         tmp_path / "order.txt", "--ignore-class", "background")
    assert code == 0, err
    np.testing.assert_array_equal(read_ids(tmp_path / "seg_out" / "labels" / "x.png"),
                                  [[IGNORE, 1, 0], [0, IGNORE, IGNORE]])
    assert class_lines(tmp_path / "seg_out") == ["tree 51,221,255", "car 250,50,83"]
    # the same export as CVAT's download: a zip of the folder's contents
    archive = tmp_path / "seg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(seg.rglob("*")):
            zf.write(path, path.relative_to(seg).as_posix())
    code, out, err = run(capsys, "--from", "cvat", archive, "--root", tmp_path / "zip_out", "--classes",
                         tmp_path / "order.txt", "--ignore-class", "background")
    assert code == 0, err
    assert read_ids(tmp_path / "zip_out" / "labels" / "x.png").tolist() == [[IGNORE, 1, 0], [0, IGNORE, IGNORE]]


def test_cvat_bad_inputs(tmp_path, capsys):
    src, _ = cvat_task(tmp_path / "task")
    xml = src / "annotations.xml"
    text = xml.read_text()
    classes = tmp_path / "classes.txt"
    classes.write_text("road\ncar\n")
    err = refused(capsys, tmp_path / "a", "--from", "cvat", src, "--classes", classes)
    assert err == (f"cgnet data: error: {xml} (<labels>): class 'tree' is not in the classes file {classes} "
                   "(it lists: road, car)\n")

    xml.write_text(text.replace('label="road" source="manual" occluded="0" points="10.50', 'label="sky" source="manual" '
                                'occluded="0" points="10.50'))
    err = refused(capsys, tmp_path / "b", "--from", "cvat", src)
    assert err == (f"cgnet data: error: {xml}: <image> 2 ('frame_b.png'): <polygon> 2 ('sky'): the label is not one "
                   "of the task's labels (1 imported before it; nothing written to " + f"{tmp_path / 'b'})\n")

    bad_rle = text.replace('rle="', 'rle="1, ')
    xml.write_text(bad_rle)
    err = refused(capsys, tmp_path / "c", "--from", "cvat", src)
    assert err.startswith(f"cgnet data: error: {xml}: <image> 1 ('frame_a.png'): <mask> 3 ('car'): rle must be whole "
                          "run lengths adding up to width x height = 99, got '1, ")

    xml.write_text(text.replace("<annotations>", "<annotations><track id=\"0\" label=\"car\"></track>"))
    err = refused(capsys, tmp_path / "d", "--from", "cvat", src)
    assert err == (f"cgnet data: error: {xml}: a 'CVAT for video 1.1' export (it has <track> elements); export the "
                   "task as 'CVAT for images 1.1'\n")

    xml.write_text(text.replace("<polyline ", '<ellipse label="car" cx="5" cy="5" rx="2" ry="3" z_order="0">'
                                "</ellipse><polyline "))
    err = refused(capsys, tmp_path / "h", "--from", "cvat", src)
    assert err == (f"cgnet data: error: {xml}: <image> 1 ('frame_a.png'): <ellipse> 4 ('car'): <ellipse> shapes are "
                   "not read (polygons, boxes and masks are); convert them in CVAT or delete them (0 imported before "
                   f"it; nothing written to {tmp_path / 'h'})\n")

    err = refused(capsys, tmp_path / "i", "--from", "voc", src, "--background", "road")
    assert err == ("cgnet data: error: --background is not an option of --from voc (it is for --from cvat, coco, "
                   "labelstudio, yolo)\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(capsys, tmp_path / "e", "--from", "cvat", empty)
    assert err == (f"cgnet data: error: {empty} is not a CVAT export: no labelmap.txt ('Segmentation mask 1.1') and "
                   "no annotations.xml ('CVAT for images 1.1') in it\n")

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    err = refused(capsys, tmp_path / "f", "--from", "cvat", broken)
    assert err == f"cgnet data: error: {broken}: not a readable zip archive (File is not a zip file)\n"

    xml.write_text(text)
    (src / "images" / "frame_a.png").unlink()
    (src / "images" / "frame_b.png").unlink()
    err = refused(capsys, tmp_path / "g", "--from", "cvat", src)
    assert err == (f"cgnet data: error: {src}: nothing to import (2 without an image; images not found in "
                   f"{src / 'images'} (2): frame_a.png, frame_b.png) (0 imported, 2 skipped before it; nothing "
                   f"written to {tmp_path / 'g'})\n")


# ---- COCO -------------------------------------------------------------------------------------

def coco_export(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """CVAT's "COCO 1.0" layout (annotations/instances_default.json, images/default/), with
    fractional multi-part polygons, a compressed RLE, an iscrowd uncompressed RLE, a box-only
    annotation, and overlaps; category ids out of order."""
    h, w = 24, 32
    cats = [{"id": 7, "name": "person", "supercategory": ""}, {"id": 2, "name": "car", "supercategory": ""}]
    ids = {2: 0, 7: 1}   # sorted by category id: car, person
    part1 = [1.5, 1.5, 14.2, 2.7, 9.9, 12.3]
    part2 = [20.1, 3.3, 30.8, 3.3, 30.8, 9.6, 20.1, 9.6]
    blob = np.zeros((h, w), dtype=np.uint8)
    blob[10:20, 5:18] = 1
    crowd = np.zeros((h, w), dtype=np.uint8)
    crowd[15:23, 12:30] = 1
    crowd[18, 20] = 0
    compressed = mask_utils.encode(np.asfortranarray(blob))
    # iscrowd regions come as uncompressed RLE: column-major runs, first of 0s
    runs = cvat_rle(crowd.T.astype(bool))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [part1, part2], "iscrowd": 0, "bbox": [0, 0, 1, 1]},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [0, 0, 3, 3],
         "segmentation": {"size": [h, w], "counts": compressed["counts"].decode("ascii")}},
        {"id": 3, "image_id": 1, "category_id": 7, "iscrowd": 1, "bbox": [0, 0, 3, 3],
         "segmentation": {"size": [h, w], "counts": [int(v) for v in runs.split(",")]}},
        {"id": 4, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [0, 0, 3, 3], "segmentation": []},
        {"id": 5, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [0, 0, 3, 3], "segmentation": [part1]},
    ]
    doc = {"info": {}, "licenses": [], "categories": cats, "annotations": anns,
           "images": [{"id": 1, "file_name": "one.jpg", "width": w, "height": h},
                      {"id": 2, "file_name": "two.jpg", "width": w, "height": h}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    for name in ("one", "two"):
        write_image(root / "images" / "default" / f"{name}.jpg", h, w)
    one = np.full((h, w), IGNORE, dtype=np.uint8)
    one[mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([part1, part2], h, w))).astype(bool)] = ids[7]
    one[blob.astype(bool)] = ids[2]
    one[crowd.astype(bool)] = ids[7]
    two = np.full((h, w), IGNORE, dtype=np.uint8)
    two[poly_mask(part1, h, w)] = ids[2]
    return root, {"one": one, "two": two}


def test_coco_polygons_and_rle_round_trip(tmp_path, capsys):
    src, expected = coco_export(tmp_path / "coco")
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "coco", src, "--root", dst)
    assert code == 0, err
    for name, label in expected.items():
        np.testing.assert_array_equal(read_ids(dst / "labels" / f"{name}.png"), label)
    assert set(np.unique(expected["one"])) == {0, 1, IGNORE}
    assert [line.split()[0] for line in class_lines(dst)] == ["car", "person"]
    assert ("annotations without a segmentation (boxes only) skipped, by index (1): 3\n") in out
    # the JSON file itself, the background class, and --classes reordering by name
    order = tmp_path / "order.txt"
    order.write_text("ground 0,0,0\nperson 255,0,0\ncar 0,0,255\n")
    code, out, err = run(capsys, "--from", "coco", src / "annotations" / "instances_default.json", "--root",
                         tmp_path / "other", "--images", src / "images" / "default", "--classes", order,
                         "--background", "ground")
    assert code == 0, err
    lut = np.array([2, 1] + [0] * 254, dtype=np.uint8)
    np.testing.assert_array_equal(read_ids(tmp_path / "other" / "labels" / "one.png"), lut[expected["one"]])
    assert class_lines(tmp_path / "other") == ["ground 0,0,0", "person 255,0,0", "car 0,0,255"]


def test_coco_bad_inputs(tmp_path, capsys):
    src, _ = coco_export(tmp_path / "coco")
    path = src / "annotations" / "instances_default.json"
    doc = json.loads(path.read_text())

    def write(change):
        bad = json.loads(json.dumps(doc))
        change(bad)
        path.write_text(json.dumps(bad))

    write(lambda d: d["annotations"][4].update(category_id=9))
    err = refused(capsys, tmp_path / "a", "--from", "coco", src)
    assert err == (f"cgnet data: error: {path}: annotations[4] (image 'two.jpg'): category_id 9 is not in the "
                   f"categories (1 imported before it; nothing written to {tmp_path / 'a'})\n")
    write(lambda d: d["annotations"][2]["segmentation"].update(size=[10, 10]))
    err = refused(capsys, tmp_path / "b", "--from", "coco", src)
    assert err == (f"cgnet data: error: {path}: annotations[2] (image 'one.jpg'): segmentation is not readable (an "
                   "RLE of size [10, 10] with 768 pixels for a 24x32 image) (0 imported before it; nothing written "
                   f"to {tmp_path / 'b'})\n")
    write(lambda d: d.pop("categories"))
    err = refused(capsys, tmp_path / "c", "--from", "coco", src)
    assert err == f"cgnet data: error: {path}: not a COCO instances file (no 'categories' list)\n"
    path.write_text(json.dumps(doc))
    classes = tmp_path / "classes.txt"
    classes.write_text("car\n")
    err = refused(capsys, tmp_path / "d", "--from", "coco", src, "--classes", classes)
    assert err == (f"cgnet data: error: {path} (categories): class 'person' is not in the classes file {classes} "
                   "(it lists: car)\n")
    err = refused(capsys, tmp_path / "e", "--from", "coco", src, "--mask-suffix", "_L")
    assert err == "cgnet data: error: --mask-suffix is not an option of --from coco (it is for --from ids, colors)\n"


# ---- VOC palette PNGs and id masks ------------------------------------------------------------

def voc_colormap() -> list[int]:
    """VOC's palette: index i's colour from the bits of i (as VOC's devkit defines it); index
    255 set to 224,224,192 (the border colour)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    palette[3 * 255:] = [224, 224, 192]
    return palette


def write_palette_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(voc_colormap())
    image.save(path)


def voc_export(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """labelme2voc's output: class_names.txt, JPEGImages/, SegmentationClassPNG/ (and .npy files
    in SegmentationClass/, not read); 255 marks unlabelled (VOC's border)."""
    masks = {"a": RNG.integers(0, 3, (5, 7)), "b": RNG.integers(0, 3, (5, 7))}
    masks["a"][0, :] = 255
    root.mkdir(parents=True)
    (root / "class_names.txt").write_text("_background_\ncat\ndog")
    for name, values in masks.items():
        write_palette_png(root / "SegmentationClassPNG" / f"{name}.png", values)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        np.save(root / "SegmentationClass" / f"{name}.npy", values)
        write_image(root / "JPEGImages" / f"{name}.jpg", 5, 7)
    return root, masks


def test_voc_palette_pngs(tmp_path, capsys):
    src, masks = voc_export(tmp_path / "voc")
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "voc", src, "--root", dst)
    assert code == 0, err
    for name, values in masks.items():
        np.testing.assert_array_equal(read_ids(dst / "labels" / f"{name}.png"), values)
    assert class_lines(dst) == ["_background_ 0,0,0", "cat 128,0,0", "dog 0,128,0"]
    # --classes reorders by name; --ignore-class drops the background
    order = tmp_path / "order.txt"
    order.write_text("dog\ncat\n")
    code, out, err = run(capsys, "--from", "voc", src, "--root", tmp_path / "other", "--classes", order,
                         "--ignore-class", "_background_")
    assert code == 0, err
    lut = np.array([IGNORE, 1, 0] + [IGNORE] * 253, dtype=np.uint8)
    np.testing.assert_array_equal(read_ids(tmp_path / "other" / "labels" / "a.png"), lut[masks["a"]])
    assert class_lines(tmp_path / "other") == ["dog 0,128,0", "cat 128,0,0"]


def test_voc_bad_inputs(tmp_path, capsys):
    src, masks = voc_export(tmp_path / "voc")
    values = masks["b"].copy()
    values[2, 4] = 7
    write_palette_png(src / "SegmentationClassPNG" / "b.png", values)
    err = refused(capsys, tmp_path / "a", "--from", "voc", src)
    assert err == (f"cgnet data: error: {src / 'SegmentationClassPNG' / 'b.png'}: pixel (x=4, y=2) has value 7, "
                   f"which is no class of {src / 'class_names.txt'} (values 0..2, and 255 for unlabelled) (1 imported "
                   f"before it; nothing written to {tmp_path / 'a'})\n")
    Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8)).save(src / "SegmentationClassPNG" / "b.png")
    err = refused(capsys, tmp_path / "b", "--from", "voc", src)
    assert err == (f"cgnet data: error: {src / 'SegmentationClassPNG' / 'b.png'}: not a palette PNG (mode P): its "
                   f"mode is RGB; use --from colors for RGB masks (1 imported before it; nothing written to "
                   f"{tmp_path / 'b'})\n")
    (src / "class_names.txt").unlink()
    err = refused(capsys, tmp_path / "c", "--from", "voc", src)
    assert err == (f"cgnet data: error: {src}: no class_names.txt (labelme2voc writes one); give --classes FILE, one "
                   "name per line, line i naming palette index i (VOC2012: background, aeroplane, bicycle, ...)\n")


def test_id_masks(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    values = {"x": RNG.integers(0, 4, (6, 5)), "y": RNG.integers(0, 4, (6, 5))}
    values["y"][3] = 255
    for name, ids in values.items():
        write_image(images / f"{name}.jpg", 6, 5)
        masks.mkdir(exist_ok=True)
        Image.fromarray(ids.astype(np.uint8), mode="L").save(masks / f"{name}_ids.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("void 0,0,0\nsky 70,130,180\nroad 128,64,128\ncar 0,0,142\n")
    code, out, err = run(capsys, "--from", "ids", images, "--masks", masks, "--mask-suffix", "_ids", "--classes",
                         classes, "--ignore-class", "void", "--root", tmp_path / "mine")
    assert code == 0, err
    lut = np.array([IGNORE, 0, 1, 2] + [IGNORE] * 252, dtype=np.uint8)
    for name, ids in values.items():
        np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / f"{name}.png"), lut[ids])
    assert class_lines(tmp_path / "mine") == ["sky 70,130,180", "road 128,64,128", "car 0,0,142"]
    values["x"][5, 1] = 9
    Image.fromarray(values["x"].astype(np.uint8), mode="L").save(masks / "x_ids.png")
    err = refused(capsys, tmp_path / "bad", "--from", "ids", images, "--masks", masks, "--mask-suffix", "_ids",
                  "--classes", classes)
    assert err == (f"cgnet data: error: {masks / 'x_ids.png'}: pixel (x=1, y=5) has value 9, which is no class of "
                   f"{classes} (values 0..3, and 255 for unlabelled) (0 imported before it; nothing written to "
                   f"{tmp_path / 'bad'})\n")
    err = refused(capsys, tmp_path / "bad2", "--from", "ids", images, "--masks", masks, "--mask-suffix", "_ids")
    assert err == ("cgnet data: error: --from ids needs --classes FILE (one class per line: line i names mask value "
                   "i)\n")


# ---- exports written by datumaro (CVAT's export library) ----------------------------------------

DATUMARO = Path(__file__).parent / "data" / "datumaro_cvat"


def datumaro_exports(tmp_path: Path, fresh: bool) -> Path:
    """The committed exports (tests/helpers/datumaro_cvat.py, datumaro 1.13.12), or freshly
    written ones when datumaro is installed."""
    if not fresh:
        return DATUMARO
    pytest.importorskip("datumaro")
    from helpers.datumaro_cvat import write_exports
    write_exports(tmp_path / "datumaro")
    return tmp_path / "datumaro"


@pytest.mark.parametrize("fresh", [False, True], ids=["committed", "fresh"])
def test_cvat_xml_equals_datumaros_segmentation_masks(tmp_path, capsys, fresh):
    """Both exports of one task, written by datumaro: the XML's polygons, boxes and mask, drawn
    by cgnet, equal datumaro's own "Segmentation mask 1.1" on every pixel (its background
    taken as the --background class); its colour masks import to the same labels."""
    exports = datumaro_exports(tmp_path, fresh)
    seg = exports / "segmentation_mask"
    colours = {}
    for line in (seg / "labelmap.txt").read_text().splitlines()[1:]:
        name, rgb = line.split(":")[:2]
        colours[tuple(int(v) for v in rgb.split(","))] = name
    order = ["background", "road", "car", "tree"]
    code, out, err = run(capsys, "--from", "cvat", exports / "cvat_for_images", "--root", tmp_path / "xml",
                         "--background", "background")
    assert code == 0, err
    assert "skipped shapes (they cover no area): 1 points shape, 1 polyline\n" in out
    assert [line.split()[0] for line in class_lines(tmp_path / "xml")] == order
    classes = tmp_path / "order.txt"
    classes.write_text("\n".join(order) + "\n")
    code, out, err = run(capsys, "--from", "cvat", seg, "--root", tmp_path / "seg", "--classes", classes)
    assert code == 0, err
    for frame in ("frame_a", "frame_b"):
        rgb = np.asarray(Image.open(seg / "SegmentationClass" / f"{frame}.png").convert("RGB"))
        expected = np.array([[order.index(colours[tuple(int(v) for v in p)]) for p in row] for row in rgb])
        assert len(np.unique(expected)) == 4   # every class shows: the frame tests each kind of shape
        np.testing.assert_array_equal(read_ids(tmp_path / "xml" / "labels" / f"{frame}.png"), expected)
        np.testing.assert_array_equal(read_ids(tmp_path / "seg" / "labels" / f"{frame}.png"), expected)


@pytest.mark.slow
def test_printed_train_command_with_init_camvid_starts_from_the_shipped_rows(tmp_path, capsys):
    """A CVAT task labelled with CamVid's names (alphabetical, as CVAT sorts them): the import's
    printed command plus --init camvid trains, every classifier row matched by name."""
    names = sorted(["Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
                    "Pedestrian", "Bicyclist"])
    colors = {n: f"#{i * 20:02x}{255 - i * 20:02x}80" for i, n in enumerate(names)}
    frames = []
    for i in range(3):
        shapes = [polygon(n, [2.0 + k * 4, 1.5, 5.5 + k * 4, 1.5, 5.5 + k * 4, 38.5, 2.0 + k * 4, 38.5])
                  for k, n in enumerate(names)]
        frames.append({"name": f"f{i}.jpg", "width": 48, "height": 40, "shapes": shapes})
        write_image(tmp_path / "task" / "images" / f"f{i}.jpg", 40, 48)
    (tmp_path / "task" / "annotations.xml").write_text(cvat_xml(frames, colors))
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "cvat", tmp_path / "task", "--root", dst, "--val-fraction", "0.34")
    assert code == 0, err
    command = next(line for line in out.splitlines() if line.startswith("train with: cgnet train "))
    argv = command.removeprefix("train with: cgnet ").split()
    assert main([*argv, "--init", "camvid", "--out", str(tmp_path / "run"), "--crop", "32", "--batch-size", "2",
                 "--epochs", "1", "--max-iters", "1", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--no-compile"]) == 0
    printed = capsys.readouterr().out
    assert "  classifier rows matched by class name: 11 of 11; reordered: " in printed
    assert "re-initialised" not in printed
