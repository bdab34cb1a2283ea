"""`cgnet data import --from labelme`: LabelMe 7 files built here as labelme writes them, imported
and checked pixel by pixel against labelme's own rule (`shapes_to_label`: each shape drawn with
Pillow's ImageDraw into its own mask, assigned in file order), written out in this file; labelme's
own code where it is installed; subfolders, skipped files, phone photos and bad input."""
import base64
import importlib.util
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from cgnet.images import read_rgb
from helpers.photos import phone_jpeg, shown_frame, shows_blocks
from test_import import IGNORE, listing, read_ids, run, write_rgb


def shape(label, points, kind="polygon", mask=None):
    return {"label": label, "points": [list(map(float, p)) for p in points], "group_id": None,
            "description": "", "shape_type": kind, "flags": {}, "mask": mask}


def labelme_doc(shapes, image_path, height, width, image_data=None):
    return {"version": "7.1.0", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": image_data, "imageHeight": height, "imageWidth": width}


def write_json(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def png_b64(array: np.ndarray) -> str:
    """A mask as labelme 7 stores it: the 0/1 uint8 array as a base64 PNG (Pillow's)."""
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def classes_of(root: Path) -> list[str]:
    return [line.split()[0] for line in (root / "classes.txt").read_text().splitlines() if not line.startswith("#")]


# ---- the reference: labelme's rule, one mask per shape ------------------------------------------

def reference_mask(size, s) -> np.ndarray:
    """The pixels labelme 7 gives one shape: Pillow draws on a zero image with ink 1 (fill and
    outline); lines are 10 wide, points radius 5; a mask shape's PNG is placed at its rounded
    first point (cropped to whole-number bounds, its own size for fractional ones)."""
    height, width = size
    kind, pts = s["shape_type"], [tuple(p) for p in s["points"]]
    if kind == "mask":
        bitmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(s["mask"])))).astype(bool)
        out = np.zeros(size, bool)
        corners = np.asarray(s["points"])
        (x1, y1), (x2, y2) = corners.round().astype(int)
        whole = np.array_equal(corners, np.trunc(corners))
        box_h, box_w = (y2 - y1 + 1, x2 - x1 + 1) if whole else bitmap.shape
        for y in range(max(y1, 0), min(y1 + box_h, height)):
            for x in range(max(x1, 0), min(x1 + box_w, width)):
                out[y, x] = bitmap[y - y1, x - x1]
        return out
    image = Image.fromarray(np.zeros(size, np.uint8))
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        (cx, cy), (px, py) = pts
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([(cx - d, cy - d), (cx + d, cy + d)], fill=1, outline=1)
    elif kind == "point":
        (cx, cy), = pts
        draw.ellipse([(cx - 5, cy - 5), (cx + 5, cy + 5)], fill=1, outline=1)
    elif kind == "rectangle":
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        draw.rectangle([(min(xs), min(ys)), (max(xs), max(ys))], fill=1, outline=1)
    elif kind == "line":
        draw.line(pts, fill=1, width=10)
    elif kind == "linestrip":
        draw.line(pts, fill=1, width=10, joint="curve")
    elif kind in ("polygon", "oriented_rectangle"):
        draw.polygon(pts, fill=1, outline=1)
    else:   # points: labelme draws none
        return np.zeros(size, bool)
    return np.asarray(image).astype(bool)


def reference_label(size, shapes, ids, fill) -> np.ndarray:
    label = np.full(size, fill, np.uint8)
    for s in shapes:
        label[reference_mask(size, s)] = ids[s["label"]]
    return label


