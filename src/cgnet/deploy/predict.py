"""`cgnet predict`: segment images, folders, glob patterns and videos with any backend.

For each image it writes OUT/masks/<name>.png (class ids), OUT/color/<name>.png (palette colours)
and OUT/overlay/<name>.jpg (image blended with the colours); for each video OUT/<name>_overlay.mp4;
and once OUT/legend.png: the class names beside their colours. Images are read in the frame viewers
show (a phone photo's EXIF orientation applied), so masks and overlays are that way up and that size.

Decoding, the model and the overlay/encoding overlap: a thread decodes the next images or frames
(`prefetch`), the calling thread runs the model (the thread that built it: compiled and CUDA-graph
paths stay on one thread; OpenVINO keeps several frames in flight, `Predictor.predict_stream`), and
another thread colours, blends, encodes and writes (`OrderedWorker`), joined by bounded queues of
`PIPELINE_DEPTH` items. Each stage is one thread, so outputs are
written in input order and are the same files the stages give one after the other
(`overlap=False`). An error in any stage ends the run at that item: the items before it are
written, none after it, and a video's overlay is written under a temporary name and renamed only
when complete."""

from __future__ import annotations

import argparse
import glob
import os
import time
from collections import Counter
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..common import IMAGE_EXTS, VIDEO_EXTS, CGNetError, InputError, MissingFileError, number_type
from ..fileio import check_writable, partial_name
from ..images import VideoStreams, read_rgb, video_fps, write_image
from ..pipeline import PIPELINE_DEPTH, OrderedWorker, prefetch
from ..visualize import blend, colorize, legend, palette_of
from .predictor import add_predictor_args, make_predictor


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


def write_legend(path: Path, meta: dict) -> None:
    """The colours of the colour masks and overlays beside their class names, one per row (none
    for a model whose metadata names no classes)."""
    names = meta.get("classes")
    if names:
        write_image(path, cv2.cvtColor(legend(names, palette_of(meta)[:len(names)], scale=0.6), cv2.COLOR_RGB2BGR))


