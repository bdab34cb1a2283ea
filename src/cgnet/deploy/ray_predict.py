"""`cgnet predict --engine ray`: the same command and the same output files as local `cgnet
predict`, run by Ray Data over a cluster (or a Ray started in this process), inputs and outputs
local or in an object store (`cgnet.deploy.ray_store`). Needs the `ray` extra.

The job is a Ray Data dataset of small rows, one per image and one per range of a video's frames
(`--chunk-frames`); no pixels travel through Ray's object store. `map_batches` gives batches of
rows (`--batch-size`) to a pool of actors (`ActorPoolStrategy`), each holding one `Predictor`
loaded once, made by `make_predictor` on the actor's own machine, so it runs the same fastest
accurate path for that CPU as local `predict` (or the GPU an actor was given). An actor reads its
inputs, segments them one at a time and writes the results itself; what it returns is one small
row per input, keyed by the input's location (Ray Data does not keep the order of rows).

An image's three files are written as local predict writes them. A video range's class ids are
written, compressed, as one part file under OUT/.parts/; once every range of a video is there, one
task per video decodes it again in order, blends and encodes OUT/<name>_overlay.mp4 (so the video
is one file, in order, as local predict writes it) and removes the parts. A re-run lists what is
already written and leaves it alone: complete images, finished videos and the finished ranges of
unfinished ones. An input that cannot be read or decoded is one line of OUT/failures.csv; the
rest goes on, and the command ends with an error naming the count.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..checkpoint import load_model
from ..common import CGNetError, InputError, number_type
from ..fileio import check_writable, partial_name, remove_leftover_temp_files
from ..images import VideoStreams, decode_rgb, encode_image, video_fps
from ..pipeline import PIPELINE_DEPTH, prefetch
from ..visualize import blend, colorize, legend, palette_of
from .formats import read_exported_meta
from .predict import _frames
from .predictor import make_predictor, plan_inference
from .ray_store import (Source, gather_inputs, is_uri, local_copy, names_in, open_fs, put_bytes, put_image,
                        read_bytes, read_path, to_uri, upload_file)

RAY_HINT = 'cgnet predict --engine ray needs Ray Data: pip install "cgnet[ray]"'
PARTS = ".parts"            # OUT/.parts/<video name>/<first frame>.npz: a finished range's class ids
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning limit


def require_ray():
    """Ray and Ray Data, or the one line that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CGNetError(RAY_HINT) from None
    return ray


# ---- what one actor does ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What every actor needs to know (sent once, to each actor's constructor)."""
    model: str
    backend: str
    precision: str
    device: str | None
    out: str
    alpha: float
    overlay: bool
    max_pixels: int
    data_root: str | None = None   # frames to verify a fresh export on (a folder every node sees)


def check_pixels(data: bytes, max_pixels: int, where: str) -> None:
    """Refuse an image whose header promises more than `max_pixels` pixels before anything is
    decoded (a decompression bomb: a small file that decodes to gigabytes)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{where}: more pixels than Pillow's decompression-bomb limit") from None
    except Exception:  # noqa: BLE001 - not a format Pillow reads the header of: the decoder decides
        return
    if width * height > max_pixels:
        raise InputError(f"{where}: {width}x{height} is {width * height / 1e6:.1f} megapixels, more than "
                         f"--max-megapixels {max_pixels / 1e6:g}")


def encode_masks(masks: list[np.ndarray]) -> bytes:
    """A video range's class ids, each frame a PNG, in one .npz (a few KB a frame)."""
    return pack_pngs([encode_image("mask.png", m) for m in masks])


def pack_pngs(pngs: list[bytes]) -> bytes:
    """PNG files in one .npz: their sizes and their bytes one after the other."""
    buffer = io.BytesIO()
    np.savez(buffer, sizes=np.array([len(p) for p in pngs], dtype=np.int64),
             data=np.frombuffer(b"".join(pngs), dtype=np.uint8))
    return buffer.getvalue()