def hand_drawn(rng, height, width) -> list[dict]:
    """Shapes of every type labelme 7 writes, at fractional (mouse) coordinates, some reaching
    past the image edge, with the labels of labelme2voc (`_background_`, `__ignore__`) among them."""
    labels = ["car", "road", "tree", "_background_", "__ignore__"]

    shapes = []
    for i in range(30):
        centre = (rng.uniform(-4, width + 4), rng.uniform(-4, height + 4))

        def xy():   # near this shape's centre
            return (centre[0] + rng.uniform(-12, 12), centre[1] + rng.uniform(-12, 12))

        label = labels[int(rng.integers(len(labels)))]
        kind = ["polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "point",
                "mask", "mask", "points"][i % 10]
        if kind == "polygon":
            shapes.append(shape(label, [xy() for _ in range(int(rng.integers(3, 9)))]))
        elif kind == "oriented_rectangle":
            (cx, cy), a, b, t = centre, rng.uniform(2, 12), rng.uniform(2, 7), rng.uniform(0, math.pi)
            u, v = (math.cos(t), math.sin(t)), (-math.sin(t), math.cos(t))
            shapes.append(shape(label, [(cx + sa * a * u[0] + sb * b * v[0], cy + sa * a * u[1] + sb * b * v[1])
                                        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))], kind))
        elif kind in ("rectangle", "circle", "line"):
            shapes.append(shape(label, [xy(), xy()] if kind != "circle" else
                                [centre, (centre[0] + rng.uniform(-6, 6), centre[1] + rng.uniform(-6, 6))], kind))
        elif kind == "linestrip":
            shapes.append(shape(label, [xy() for _ in range(int(rng.integers(2, 6)))], kind))
        elif kind == "point":
            shapes.append(shape(label, [xy()], kind))
        elif kind == "points":
            shapes.append(shape(label, [xy() for _ in range(3)], kind))
        else:   # the AI mask tool: whole-number bounds (bitmap cropped to them) or fractional ones
            mh, mw = int(rng.integers(3, 14)), int(rng.integers(3, 14))
            bitmap = rng.random((mh, mw)) < 0.6
            x1, y1 = int(rng.integers(-4, width)), int(rng.integers(-4, height))
            if i % 20 < 10:
                corners = [(x1, y1), (x1 + mw - 1 - int(rng.integers(0, 3)), y1 + mh - 1 - int(rng.integers(0, 3)))]
            else:
                corners = [(x1 + rng.uniform(-0.5, 0.5), y1 + rng.uniform(-0.5, 0.5)),
                           (x1 + mw - 1 + rng.uniform(-0.5, 0.5), y1 + mh - 1 + rng.uniform(-0.5, 0.5))]
            shapes.append(shape(label, corners, "mask", png_b64(bitmap)))
    return shapes


# ---- shapes -------------------------------------------------------------------------------------

def test_every_shape_type_equals_labelmes_drawing_on_every_pixel(tmp_path, capsys):
    src = tmp_path / "labelme"
    size = (37, 53)
    docs = {}
    for k in range(4):
        rng = np.random.default_rng(10 + k)
        write_rgb(src / f"f{k}.png", np.zeros((*size, 3)))
        docs[f"f{k}"] = hand_drawn(rng, *size)
        write_json(src / f"f{k}.json", labelme_doc(docs[f"f{k}"], f"f{k}.png", *size))
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 0, err
    # _background_ is id 0 and fills what no shape covers; __ignore__ draws the ignore id
    assert classes_of(dst) == ["_background_", "car", "road", "tree"]
    ids = {"_background_": 0, "car": 1, "road": 2, "tree": 3, "__ignore__": IGNORE}
    drawn = set()
    for name, shapes in docs.items():
        want = reference_label(size, shapes, ids, 0)
        np.testing.assert_array_equal(read_ids(dst / "labels" / f"{name}.png"), want)
        drawn |= set(np.unique(want).tolist())
    assert drawn == {0, 1, 2, 3, IGNORE}   # every id is drawn somewhere: a wrong order or rule shows
    assert "skipped shapes (they cover no area): 12 points" in out


