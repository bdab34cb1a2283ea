"""Data-loader throughput (images/s) of the CamVid training pipeline at the paper's 360x360 crops.

    python -m benchmarks.loader_throughput [--root ../shared/datasets/CamVid] [--images 200]

Reads the real CamVid train+val list with 0, 1 and 2 loader workers (decode, validate, scale,
normalise, pad, crop, flip) and prints images/s with the ratio to 0 workers measured in the same
run, beside what training consumes (about 5-8 images/s on a 2-core CPU). Then the in-memory loader
of `cgnet train --loader memory` on the CPU (`MemoryTrainSet`: decoded once, not timed; batches
built in 0, 1 and 2 background threads, `--threads`), with the same ratio.
"""
import argparse
import itertools
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cgnet.data.catalog import CAMVID
from cgnet.data.listset import MemoryTrainSet, SegDataset, seed_worker
from cgnet.preprocess import make_spec


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "CamVid"))
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2], help="the in-memory loader's threads")
    args = p.parse_args()
    ds = SegDataset(args.root, CAMVID.list_file("trainval"), CAMVID, make_spec("standard"), train=True,
                    crop=(360, 360))
    base = None
    print(f"{len(ds)} images in the list; timing {args.images} per setting, batch {args.batch}")
    print(f"{'workers':>8}{'images/s':>10}{'ratio':>8}")
    for w in args.workers:
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=w, drop_last=True,
                            worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0))
        batches = args.images // args.batch
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        t0 = time.perf_counter()
        n = sum(len(b[0]) for b in itertools.islice(it, batches))
        rate = n / (time.perf_counter() - t0)
        base = base or rate
        print(f"{w:>8}{rate:>10.1f}{rate / base:>8.2f}", flush=True)
    memory = MemoryTrainSet(ds, torch.device("cpu"), progress=False)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    groups = [order[b * args.batch:(b + 1) * args.batch] for b in range(args.images // args.batch)]
    print(f"{'memory, threads':>16}{'images/s':>10}{'ratio':>8}")
    for threads in args.threads:
        t0 = time.perf_counter()
        n = sum(len(images) for images, _ in memory.batches(groups, epoch=0, threads=threads))
        rate = n / (time.perf_counter() - t0)
        print(f"{threads:>16}{rate:>10.1f}{rate / base:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