def decode_masks(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as part:
        sizes, blob = part["sizes"], part["data"]
    ends = np.cumsum(sizes)
    return [cv2.imdecode(blob[end - size:end], cv2.IMREAD_UNCHANGED) for size, end in zip(sizes, ends)]


class Segmenter:
    """The callable class `map_batches` runs in each actor: the model is loaded once, in
    `__init__`; each call segments a batch of rows and writes their outputs."""

    def __init__(self, job: Job):
        self.job = job
        self.predictor = make_predictor(job.model, backend=job.backend, precision=job.precision, device=job.device,
                                        data_root=job.data_root)
        self.palette = palette_of(self.predictor.meta)
        self.fs, self.base = open_fs(job.out)
        self.scratch = tempfile.mkdtemp(prefix="cgnet-ray-")

    def load(self, row: tuple) -> tuple:
        """(row, RGB pixels, error): an image's row read, checked and decoded (ahead of the model,
        through `prefetch`), or the error that stopped it; a video range's row as it is."""
        uri, _, _, stop = row
        if stop != 0:
            return row, None, None
        try:
            data = read_bytes(uri)
            check_pixels(data, self.job.max_pixels, uri)
            return row, decode_rgb(data, where=uri), None
        except Exception as error:  # noqa: BLE001 - one bad input is one line of failures.csv
            return row, None, error

    def image(self, rgb: np.ndarray, name: str) -> int:
        """An image's three files, as local predict writes them (`images.write_image`'s encoders)."""
        pred = self.predictor.predict(rgb)
        color = colorize(pred, self.palette)
        put_image(self.fs, f"{self.base}/masks/{name}.png", pred)
        put_image(self.fs, f"{self.base}/color/{name}.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        if self.job.overlay:
            put_image(self.fs, f"{self.base}/overlay/{name}.jpg",
                      cv2.cvtColor(blend(rgb, color, self.job.alpha), cv2.COLOR_RGB2BGR))
        return 1

    def frames(self, uri: str, name: str, start: int, stop: int) -> int:
        """Class ids of frames [start, stop) (stop -1: to the end) of a video, as one part file;
        the frames are decoded ahead of the model (`prefetch`), as local predict decodes them."""
        path = local_copy(uri, self.scratch)
        with VideoStreams(path) as streams:
            ok, first = streams.cap.read()
            if not ok or first is None:
                raise InputError(f"cannot read video {uri} (no frame could be decoded)")
            size = (first.shape[1], first.shape[0])  # every frame is made the first frame's size
            if start > 0:
                streams.cap.set(cv2.CAP_PROP_POS_FRAMES, start)
                ok, first = streams.cap.read()
                if not ok:
                    raise InputError(f"{uri}: no frame {start} (the video is shorter than its header says)")
            frames = itertools.islice(_frames(streams.cap, first, size), None if stop < 0 else stop - start)
            with closing(prefetch(frames, depth=PIPELINE_DEPTH, name="cgnet-ray-decode")) as decoded:
                # each frame's class ids compressed as they come: a range holds a few KB a frame
                pngs = [encode_image("mask.png", self.predictor.predict(rgb)) for rgb in decoded]
        put_bytes(self.fs, f"{self.base}/{PARTS}/{name}/{start:010d}.npz", pack_pngs(pngs))
        return len(pngs)

    def __call__(self, batch: dict) -> dict:
        done, errors = [], []
        rows = zip(batch["uri"], batch["name"], batch["start"], batch["stop"])
        with closing(prefetch(rows, self.load, depth=PIPELINE_DEPTH, name="cgnet-ray-decode")) as loaded:
            for (uri, name, start, stop), rgb, failed in loaded:
                try:
                    if failed is not None:
                        raise failed
                    done.append(self.image(rgb, name) if stop == 0 else self.frames(uri, name, int(start), int(stop)))
                    errors.append("")
                except Exception as error:  # noqa: BLE001 - one bad input is one line of failures.csv
                    done.append(0)
                    errors.append(str(error) if isinstance(error, CGNetError) else f"{type(error).__name__}: {error}")
        return {"uri": list(batch["uri"]), "name": list(batch["name"]), "start": list(batch["start"]),
                "stop": list(batch["stop"]), "frames": done, "error": errors}


# ---- videos: ranges, then one file each ----------------------------------------------------------

def probe_video(uri: str) -> int:
    """The frame count a video's header gives (0: unknown); raises InputError for a video that
    does not open."""
    with tempfile.TemporaryDirectory(prefix="cgnet-ray-") as scratch:
        with VideoStreams(local_copy(uri, scratch)) as streams:
            if not streams.cap.isOpened():
                raise InputError(f"cannot read video {uri} (corrupt, or a format this OpenCV build cannot decode)")
            return max(0, int(streams.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))


def frame_ranges(count: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `chunk` frames covering a video of `count` frames by its header; the
    last one runs to the end of the video (stop -1), which may hold more or fewer frames than that."""
    starts = list(range(0, max(count, 1), chunk))
    return [(s, s + chunk) for s in starts[:-1]] + [(starts[-1], -1)]


def part_masks(filesystem, base: str, name: str, starts: list[int]):
    """A video's class ids frame by frame, from its parts in order; each range but the last must
    hold exactly the frames up to the next one."""
    for start, following in zip(starts, starts[1:] + [None]):
        masks = decode_masks(read_path(filesystem, f"{base}/{PARTS}/{name}/{start:010d}.npz"))
        if following is not None and len(masks) != following - start:
            raise InputError(f"{name}: frames {start}-{following - 1} gave {len(masks)} frames (a video shorter "
                             "than its header says)")
        yield from masks


def write_overlay(video: Path, uri: str, partial: Path, masks, alpha: float, palette: np.ndarray) -> int:
    """A video's overlay at `partial` from its frames (decoded ahead, `prefetch`) and their class
    ids `masks`, in order, as local predict encodes it (mp4v, the video's fps and first frame's
    size). Returns the frames written."""
    written = 0
    with VideoStreams(video) as streams:
        ok, frame = streams.cap.read()
        if not ok or frame is None:
            raise InputError(f"cannot read video {uri} (no frame could be decoded)")
        size = (frame.shape[1], frame.shape[0])
        writer = streams.open_writer(partial, "mp4v", video_fps(streams.cap), size)
        if not writer.isOpened():
            raise CGNetError(f"cannot write {partial}: this OpenCV build has no mp4v encoder")
        decoded = prefetch(_frames(streams.cap, frame, size), depth=PIPELINE_DEPTH, name="cgnet-ray-decode")
        with closing(decoded):  # the decoding thread stops before the streams are released
            for rgb in decoded:
                pred = next(masks, None)
                if pred is None:
                    raise InputError(f"{uri}: more frames than were segmented (the video changed?)")
                writer.write(cv2.cvtColor(blend(rgb, colorize(pred, palette), alpha), cv2.COLOR_RGB2BGR))
                written += 1
    if next(masks, None) is not None:
        raise InputError(f"{uri}: fewer frames than were segmented (the video changed?)")
    return written


def assemble_video(uri: str, out: str, name: str, starts: list[int], alpha: float, palette: np.ndarray) -> int:
    """OUT/<name>_overlay.mp4 from a video and its parts, as local predict writes it, written under
    a temporary name (`fileio.partial_name`) and moved into place when complete; the parts are
    removed after. Returns the frames written."""
    filesystem, base = open_fs(out)
    target = f"{base}/{name}_overlay.mp4"
    masks = part_masks(filesystem, base, name, starts)
    with tempfile.TemporaryDirectory(prefix="cgnet-ray-") as scratch:
        local = Path(target if filesystem.type_name == "local" else os.path.join(scratch, f"{name}_overlay.mp4"))
        partial = partial_name(local)
        try:
            written = write_overlay(Path(local_copy(uri, scratch)), uri, partial, masks, alpha, palette)
            upload_file(str(partial), filesystem, target)
        finally:
            partial.unlink(missing_ok=True)
    filesystem.delete_dir(f"{base}/{PARTS}/{name}")
    return written


def remove_empty_parts(out: str) -> None:
    """OUT/.parts once no video has a range left in it."""
    from pyarrow import fs
    filesystem, base = open_fs(out)
    left = filesystem.get_file_info(fs.FileSelector(f"{base}/{PARTS}", allow_not_found=True))
    if not left and filesystem.get_file_info(f"{base}/{PARTS}").type == fs.FileType.Directory:
        filesystem.delete_dir(f"{base}/{PARTS}")


# ---- the driver ----------------------------------------------------------------------------------

def model_meta(plan) -> dict:
    """The metadata (classes, palette) of what the actors will run, read here once."""
    if plan.exported is not None:
        return read_exported_meta(plan.model, plan.exported)
    return load_model(plan.model).meta


@dataclass
class Work:
    """What is left to do, as rows for Ray Data, and what a re-run found already written."""
    rows: list[dict]
    ranges: dict[str, list[int]]     # video name -> the first frame of each of its ranges
    skipped: int                     # images and videos whose outputs were complete
    skipped_ranges: int              # ranges of unfinished videos already segmented


def plan_work(images: list[Source], videos: list[Source], out: str, overlay: bool, chunk: int,
              probe) -> tuple[Work, list[tuple[str, str]]]:
    """The rows of the job and the videos that failed to open. `probe(uris) -> [count or error]`
    gives each video's frame count (run on the cluster: a video in a store is read there)."""
    filesystem, base = open_fs(out)
    written = {sub: names_in(filesystem, f"{base}/{sub}") for sub in ("masks", "color", "overlay")}
    wanted = [("masks", ".png"), ("color", ".png")] + ([("overlay", ".jpg")] if overlay else [])
    rows, skipped = [], 0
    for src in images:
        if all(f"{src.name}{ext}" in written[sub] for sub, ext in wanted):
            skipped += 1
        else:
            rows.append({"uri": src.uri, "name": src.name, "start": 0, "stop": 0})
    finished = names_in(filesystem, base)
    todo = [v for v in videos if f"{v.name}_overlay.mp4" not in finished]
    skipped += len(videos) - len(todo)
    failed, ranges, skipped_ranges = [], {}, 0
    for video, count in zip(todo, probe([v.uri for v in todo]) if todo else []):
        if isinstance(count, str):
            failed.append((video.uri, count))
            continue
        parts = names_in(filesystem, f"{base}/{PARTS}/{video.name}")
        ranges[video.name] = []
        for start, stop in frame_ranges(count, chunk):
            ranges[video.name].append(start)
            if f"{start:010d}.npz" in parts:
                skipped_ranges += 1
            else:
                rows.append({"uri": video.uri, "name": video.name, "start": start, "stop": stop})
    return Work(rows, ranges, skipped, skipped_ranges), failed


def connect(ray, address: str | None, progress: bool) -> None:
    """Join the cluster at `address` ('auto', 'ray://host:port' or 'host:port'), or start a local
    Ray in this process."""
    import logging
    try:
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=True,
                 log_to_driver=progress)
    except Exception as error:  # noqa: BLE001 - Ray raises plain Exception, e.g. a node that did not start in time
        where = f"--address {address}: cannot join the Ray cluster" if address else "cannot start a local Ray"
        raise CGNetError(f"{where} ({str(error).strip().splitlines()[-1]})") from None
    import ray.data
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress


def run_rows(ray, rows: list[dict], job: Job, args) -> list[dict]:
    """The rows through the actor pool; returns one result row per input row, in any order."""
    import ray.data
    gpus = ray.cluster_resources().get("GPU", 0) if job.device != "cpu" else 0
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // args.cpus_per_actor))
    size = args.actors or max(1, int(gpus) if gpus else cpus)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / args.batch_size)))
    results = dataset.map_batches(
        Segmenter, fn_constructor_args=(job,), batch_size=args.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_cpus=args.cpus_per_actor, num_gpus=1 if gpus else 0, batch_format="numpy")
    try:
        return list(results.iter_rows())
    except ray.exceptions.RayError as error:  # e.g. actors that cannot start: cgnet missing on a node
        cause = [line.strip() for line in str(error).splitlines() if line.strip()][-1:] or [type(error).__name__]
        raise CGNetError(f"the Ray job stopped: {cause[0]} (every node needs cgnet installed, the version this "
                         "command runs; files already written are kept, and a re-run skips them)") from None