def labelme_7_shapes_module():
    """labelme 7's own `_utils/shape.py` when labelme 7 is installed (loaded by path: importing
    the labelme package needs its Qt GUI stack), else None."""
    spec = importlib.util.find_spec("labelme")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "_utils" / "shape.py"   # 6.x has utils/shape.py
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("labelme_7_shape", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_equals_labelme_7s_own_shapes_to_label(tmp_path, capsys):
    labelme = labelme_7_shapes_module()
    if labelme is None:
        pytest.skip("labelme 7 is not installed (it needs Python >= 3.12)")
    src, size = tmp_path / "labelme", (41, 47)
    shapes = hand_drawn(np.random.default_rng(7), *size)
    write_rgb(src / "a.png", np.zeros((*size, 3)))
    write_json(src / "a.json", labelme_doc(shapes, "a.png", *size))
    assert run(capsys, "--from", "labelme", src, "--root", tmp_path / "mine")[0] == 0
    # as labelme2voc calls it: __ignore__ is -1 (255 as uint8); its reader decodes masks to bool
    loaded = [{**s, "mask": None if s["mask"] is None else
               np.asarray(Image.open(io.BytesIO(base64.b64decode(s["mask"])))).astype(bool)}
              for s in shapes if s["shape_type"] != "points"]   # labelme refuses to draw 'points'
    cls, _ = labelme.shapes_to_label(size, loaded, {"__ignore__": -1, "_background_": 0, "car": 1, "road": 2,
                                                     "tree": 3})
    np.testing.assert_array_equal(read_ids(tmp_path / "mine" / "labels" / "a.png"), cls.astype(np.uint8))


def test_whole_number_corners_and_edges(tmp_path, capsys):
    """Pillow's rule by hand on whole-number corners: a rectangle includes both corners' rows and
    columns, a polygon its outline, a circle of radius 1 is a plus."""
    src = tmp_path / "labelme"
    h, w = 8, 10
    image = write_rgb(src / "street.jpg", np.full((h, w, 3), 90))
    write_json(src / "street.json", labelme_doc([
        shape("road", [(0, 0), (4, 0), (0, 4)]),                       # x + y <= 4: 15 pixels
        shape("car", [(9, 7), (7, 6)], "rectangle"),                   # corners any way round, inclusive
        shape("tree", [(7, 2), (7, 3)], "circle"),                     # radius 1: 5 pixels
        shape("car", [(3, 3)], "points"),
    ], "street.jpg", h, w))
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 0, err
    car, road, tree = 0, 1, 2   # the labels found, sorted
    want = np.full((h, w), IGNORE, np.uint8)
    for y in range(h):
        for x in range(w):
            if x + y <= 4:
                want[y, x] = road
    want[6:8, 7:10] = car
    for x, y in ((7, 1), (6, 2), (7, 2), (8, 2), (7, 3)):
        want[y, x] = tree
    np.testing.assert_array_equal(read_ids(dst / "labels" / "street.png"), want)
    assert (dst / "images" / "street.jpg").read_bytes() == image.read_bytes()
    assert classes_of(dst) == ["car", "road", "tree"]
    assert "skipped shapes (they cover no area): 1 points" in out


def test_later_shapes_cover_earlier_ones(tmp_path, capsys):
    src = tmp_path / "labelme"
    write_rgb(src / "a.png", np.zeros((4, 6, 3)))
    write_rgb(src / "b.png", np.zeros((4, 6, 3)))
    big, small = shape("sky", [(0, 0), (5, 3)], "rectangle"), shape("bird", [(2, 1), (3, 2)], "rectangle")
    write_json(src / "a.json", labelme_doc([big, small], "a.png", 4, 6))
    write_json(src / "b.json", labelme_doc([small, big], "b.png", 4, 6))
    dst = tmp_path / "mine"
    assert run(capsys, "--from", "labelme", src, "--root", dst)[0] == 0
    bird, sky = 0, 1
    a = np.full((4, 6), sky, np.uint8)
    a[1:3, 2:4] = bird
    np.testing.assert_array_equal(read_ids(dst / "labels" / "a.png"), a)
    np.testing.assert_array_equal(read_ids(dst / "labels" / "b.png"), np.full((4, 6), sky, np.uint8))


# ---- folders, classes, images ---------------------------------------------------------------------

def test_subfolders_keep_their_path_and_other_json_files_are_counted(tmp_path, capsys):
    src = tmp_path / "labelme"
    for rel in ("a", "seq2/0001", "seq2/0002", "seq2/night/0001"):
        write_rgb(src / f"{rel}.jpg", np.zeros((3, 4, 3)))
        write_json(src / f"{rel}.json", labelme_doc([shape("car", [(0, 0), (1, 1)], "rectangle")],
                                                    Path(rel).name + ".jpg", 3, 4))
    write_json(src / "project.json", {"name": "street", "labels": ["car"]})
    write_json(src / "seq2" / "settings.json", ["not", "an", "annotation"])
    (src / "notes").mkdir()
    (src / "notes" / "draft.JSON").write_text("{ not json")
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "labelme", src, "--root", dst, "--val-fraction", "0")
    assert code == 0, err
    assert sorted((dst / "train.txt").read_text().splitlines()) == [
        f"images/{rel}.jpg labels/{rel}.png" for rel in ("a", "seq2/0001", "seq2/0002", "seq2/night/0001")]
    want = np.full((3, 4), IGNORE, np.uint8)
    want[:2, :2] = 0
    np.testing.assert_array_equal(read_ids(dst / "labels" / "seq2" / "night" / "0001.png"), want)
    assert "imported 4 images" in out
    assert ("skipped images: 1 .json files that are not valid JSON (first: notes/draft.JSON), "
            "2 .json files that are not LabelMe files (first: project.json)") in out


