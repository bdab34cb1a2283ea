"""Tiny training runs through the command line, for the train and evaluate tests."""
import json

import torch

from cgnet.cli import main

TINY = ["--dataset", "camvid", "--train-split", "train", "--val-split", "val", "--blocks", "2", "2",
        "--crop", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress",
        "--val-every", "1", "--no-compile", "--amp", "off"]
# compile and precision not left to the CPU: compiling every run would take minutes, and bf16 (the
# default where the CPU computes in it) would make the runs' numbers depend on the machine


def train(camvid, out, *extra):
    assert main(["train", "--data-root", str(camvid), "--out", str(out), *TINY, *extra]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    state = torch.load(out / "last.pt", weights_only=True)
    return log, state


def same_weights(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
