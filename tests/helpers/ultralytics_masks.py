"""A small YOLO segmentation dataset and the semantic masks ultralytics' own code draws from it,
to check `cgnet data import --from yolo` against the tool.

`write_dataset(out)` writes out/data.yaml, out/images/{train,val}/, out/labels/{train,val}/
(random overlapping polygons with fractional corners, three classes, one image without a label
file) and out/expected/<split>/<name>.png: the mask `PolygonSemanticDataset.load_mask` returns
for each image (its own method, on the labels as ultralytics' `verify_image_label` reads them,
the background class set by its `add_polygon_background`). It needs ultralytics (`pip install
torch==2.14.1 torchvision==0.29.1 ultralytics` in a venv of its own); tests/data/ultralytics_yolo/
holds its output, made with `python tests/helpers/ultralytics_masks.py tests/data/ultralytics_yolo`
(ultralytics 8.4.190).
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

NAMES = ["road", "car", "tree"]
HEIGHT, WIDTH = 30, 40


def write_dataset(out: Path) -> None:
    from ultralytics.data.dataset import PolygonSemanticDataset
    from ultralytics.data.utils import add_polygon_background, verify_image_label

    rng = np.random.default_rng(11)
    data = {"names": dict(enumerate(NAMES)), "nc": len(NAMES)}
    add_polygon_background(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n"
                                   + "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES)))
    for split, count in (("train", 3), ("val", 2)):
        for k in range(count):
            name = f"{split}_{k}"
            image = out / "images" / split / f"{name}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(image)
            label = out / "labels" / split / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            if split == "val" and k == 1:
                lines = []   # no label file: no objects
            else:
                lines = []
                for _ in range(6):
                    centre = rng.uniform(0.15, 0.85, 2)
                    angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 8)))
                    radius = rng.uniform(0.05, 0.4)
                    pts = np.clip(centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1), 0, 1)
                    lines.append(f"{rng.integers(0, 3)} " + " ".join(f"{v:.5f}" for v in pts.ravel()))
                label.write_text("\n".join(lines) + "\n")
            result = verify_image_label((str(image), str(label), "", False, len(NAMES), 0, 0, False))
            labels = {"cls": result[1][:, 0:1], "segments": result[3]}
            fake = SimpleNamespace(labels=[labels], bg_class_idx=data["bg_class_idx"], data=data)
            mask = PolygonSemanticDataset.load_mask(fake, 0, (HEIGHT, WIDTH))
            expected = out / "expected" / split / f"{name}.png"
            expected.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(expected)


if __name__ == "__main__":
    write_dataset(Path(sys.argv[1]))