def test_no_labelme_file_at_all_is_one_line(tmp_path, capsys):
    src = tmp_path / "labelme"
    write_json(src / "sub" / "project.json", {"name": "street"})
    dst = tmp_path / "mine"
    code, _, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 2 and not dst.exists()
    assert err == (f"cgnet data: error: {src}: no LabelMe .json files in it or its subfolders (1 .json files "
                   "that are not LabelMe files (first: sub/project.json))\n")


def test_ignore_label_and_a_labelme2voc_labels_file(tmp_path, capsys):
    src = tmp_path / "labelme"
    write_rgb(src / "a.png", np.zeros((4, 5, 3)))
    write_json(src / "a.json", labelme_doc([shape("car", [(0, 0), (4, 3)], "rectangle"),
                                            shape("__ignore__", [(3, 0), (4, 3)], "rectangle")], "a.png", 4, 5))
    dst = tmp_path / "mine"
    assert run(capsys, "--from", "labelme", src, "--root", dst)[0] == 0
    want = np.zeros((4, 5), np.uint8)
    want[:, 3:] = IGNORE
    np.testing.assert_array_equal(read_ids(dst / "labels" / "a.png"), want)
    assert classes_of(dst) == ["car"]
    # labelme2voc's labels.txt: __ignore__ (-1), _background_ (0), then the classes
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nbus\ncar\n")
    dst = tmp_path / "voc"
    assert run(capsys, "--from", "labelme", src, "--root", dst, "--classes", labels)[0] == 0
    want[:, :3] = 2
    np.testing.assert_array_equal(read_ids(dst / "labels" / "a.png"), want)
    assert classes_of(dst) == ["_background_", "bus", "car"]


def test_embedded_image_round_trip_and_background_class(tmp_path, capsys):
    src = tmp_path / "labelme"
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)   # BGR, as OpenCV holds it
    data = base64.b64encode(cv2.imencode(".png", pixels)[1].tobytes()).decode()
    # imagePath names a file that is not there: the embedded image is what counts
    write_json(src / "shot 1.json", labelme_doc([shape("_background_", [(0, 0), (1, 1)], "rectangle"),
                                                 shape("cat", [(6, 4), (5, 3)], "rectangle")],
                                                "..\\elsewhere\\shot 1.jpg", 5, 7, data))
    dst = tmp_path / "mine"
    code, _, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 0, err
    # spaces become '_' (list files separate fields by whitespace); the image is re-encoded as PNG
    np.testing.assert_array_equal(cv2.imread(str(dst / "images" / "shot_1.png"), cv2.IMREAD_UNCHANGED), pixels)
    want = np.zeros((5, 7), np.uint8)   # _background_ is class 0 and fills what no shape covers
    want[3:5, 5:7] = 1
    np.testing.assert_array_equal(read_ids(dst / "labels" / "shot_1.png"), want)
    assert [line for line in (dst / "classes.txt").read_text().splitlines() if not line.startswith("#")][0] == \
        "_background_ 0,0,0"
    assert (dst / "train.txt").read_text() == "images/shot_1.png labels/shot_1.png\n"


