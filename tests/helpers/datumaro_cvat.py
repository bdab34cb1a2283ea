"""CVAT's two exports of one small task, written by datumaro (the library CVAT exports with), to
check `cgnet data import --from cvat` against the tool's own code.

`write_exports(out)` writes out/cvat_for_images/ ("CVAT for images 1.1": annotations.xml and
images/) and out/segmentation_mask/ ("Segmentation mask 1.1", made as CVAT makes it: polygons
and boxes to masks, instance segments merged, then datumaro's voc_segmentation exporter with
CVAT's colour map, background first). It needs datumaro (`pip install datumaro` in a venv of its
own: it pins other versions of opencv and Pillow); tests/data/datumaro_cvat/ holds its output,
made with `python tests/helpers/datumaro_cvat.py tests/data/datumaro_cvat` (datumaro 1.13.12).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

LABELS = {"road": (140, 120, 240), "car": (250, 50, 83), "tree": (51, 221, 255)}
HEIGHT, WIDTH = 30, 40


def task_items():
    """Two frames: fractional polygons, a fractional box, a polyline and points (no area), a
    binary mask, overlaps decided by z_order against the file order."""
    import datumaro as dm
    from datumaro.components.media import Image

    rng = np.random.default_rng(7)
    blob = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    blob[12:21, 25:36] = 1
    blob[15, 28] = 0
    road, car, tree = 0, 1, 2
    frame_a = [
        dm.Polygon([5.3, 2.2, 17.8, 4.9, 12.1, 20.6, 3.3, 14.4], label=tree, z_order=1, id=1),
        dm.Polygon([0.0, 18.4, 39.6, 15.2, 39.6, 29.7, 0.0, 29.7], label=road, z_order=0, id=2),
        dm.Mask(blob, label=car, z_order=2, id=3),
        dm.PolyLine([1.0, 1.0, 30.0, 2.0, 35.5, 20.5], label=road, z_order=5, id=4),
        dm.Points([20.0, 5.0], label=car, id=5),
    ]
    frame_b = [
        dm.Bbox(2.5, 3.5, 17.75, 14.25, label=car, id=1),
        dm.Polygon([10.5, 10.5, 30.2, 12.1, 22.7, 26.9], label=road, id=2),
        dm.Bbox(30.3, 1.6, 6.1, 25.2, label=tree, z_order=-1, id=3),
    ]
    return [dm.DatasetItem(id=name, media=Image.from_numpy(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)),
                           annotations=anns)
            for name, anns in (("frame_a", frame_a), ("frame_b", frame_b))]


def write_exports(out: Path) -> None:
    import datumaro as dm

    categories = {dm.AnnotationType.label: dm.LabelCategories.from_iterable(LABELS)}
    dataset = dm.Dataset.from_iterable(task_items(), categories=categories)
    dataset.export(str(out / "cvat_for_images"), "cvat", save_media=True)
    masks = dm.Dataset.from_iterable(task_items(), categories=categories)
    for transform in ("polygons_to_masks", "boxes_to_masks", "merge_instance_segments"):
        masks.transform(transform)
    colormap = {"background": [(0, 0, 0), [], []], **{n: [c, [], []] for n, c in LABELS.items()}}
    masks.export(str(out / "segmentation_mask"), "voc_segmentation", save_media=True, apply_colormap=True,
                 label_map=colormap)


if __name__ == "__main__":
    write_exports(Path(sys.argv[1]))
