"""`cgnet predict`: segment images, folders, glob patterns and videos with any backend.

For each image it writes OUT/masks/<name>.png (class ids), OUT/color/<name>.png (palette colours)
and OUT/overlay/<name>.jpg (image blended with the colours); for each video OUT/<name>_overlay.mp4;
and once OUT/legend.png: the class names beside their colours. Images are read in the frame viewers
show (a phone photo's EXIF orientation applied), so masks and overlays are that way up and that size."""

from __future__ import annotations

import argparse
import glob
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..common import IMAGE_EXTS, VIDEO_EXTS, CGNetError, InputError, MissingFileError, number_type
from ..fileio import check_writable
from ..images import read_rgb
from ..visualize import blend, colorize, default_palette, legend
from .predictor import add_predictor_args, make_predictor

DEFAULT_FPS = 25.0


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """Image files and video files named by `inputs` (files, folders, glob patterns), in order,
    each once. Raises FileNotFoundError for an input that names nothing."""
    images: list[Path] = []
    videos: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path, explicit: bool) -> None:
        key = path.resolve()
        if key in seen:
            return
        if is_image(path):
            images.append(path)
        elif is_video(path):
            videos.append(path)
        elif explicit:
            raise InputError(f"{path}: not a supported image ({' '.join(IMAGE_EXTS)}) "
                             f"or video ({' '.join(VIDEO_EXTS)})")
        else:
            return  # a glob or folder also matching other files: leave those alone
        seen.add(key)

    for text in inputs:
        if any(c in text for c in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise MissingFileError(f"{text}: no files match this pattern")
            for m in map(Path, matches):
                if m.is_dir():
                    for p in _folder_images(m):
                        add(p, explicit=False)
                elif m.is_file():
                    add(m, explicit=False)
            continue
        path = Path(text)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise MissingFileError(f"{text}: no images ({' '.join(IMAGE_EXTS)}) in this folder")
            for p in found:
                add(p, explicit=False)
        elif path.is_file():
            add(path, explicit=True)
        else:
            raise MissingFileError(f"{text}: no such file or folder")
    if not images and not videos:
        raise MissingFileError(f"no images or videos found in {' '.join(inputs)} (images: "
                                f"{' '.join(IMAGE_EXTS)}; videos: {' '.join(VIDEO_EXTS)})")
    return images, videos


def output_names(paths: list[Path]) -> list[str]:
    """One file name (without suffix) per path: its stem, or <parent>_<stem> where stems collide,
    with a counter added if even that is not unique."""
    counts = Counter(p.stem for p in paths)
    used: set[str] = set()
    names = []
    for p in paths:
        name = p.stem if counts[p.stem] == 1 else f"{p.parent.resolve().name or 'root'}_{p.stem}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def palette_of(meta: dict) -> np.ndarray:
    """The model's palette; the default palette when the checkpoint stores none (original files)."""
    palette = meta.get("palette")
    return np.asarray(palette if palette is not None else default_palette(256), dtype=np.uint8)


def write_legend(path: Path, meta: dict) -> None:
    """The colours of the colour masks and overlays beside their class names, one per row (none
    for a model whose metadata names no classes)."""
    names = meta.get("classes")
    if names:
        _write(path, cv2.cvtColor(legend(names, palette_of(meta)[:len(names)], scale=0.6), cv2.COLOR_RGB2BGR))


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise InputError(f"cannot write {path}")


def predict_images(predictor, images: list[Path], out: Path, *, alpha: float = 0.5, overlay: bool = True,
                   progress: bool = True) -> list[str]:
    """Masks, colour masks and (optionally) overlays for `images`; returns the names used."""
    names = output_names(images)
    subs = ("masks", "color") + (("overlay",) if overlay else ())
    if images:
        for sub in subs:
            (out / sub).mkdir(parents=True, exist_ok=True)
    palette = palette_of(predictor.meta)
    for path, name in tqdm(list(zip(images, names)), desc="images", unit="img", disable=not progress,
                           dynamic_ncols=True):
        image = read_rgb(path)
        pred = predictor.predict(image)
        color = colorize(pred, palette)
        _write(out / "masks" / f"{name}.png", pred)
        _write(out / "color" / f"{name}.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        if overlay:
            _write(out / "overlay" / f"{name}.jpg", cv2.cvtColor(blend(image, color, alpha), cv2.COLOR_RGB2BGR))
    return names


def video_fps(cap) -> float:
    """The frame rate an opened cv2.VideoCapture reports, or DEFAULT_FPS when it reports none."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS


class VideoStreams:
    """A video being read (`cap`) and, once opened, the one being written (`writer`); both are
    released when the `with` block ends, however it ends."""

    def __init__(self, path: Path):
        self.cap = cv2.VideoCapture(str(path))
        self.writer = None

    def open_writer(self, path: Path, codec: str, fps: float, size: tuple[int, int]):
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        return self.writer

    def __enter__(self) -> "VideoStreams":
        return self

    def __exit__(self, *exc) -> None:
        self.cap.release()
        if self.writer is not None:
            self.writer.release()


def predict_video(predictor, path: Path, out_file: Path, *, alpha: float = 0.5, progress: bool = True) -> int:
    """Overlay video of `path` (mp4v, same fps and size) at `out_file`; returns the frames written."""
    with VideoStreams(path) as streams:
        cap = streams.cap
        if not cap.isOpened():
            raise InputError(f"cannot read video {path} (corrupt, or a format this OpenCV build cannot decode)")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise InputError(f"cannot read video {path} (no frame could be decoded)")
        fps = video_fps(cap)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        height, width = frame.shape[:2]
        out_file.parent.mkdir(parents=True, exist_ok=True)
        writer = streams.open_writer(out_file, "mp4v", fps, (width, height))
        if not writer.isOpened():
            raise CGNetError(f"cannot write {out_file}: this OpenCV build has no mp4v encoder")
        palette = palette_of(predictor.meta)
        frames = 0
        with tqdm(total=count if count > 0 else None, desc=path.name, unit="frame", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            while ok and frame is not None:
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                if frame.shape[:2] != (height, width):
                    frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                color = colorize(predictor.predict(rgb), palette)
                writer.write(cv2.cvtColor(blend(rgb, color, alpha), cv2.COLOR_RGB2BGR))
                frames += 1
                bar.update(1)
                ok, frame = cap.read()
        return frames


# ---- command line --------------------------------------------------------------------------

def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their images), glob patterns (quote them; ** recurses) "
                        "and videos (" + " ".join(VIDEO_EXTS) + ")")
    add_predictor_args(p)
    p.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    p.add_argument("--alpha", type=number_type(float, minimum=0, maximum=1), default=0.5, help="weight of the colours in overlays (default 0.5)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false",
                   help="write masks and colour masks only (videos always get their overlay video)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def cmd_predict(args: argparse.Namespace) -> int:
    images, videos = collect_inputs(args.inputs)
    check_writable(args.out, "--out")
    predictor = make_predictor(args.checkpoint, backend=args.backend, precision=args.precision, device=args.device,
                               data_root=args.data_root, log=print, compile=args.compile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_legend(out / "legend.png", predictor.meta)
    predict_images(predictor, images, out, alpha=args.alpha, overlay=args.overlay, progress=args.progress)
    frames = 0
    for video, name in zip(videos, output_names(videos)):
        frames += predict_video(predictor, video, out / f"{name}_overlay.mp4", alpha=args.alpha,
                                progress=args.progress)
    parts = [f"{len(images)} image{'s' * (len(images) != 1)}"]
    if videos:
        parts.append(f"{frames} frame{'s' * (frames != 1)} from {len(videos)} video{'s' * (len(videos) != 1)}")
    print(f"segmented {' and '.join(parts)} with {predictor.backend} ({predictor.precision}) -> {out}")
    return 0