def test_classes_file_fixes_ids_and_colours(tmp_path, capsys):
    src = tmp_path / "labelme"
    write_rgb(src / "a.png", np.zeros((3, 3, 3)))
    write_json(src / "a.json", labelme_doc([shape("dog", [(0, 0), (1, 2)], "rectangle")], "a.png", 3, 3))
    classes = tmp_path / "classes.txt"
    classes.write_text("# mine\ncat 10,20,30\ndog 40,50,60\n")
    dst = tmp_path / "mine"
    assert run(capsys, "--from", "labelme", src, "--root", dst, "--classes", classes)[0] == 0
    want = np.full((3, 3), IGNORE, np.uint8)
    want[:, :2] = 1
    np.testing.assert_array_equal(read_ids(dst / "labels" / "a.png"), want)
    assert (dst / "classes.txt").read_text().splitlines()[-2:] == ["cat 10,20,30", "dog 40,50,60"]
    # a label the classes file lacks
    classes.write_text("cat 10,20,30\n")
    code, _, err = run(capsys, "--from", "labelme", src, "--root", tmp_path / "other", "--classes", classes)
    assert code == 2 and not (tmp_path / "other").exists()
    assert err == (f"cgnet data: error: {src / 'a.json'}: shape 0: class 'dog' is not in the classes file {classes} "
                   "(it lists: cat)\n")


# ---- bad input ----------------------------------------------------------------------------------

OK_MASK = png_b64(np.ones((2, 2), np.uint8))


@pytest.mark.parametrize("bad, message", [
    (shape("car", [(0, 0), (2, 2)]), "shape 1 ('car'): a polygon needs at least 3 points, it has 2"),
    (shape("car", [(0, 0), (2, 2), (3, 3)], "rectangle"), "shape 1 ('car'): a rectangle needs 2 points, it has 3"),
    (shape("car", [(0, 0), (2, 2), (3, 3)], "oriented_rectangle"),
     "shape 1 ('car'): an oriented_rectangle needs 4 points, it has 3"),
    (shape("car", [(0, 0)], "linestrip"), "shape 1 ('car'): a linestrip needs at least 2 points, it has 1"),
    (shape("car", [(0, 0), (1, 1)], "point"), "shape 1 ('car'): a point needs 1 point, it has 2"),
    ({**shape("car", [(0, 0), (2, 2)], "circle"), "points": [[0, "x"], [1, 1]]},
     "shape 1 ('car'): points must be a list of [x, y] numbers, got [[0, 'x'], [1, 1]]"),
    ({**shape("car", [(0, 0), (2, 2)], "circle"), "points": [[0, True], [1, 1]]},
     "shape 1 ('car'): points must be a list of [x, y] numbers, got [[0, True], [1, 1]]"),
    (shape("car", [(0, 0), (1, 1)], "mask"), "shape 1 ('car'): a mask shape needs its 'mask' (a base64 PNG)"),
    (shape("car", [(0, 0), (1, 1)], "mask", base64.b64encode(b"not a png").decode()),
     "shape 1 ('car'): 'mask' is not a base64-encoded image"),
    (shape("car", [(0, 0), (1, 1)], "mask", png_b64(np.ones((2, 2, 3), np.uint8))),
     "shape 1 ('car'): 'mask' must be a single-channel image, got 2x2 with 3 channels"),
    (shape("car", [(0, 0), (2, 2)], "mask", OK_MASK),
     "shape 1 ('car'): the mask is 2x2 pixels, smaller than its box 3x3 (width x height)"),
])
def test_bad_shape_is_one_line(tmp_path, capsys, bad, message):
    src = tmp_path / "labelme"
    write_rgb(src / "a.png", np.zeros((4, 4, 3)))
    write_rgb(src / "b.png", np.zeros((4, 4, 3)))
    write_json(src / "a.json", labelme_doc([shape("car", [(0, 0), (1, 1)], "rectangle")], "a.png", 4, 4))
    write_json(src / "b.json", labelme_doc([shape("car", [(0, 0), (1, 1)], "mask", OK_MASK), bad], "b.png", 4, 4))
    dst = tmp_path / "out" / "mine"
    before = listing(tmp_path)
    code, _, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 2 and listing(tmp_path) == before   # no DST, no temporary folder, not even its parent
    assert err == f"cgnet data: error: {src / 'b.json'}: {message} (1 imported before it; nothing written to {dst})\n"


