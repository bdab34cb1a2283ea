"""Small generated datasets in the real CamVid layout, for fast engine tests."""
from pathlib import Path

import cv2
import numpy as np


def make_camvid_like(root: Path, *, counts=None, size=(40, 48), num_classes=11, seed=0) -> Path:
    """train/ trainannot/ val/ valannot/ test/ testannot/ with list files, as in CamVid.

    Labels are a learnable function of the image (the class is the brightest-channel band), with
    some void (11) pixels."""
    counts = counts or {"train": 8, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    root = Path(root)
    lines = {}
    for split, n in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(n):
            label = rng.integers(0, num_classes, size=(size[0] // 8 + 1, size[1] // 8 + 1)).astype(np.uint8)
            label = cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            label[:2, :5] = 11
            lab16 = label.astype(np.int16)
            image = np.stack([(lab16 * 23) % 256, (lab16 * 71) % 256, (lab16 * 131) % 256], -1)
            image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
            name = f"0001TP_{i:06d}.png" if split != "test" else f"Seq05VD_f{i:05d}.png"
            cv2.imwrite(str(root / split / name), image)
            cv2.imwrite(str(root / f"{split}annot" / name), label)
            lines[split].append(f"{split}/{name} {split}annot/{name}")
    lines["trainval"] = lines.get("train", []) + lines.get("val", [])
    for split, ls in lines.items():
        (root / f"camvid_{split}_list.txt").write_text("".join(line + "\n" for line in ls))
    return root
