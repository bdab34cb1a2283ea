"""Pictures of predictions: class colours, overlays, the inverse of the normalisation, and column
titles and class legends drawn into pictures (`titled_with_legend`, `legend`)."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def default_palette(num_classes: int) -> list[list[int]]:
    """A fixed, well-spread RGB colour per class, for models whose checkpoint names none."""
    return [[(37 * i) % 256, (97 * i + 80) % 256, (151 * i + 160) % 256] for i in range(num_classes)]


def palette_of(meta: dict) -> np.ndarray:
    """The model's palette; the default palette when the checkpoint stores none (original files)."""
    palette = meta.get("palette")
    return np.asarray(palette if palette is not None else default_palette(256), dtype=np.uint8)


def colorize(label: np.ndarray, palette) -> np.ndarray:
    """H x W class ids -> H x W x 3 uint8 RGB; ids without a colour (ignore) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return np.take(lut, label, axis=0)  # the same as lut[label], in about a third of its time


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * image + alpha * colours, rounded, uint8."""
    return cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)


def denormalize(image: torch.Tensor, spec: dict) -> np.ndarray:
    """Inverse of preprocess.normalize_: 3 x H x W float -> H x W x 3 uint8 RGB."""
    mean = torch.tensor(spec["mean"])[:, None, None]
    std = torch.tensor(spec["std"])[:, None, None]
    x = (image.cpu().float() * std + mean) / spec["value_scale"]
    if spec["channel_order"] == "BGR":
        x = x.flip(0)
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


# ---- titles and legends drawn into pictures ------------------------------------------------

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, PAPER, EDGE = (0, 0, 0), (255, 255, 255), (128, 128, 128)  # text, background, swatch outline (RGB)


def font_scale(width: int) -> float:
    """OpenCV's font scale for a picture `width` pixels wide: width / 1600, within 0.4..1.0."""
    return min(1.0, max(0.4, width / 1600))


def line_metrics(scale: float) -> tuple[int, int, int]:
    """(text height above the baseline, line height with the descent, padding) at `scale`: a line
    is as tall as 'Ag' drawn at that scale, the padding half of it (at least 2 pixels)."""
    (_, above), descent = cv2.getTextSize("Ag", FONT, scale, 1)
    line = above + descent
    return above, line, max(2, line // 2)


def title_band(titles: list[str], width: int, scale: float) -> np.ndarray:
    """A white band `width` pixels wide, one line tall plus padding above and below, with each
    title centred over its column (the width split evenly). Returns band_h x width x 3 uint8 RGB."""
    above, line, pad = line_metrics(scale)
    band = np.full((line + 2 * pad, width, 3), PAPER, dtype=np.uint8)
    column = width / len(titles)
    for i, title in enumerate(titles):
        text_w = cv2.getTextSize(title, FONT, scale, 1)[0][0]
        x = int(i * column + max(0, (column - text_w) // 2))
        cv2.putText(band, title, (x, pad + above), FONT, scale, INK, 1, cv2.LINE_AA)
    return band


def legend_layout(names: list[str], width: int | None, scale: float) -> dict:
    """Where `legend` puts each entry: cells of one line's height, each a square swatch (`size`),
    the padding, the name and twice the padding; as many cells a row as fit in `width` (one column
    when `width` is None), rows `size + pad` apart, `pad` around all.

    Returns:
        dict with size (the swatch side), pad, cell (a cell's width), columns, width, height
        and positions: the (x, y) of each swatch's top-left pixel.
    """
    _, size, pad = line_metrics(scale)
    cell = size + pad + max(cv2.getTextSize(n, FONT, scale, 1)[0][0] for n in names) + 2 * pad
    columns = 1 if width is None else max(1, min(len(names), (width - pad) // cell))
    rows = -(-len(names) // columns)
    positions = [(pad + (i % columns) * cell, pad + (i // columns) * (size + pad)) for i in range(len(names))]
    return {"size": size, "pad": pad, "cell": cell, "columns": columns, "width": width or pad + cell,
            "height": pad + rows * (size + pad), "positions": positions}


def legend(names: list[str], colors, width: int | None = None, scale: float = 0.5) -> np.ndarray:
    """A class legend: each name beside a swatch of its colour (outlined in grey, so a white class
    shows), laid out by `legend_layout`. Returns height x width x 3 uint8 RGB on white."""
    layout = legend_layout(names, width, scale)
    above, size, pad = line_metrics(scale)
    picture = np.full((layout["height"], layout["width"], 3), PAPER, dtype=np.uint8)
    for name, color, (x, y) in zip(names, colors, layout["positions"]):
        picture[y:y + size, x:x + size] = np.asarray(color, dtype=np.uint8)
        cv2.rectangle(picture, (x, y), (x + size - 1, y + size - 1), EDGE, 1)
        cv2.putText(picture, name, (x + size + pad, y + above), FONT, scale, INK, 1, cv2.LINE_AA)
    return picture


def titled_with_legend(picture: np.ndarray, titles: list[str], names: list[str], colors) -> np.ndarray:
    """`picture` (H x W x 3 RGB, equal columns side by side) with `titles` over its columns and a
    legend of `names` in `colors` under it, the text sized by `font_scale(W)`. Returns
    (title band + H + legend) x W x 3 uint8 RGB; the picture's own pixels are unchanged."""
    width = picture.shape[1]
    scale = font_scale(width)
    return np.concatenate([title_band(titles, width, scale), picture, legend(names, colors, width, scale)], 0)