def assemble_all(ray, videos: list[Source], work: Work, results: list[dict], args, palette) -> tuple[int, list]:
    """Every video whose ranges all succeeded, written as one file each (one Ray task a video)."""
    broken = {r["name"] for r in results if r["error"]}
    task = ray.remote(num_cpus=1)(assemble_video)
    pending = {v.uri: task.remote(v.uri, args.out, v.name, work.ranges[v.name], args.alpha, palette)
               for v in videos if v.name in work.ranges and v.name not in broken}
    frames, failed = 0, []
    for uri, ref in pending.items():
        try:
            frames += ray.get(ref)
        except Exception as error:  # noqa: BLE001 - a video that cannot be written is one failure
            cause = getattr(error, "cause", None) or error
            failed.append((uri, str(cause).splitlines()[-1]))
    return frames, failed


def write_reports(out: str, meta: dict, failed: list[tuple[str, str]]) -> None:
    """OUT/legend.png as local predict writes it; OUT/failures.csv (input, error) when inputs
    failed, removed when none did (a re-run that finished the job leaves none)."""
    filesystem, base = open_fs(out)
    names = meta.get("classes")
    if names:
        picture = legend(names, palette_of(meta)[:len(names)], scale=0.6)
        put_image(filesystem, f"{base}/legend.png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if failed:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["input", "error"])
        writer.writerows(sorted(failed))
        put_bytes(filesystem, f"{base}/failures.csv", text.getvalue().encode())
    elif "failures.csv" in names_in(filesystem, base):
        filesystem.delete_file(f"{base}/failures.csv")


def probe_on_cluster(ray):
    def probe(uris: list[str]) -> list:
        task = ray.remote(num_cpus=0.25)(probe_video)
        refs = [task.remote(u) for u in uris]
        counts = []
        for ref in refs:
            try:
                counts.append(ray.get(ref))
            except Exception as error:  # noqa: BLE001 - a video that does not open is one failure
                counts.append(str(getattr(error, "cause", None) or error).splitlines()[-1])
        return counts
    return probe


def start_job(args: argparse.Namespace) -> tuple:
    """What the driver decides before Ray starts: the inputs (images, videos), the model's
    metadata and the `Job` every actor gets; --out made and made absolute (the actors' working
    folder is not this one). Bad options, inputs or models fail here in one line."""
    if args.compile:
        raise InputError("--compile runs in one process: leave it out with --engine ray")
    if not args.overlap:
        raise InputError("--no-overlap is for --engine local (each Ray actor decodes ahead of its model)")
    for dest, default in RAY_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    plan = plan_inference(args.checkpoint, args.backend, args.precision, args.compile, args.device)
    images, videos = gather_inputs(args.inputs)
    if not is_uri(args.out):
        check_writable(args.out, "--out")
    filesystem, base = open_fs(args.out)
    filesystem.create_dir(base, recursive=True)
    args.out = to_uri(filesystem, base)
    meta = model_meta(plan)
    model = os.path.abspath(plan.model) if os.path.exists(plan.model) else plan.model
    data_root = os.path.abspath(args.data_root) if args.data_root else None
    job = Job(model, args.backend, args.precision, args.device, args.out, args.alpha, args.overlay,
              int(args.max_megapixels * 1e6), data_root)
    return images, videos, meta, job


def run_ray(args: argparse.Namespace) -> int:
    """`cgnet predict --engine ray`: the job on the cluster, then its one summary line; exits
    non-zero (an error naming the count) when inputs failed."""
    ray = require_ray()
    images, videos, meta, job = start_job(args)
    connect(ray, args.address, args.progress)
    try:
        start = time.perf_counter()
        work, failed = plan_work(images, videos, args.out, args.overlay, args.chunk_frames, probe_on_cluster(ray))
        results = run_rows(ray, work.rows, job, args) if work.rows else []
        failed += [(r["uri"], r["error"]) for r in results if r["error"]]
        frames, video_failed = assemble_all(ray, videos, work, results, args, palette_of(meta))
        failed += video_failed
        seconds = time.perf_counter() - start
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    finally:
        ray.shutdown()
    if not is_uri(args.out):  # a worker killed mid-write leaves its temporary file (a live writer's is kept)
        removed = remove_leftover_temp_files(args.out, recursive=True)
        if removed:
            print(f"note: removed {len(removed)} temporary file{'s' * (len(removed) != 1)} left by writes of "
                  f"workers that were lost: {', '.join(os.path.relpath(p, args.out) for p in removed)}")
    remove_empty_parts(args.out)
    write_reports(args.out, meta, failed)
    segmented = sum(r["frames"] for r in results)
    done_images = sum(1 for r in results if not r["error"] and r["stop"] == 0)
    print(f"ray ({nodes} node{'s' * (nodes != 1)}): segmented {segmented} frame{'s' * (segmented != 1)} "
          f"({done_images} images, {frames} video frames written) -> {args.out}: "
          f"{segmented / seconds if seconds > 0 else float('inf'):.2f} frames/s; {work.skipped} complete "
          f"output{'s' * (work.skipped != 1)} and {work.skipped_ranges} video ranges skipped; "
          f"{len(failed)} failure{'s' * (len(failed) != 1)}")
    if failed:
        raise CGNetError(f"{len(failed)} input{'s' * (len(failed) != 1)} failed; see {args.out}/failures.csv")
    return 0


# ---- command line --------------------------------------------------------------------------------

# the Ray engine's options without a default on the command line (so --engine local can refuse
# them when given), and the defaults --engine ray uses
RAY_DEFAULTS = {"address": None, "actors": None, "cpus_per_actor": 1.0, "batch_size": 8, "chunk_frames": 64,
                "max_megapixels": DEFAULT_MAX_PIXELS / 1e6}


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The Ray engine's options of `cgnet predict` (none of them shared with other commands)."""
    group = p.add_argument_group("--engine ray: Ray Data over a cluster (cgnet[ray]; docs/scaling.md)")
    group.add_argument("--address", help="the cluster: auto, ray://HOST:PORT or HOST:PORT (default: a local Ray "
                                         "started in this process)")
    group.add_argument("--actors", type=number_type(int, minimum=1),
                       help="most actors (model copies) at once (default: one per --cpus-per-actor CPUs of the "
                            "cluster, or one per GPU)")
    group.add_argument("--cpus-per-actor", type=number_type(float, positive=True),
                       help=f"CPUs each actor reserves (default {RAY_DEFAULTS['cpus_per_actor']:g})")
    group.add_argument("--batch-size", type=number_type(int, minimum=1),
                       help=f"inputs (images or video ranges) per actor call (default {RAY_DEFAULTS['batch_size']})")
    group.add_argument("--chunk-frames", type=number_type(int, minimum=1),
                       help=f"frames of a video per range (default {RAY_DEFAULTS['chunk_frames']})")
    group.add_argument("--max-megapixels", type=number_type(float, positive=True),
                       help="images with more pixels are failures, refused from their header before decoding "
                            f"(default {RAY_DEFAULTS['max_megapixels']:.1f}, Pillow's limit)")


def refuse_ray_options(args: argparse.Namespace) -> None:
    """--engine local: one error line for an option of the Ray engine that was given."""
    given = [dest for dest in RAY_DEFAULTS if getattr(args, dest, None) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise InputError(f"{option} is for --engine ray (this run is --engine local)")
