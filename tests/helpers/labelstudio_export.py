"""A small Label Studio export and label-studio-sdk's own conversions of it, to check `cgnet data
import --from labelstudio` against the tool's code.

`write_export(out)` writes out/export.json (Label Studio's JSON export: two tasks; polygons in
percent, rectangles with and without rotation, brush masks encoded by the SDK's
`brush.mask2rle`, a key point; task frame_b has an older annotation, the newest one and a newer
cancelled one), out/images/, out/export_min.json (the SDK's JSON-MIN conversion of it) and
out/sdk/, what the SDK's converter makes of the annotation it lists first for each task:
coco/result.json (its COCO export: polygons in pixels), brush/*.png (its BRUSH_TO_PNG export:
each brush region's alpha channel) and obb.json (each rectangle's corners by its
`convert_annotation_to_yolo_obb(label, normalize=False)`, in result order).

It needs label-studio-sdk (`pip install label-studio-sdk` in a venv of its own: it pulls in over
150 packages); tests/data/labelstudio/ holds its output, made with
`python tests/helpers/labelstudio_export.py tests/data/labelstudio` (label-studio-sdk 2.1.2).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CONFIG = """<View><Image name="image" value="$image"/>
<PolygonLabels name="poly" toName="image"><Label value="road"/><Label value="car"/><Label value="tree"/></PolygonLabels>
<RectangleLabels name="rect" toName="image"><Label value="road"/><Label value="car"/><Label value="tree"/></RectangleLabels>
<BrushLabels name="brush" toName="image"><Label value="road"/><Label value="car"/><Label value="tree"/></BrushLabels>
<KeyPointLabels name="kp" toName="image"><Label value="car" model_index="0"/></KeyPointLabels>
</View>"""
HEIGHT, WIDTH = 30, 40


def region(kind, name, value, rid):
    tag = {"polygonlabels": "poly", "rectanglelabels": "rect", "brushlabels": "brush", "keypointlabels": "kp"}[kind]
    return {"id": rid, "type": kind, "from_name": tag, "to_name": "image", "original_width": WIDTH,
            "original_height": HEIGHT, "image_rotation": 0, "value": {**value, kind: [name]}}


def brush(mask):
    from label_studio_sdk.converter import brush as sdk_brush
    return {"format": "rle", "rle": [int(v) for v in sdk_brush.mask2rle(mask.astype(np.uint8) * 255)]}


def tasks():
    blob = np.zeros((HEIGHT, WIDTH), dtype=bool)
    blob[12:21, 25:36] = True
    blob[15, 28] = False
    ring = np.zeros((HEIGHT, WIDTH), dtype=bool)
    ring[2:9, 3:30] = True
    ring[4:7, 8:12] = False
    frame_a = [
        region("polygonlabels", "road", {"points": [[0.0, 60.3], [99.1, 51.7], [100.0, 100.0], [0.0, 98.9]]}, "a1"),
        region("rectanglelabels", "car", {"x": 20.3, "y": 10.7, "width": 30.25, "height": 25.5, "rotation": 30.0}, "a2"),
        region("brushlabels", "tree", brush(blob), "a3"),
        region("keypointlabels", "car", {"x": 50.0, "y": 50.0, "width": 1.0}, "a4"),
        region("polygonlabels", "tree", {"points": [[13.3, 7.4], [44.4, 16.3], [30.2, 68.6], [8.3, 48.1]]}, "a5"),
    ]
    newest = [
        region("rectanglelabels", "road", {"x": 5.5, "y": 50.2, "width": 90.0, "height": 45.1, "rotation": 0}, "b1"),
        region("brushlabels", "car", brush(ring), "b2"),
        region("rectanglelabels", "tree", {"x": 60.4, "y": 5.3, "width": 20.2, "height": 60.9, "rotation": 347.5}, "b3"),
    ]
    older = [region("polygonlabels", "car", {"points": [[0, 0], [100, 0], [100, 100]]}, "c1")]

    def annotation(aid, result, created, cancelled=False):
        return {"id": aid, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
                "created_at": created, "updated_at": created, "lead_time": 1.0}
    return [
        {"id": 1, "data": {"image": "/data/upload/1/1a2b3c4d-frame_a.png"},
         "annotations": [annotation(11, frame_a, "2026-05-01T10:00:00.000000Z")], "predictions": []},
        {"id": 2, "data": {"image": "/data/local-files/?d=photos/frame_b.png"},
         "annotations": [annotation(21, older, "2026-05-01T09:00:00.000000Z"),
                         annotation(22, newest, "2026-05-02T09:00:00.000000Z"),
                         annotation(23, older, "2026-05-03T09:00:00.000000Z", cancelled=True)], "predictions": []},
    ]


def write_export(out: Path) -> None:
    from label_studio_sdk.converter import Converter
    from label_studio_sdk.converter.utils import convert_annotation_to_yolo_obb

    rng = np.random.default_rng(3)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in ("frame_a", "frame_b"):
        Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(out / "images" / f"{name}.png")
    export = tasks()
    (out / "export.json").write_text(json.dumps(export, indent=1))
    converter = Converter(CONFIG, str(out), download_resources=False)
    # what the SDK lists first for each task, alone: the annotation it converts
    chosen = []
    for task in export:
        first = next(converter.annotation_result_from_task(task))
        chosen.append({**copy.deepcopy(task), "annotations": [a for a in task["annotations"]
                                                             if a["id"] == first["annotation_id"]]})
    (out / "chosen.json").write_text(json.dumps(chosen))
    converter.convert(str(out / "chosen.json"), str(out / "sdk" / "coco"), "COCO", is_dir=False)
    (out / "sdk" / "brush").mkdir(parents=True)
    converter.convert(str(out / "chosen.json"), str(out / "sdk" / "brush"), "BRUSH_TO_PNG", is_dir=False)
    converter.convert(str(out / "export.json"), str(out / "min"), "JSON_MIN", is_dir=False)
    (out / "min" / "result.json").rename(out / "export_min.json")
    (out / "min").rmdir()
    obb = {str(task["id"]): [convert_annotation_to_yolo_obb({**r["value"], "original_width": WIDTH,
                                                             "original_height": HEIGHT}, normalize=False)
                             for r in task["annotations"][0]["result"] if r["type"] == "rectanglelabels"]
           for task in chosen}
    (out / "sdk" / "obb.json").write_text(json.dumps(obb))
    (out / "chosen.json").unlink()


if __name__ == "__main__":
    write_export(Path(sys.argv[1]))