def predict_images(predictor, images: list[Path], out: Path, *, alpha: float = 0.5, overlay: bool = True,
                   progress: bool = True, overlap: bool = True) -> list[str]:
    """Masks, colour masks and (optionally) overlays for `images`; returns the names used.
    Decoding, the model and writing overlap (see the module's docstring) unless overlap=False."""
    names = output_names(images)
    subs = ("masks", "color") + (("overlay",) if overlay else ())
    if images:
        for sub in subs:
            (out / sub).mkdir(parents=True, exist_ok=True)
    palette = palette_of(predictor.meta)

    def write(entry: tuple[str, np.ndarray, np.ndarray]) -> None:
        name, image, pred = entry
        color = colorize(pred, palette)
        write_image(out / "masks" / f"{name}.png", pred)
        write_image(out / "color" / f"{name}.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        if overlay:
            write_image(out / "overlay" / f"{name}.jpg", cv2.cvtColor(blend(image, color, alpha), cv2.COLOR_RGB2BGR))

    decoded = prefetch(zip(images, names), lambda job: (job[1], read_rgb(job[0])), threads=int(overlap),
                       depth=PIPELINE_DEPTH, name="cgnet-predict-decode")
    # one image: `predict`, so the stream's model (OpenVINO: a second compile) is not made for it
    predicted = predicted_with(predictor, decoded, lambda entry: entry[1], overlap and len(images) > 1)
    with closing(decoded), OrderedWorker(write, overlap=overlap, name="cgnet-predict-write") as writer, \
            tqdm(total=len(images), desc="images", unit="img", disable=not progress, dynamic_ncols=True) as bar, \
            closing(predicted):
        for (name, image), pred in predicted:
            writer.put((name, image, pred))
            bar.update(1)
    return names


def predicted_with(predictor, items: Iterable, image_of: Callable, stream: bool = True) -> Iterator:
    """(item, H x W uint8 class ids of image_of(item)) for each of `items`, in order: with stream,
    through `predictor.predict_stream` (several frames in flight where the runtime allows), each
    item held until its class ids come back; else `predict`, one after the other. An error at
    item k is raised after the items before it."""
    if not stream:
        for item in items:
            yield item, predictor.predict(image_of(item))
        return
    held: deque = deque()

    def images() -> Iterator[np.ndarray]:
        for item in items:
            held.append(item)
            yield image_of(item)
    stream = iter(predictor.predict_stream(images()))
    try:
        for pred in stream:
            yield held.popleft(), pred
    finally:
        getattr(stream, "close", lambda: None)()  # in-flight frames finish before the inputs are released


def input_frames(images: list[Path], videos: list[Path]) -> Callable[[int], tuple[list[np.ndarray], str]]:
    """What `make_predictor` verifies a fresh export on when the checkpoint's dataset is not on
    disk: count(n) -> up to n of the frames being predicted (images evenly spaced, else frames
    evenly spaced through the first video) and what they are. Read only when an export is made."""
    def frames(count: int) -> tuple[list[np.ndarray], str]:
        if images:
            picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
            chosen = [read_rgb(images[i]) for i in sorted(set(picks))]
            return chosen, f"{len(chosen)} of the {len(images)} images being predicted"
        if not videos:
            return [], ""
        chosen = []
        with VideoStreams(videos[0]) as streams:
            total = int(streams.cap.get(cv2.CAP_PROP_FRAME_COUNT)) or count
            for index in sorted(set(np.linspace(0, max(total - 1, 0), count).round().astype(int))):
                streams.cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
                ok, frame = streams.cap.read()
                if ok and frame.ndim == 3:
                    chosen.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        return chosen, f"{len(chosen)} frames of {videos[0].name}, the video being predicted"
    return frames


def _frames(cap, frame: np.ndarray, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """RGB frames of an opened video from `frame` (already read) on, each made BGR and
    `size` (width, height) first."""
    while frame is not None:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.shape[1::-1] != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        ok, frame = cap.read()
        if not ok:
            return


def predict_video(predictor, path: Path, out_file: Path, *, alpha: float = 0.5, progress: bool = True,
                  overlap: bool = True) -> int:
    """Overlay video of `path` (mp4v, same fps and size) at `out_file`; returns the frames written.
    Decoding, the model and encoding overlap (see the module's docstring) unless overlap=False;
    `out_file` appears only when the whole video is written."""
    partial = partial_name(out_file)
    try:
        with VideoStreams(path) as streams:
            cap = streams.cap
            if not cap.isOpened():
                raise InputError(f"cannot read video {path} (corrupt, or a format this OpenCV build cannot decode)")
            ok, frame = cap.read()
            if not ok or frame is None:
                raise InputError(f"cannot read video {path} (no frame could be decoded)")
            fps = video_fps(cap)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            size = (frame.shape[1], frame.shape[0])
            out_file.parent.mkdir(parents=True, exist_ok=True)
            writer = streams.open_writer(partial, "mp4v", fps, size)
            if not writer.isOpened():
                raise CGNetError(f"cannot write {out_file}: this OpenCV build has no mp4v encoder")
            palette = palette_of(predictor.meta)

            def encode(entry: tuple[np.ndarray, np.ndarray]) -> None:
                rgb, pred = entry
                writer.write(cv2.cvtColor(blend(rgb, colorize(pred, palette), alpha), cv2.COLOR_RGB2BGR))

            frames = 0
            decoded = prefetch(_frames(cap, frame, size), threads=int(overlap), depth=PIPELINE_DEPTH,
                                name="cgnet-predict-decode")
            predicted = predicted_with(predictor, decoded, lambda rgb: rgb, overlap)
            # both threads stop (the encoder after the frames put) before the streams are released
            with tqdm(total=count if count > 0 else None, desc=path.name, unit="frame", disable=not progress,
                      dynamic_ncols=True, leave=False) as bar, closing(decoded), \
                    OrderedWorker(encode, overlap=overlap, name="cgnet-predict-encode") as encoder, closing(predicted):
                for rgb, pred in predicted:
                    encoder.put((rgb, pred))
                    frames += 1
                    bar.update(1)
        os.replace(partial, out_file)
    finally:
        partial.unlink(missing_ok=True)
    return frames


# ---- command line --------------------------------------------------------------------------

def add_local_args(p: argparse.ArgumentParser) -> None:
    """`cgnet predict`'s options of the local engine (the command's options: `predict_command`)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their images), glob patterns (quote them; ** recurses) "
                        "and videos (" + " ".join(VIDEO_EXTS) + ")")
    add_predictor_args(p)
    p.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    p.add_argument("--alpha", type=number_type(float, minimum=0, maximum=1), default=0.5, help="weight of the colours in overlays (default 0.5)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false",
                   help="write masks and colour masks only (videos always get their overlay video)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                   help="decode, run the model and encode at once, in three threads (default); --no-overlap: "
                        "one after the other (same files)")


def run_local(args: argparse.Namespace) -> int:
    """`cgnet predict` in this process (--engine local)."""
    images, videos = collect_inputs(args.inputs)
    check_writable(args.out, "--out")
    predictor = make_predictor(args.checkpoint, backend=args.backend, precision=args.precision, device=args.device,
                               data_root=args.data_root, log=print, compile=args.compile,
                               inputs=input_frames(images, videos))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        predict_images(predictor, images, out, alpha=args.alpha, overlay=args.overlay, progress=args.progress,
                       overlap=args.overlap)
        image_s, start = time.perf_counter() - start, time.perf_counter()
        frames = 0
        for video, name in zip(videos, output_names(videos)):
            frames += predict_video(predictor, video, out / f"{name}_overlay.mp4", alpha=args.alpha,
                                    progress=args.progress, overlap=args.overlap)
        video_s = time.perf_counter() - start
    finally:
        predictor.close()
    write_legend(out / "legend.png", predictor.meta)  # once everything else is written: a run that failed leaves none
    parts = [f"{len(images)} image{'s' * (len(images) != 1)}"]
    paces = [pace(len(images), image_s, "images")] if images else []
    if videos:
        parts.append(f"{frames} frame{'s' * (frames != 1)} from {len(videos)} video{'s' * (len(videos) != 1)}")
        paces.append(pace(frames, video_s, "frames"))
    print(f"segmented {' and '.join(parts)} with {predictor.backend} ({predictor.precision}) -> {out}: "
          f"{', '.join(paces)}")
    return 0


def pace(count: int, seconds: float, unit: str) -> str:
    """'12.34 frames/s': `count` items over `seconds` (from the first read to the last write)."""
    return f"{count / seconds if seconds > 0 else float('inf'):.2f} {unit}/s"