@pytest.mark.parametrize("bad, message", [
    (shape("car", [(0, 0), (2, 2)], "ellipse"), "shape 1 ('car'): shape_type 'ellipse' is not one labelme writes "
     "(polygon, rectangle, oriented_rectangle, circle, line, linestrip, point, mask, points)"),
    ({**shape("car", [(0, 0), (2, 2)]), "label": " "}, "shape 1 (' '): the label must be a non-empty string"),
])
def test_bad_shape_type_or_label_is_found_before_anything_is_imported(tmp_path, capsys, bad, message):
    src = tmp_path / "labelme"
    write_rgb(src / "a.png", np.zeros((4, 4, 3)))
    write_json(src / "a.json", labelme_doc([shape("car", [(0, 0), (1, 1)], "rectangle"), bad], "a.png", 4, 4))
    dst = tmp_path / "mine"
    code, _, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 2 and not dst.exists()
    assert err == f"cgnet data: error: {src / 'a.json'}: {message}\n"


def test_declared_size_must_match_the_displayed_image(tmp_path, capsys):
    src = tmp_path / "labelme"
    write_rgb(src / "a.png", np.zeros((4, 6, 3)))
    write_json(src / "a.json", labelme_doc([shape("car", [(0, 0), (1, 1)], "rectangle")], "a.png", 6, 4))
    dst = tmp_path / "mine"
    code, _, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 2 and not dst.exists()
    assert err == (f"cgnet data: error: {src / 'a.json'}: imageHeight x imageWidth 6x4 but the image is 4x6 as "
                   f"displayed (height x width) (0 imported before it; nothing written to {dst})\n")


# ---- phone photos -------------------------------------------------------------------------------

@pytest.mark.parametrize("embedded", [False, True], ids=["imagePath", "imageData"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_phone_photo_is_annotated_in_the_displayed_frame(tmp_path, capsys, orientation, embedded):
    """A photo stored 200 wide x 100 tall: labelme shows (and the annotator draws on) 100 x 200
    for orientations 5-8. The labels and the imported image are in that frame."""
    shown_h, shown_w = (200, 100) if orientation >= 5 else (100, 200)
    data = phone_jpeg(shown_frame(shown_h, shown_w), orientation)
    src = tmp_path / "labelme"
    (src / "photo.jpg").parent.mkdir(parents=True)
    if not embedded:
        (src / "photo.jpg").write_bytes(data)
    # the top-left block of the shown frame, a triangle in its lower right quarter
    shapes = [shape("red", [(0, 0), (shown_w / 4 - 1, shown_h / 2 - 1)], "rectangle"),
              shape("tri", [(shown_w - 10.5, shown_h - 30.25), (shown_w - 1, shown_h - 1), (shown_w / 2, shown_h - 2)])]
    write_json(src / "photo.json", labelme_doc(shapes, "photo.jpg", shown_h, shown_w,
                                               base64.b64encode(data).decode() if embedded else None))
    dst = tmp_path / "mine"
    code, _, err = run(capsys, "--from", "labelme", src, "--root", dst)
    assert code == 0, err
    label = read_ids(dst / "labels" / "photo.png")
    np.testing.assert_array_equal(label, reference_label((shown_h, shown_w), shapes, {"red": 0, "tri": 1}, IGNORE))
    image = read_rgb(next((dst / "images").iterdir()))   # as the training loader reads it
    assert image.shape == (shown_h, shown_w, 3) and shows_blocks(image)
