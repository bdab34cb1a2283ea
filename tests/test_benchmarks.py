"""The benchmark scripts the GPU sessions run, on the CPU at a tiny size: they must still run
against the engine they import, and their figures must follow from their raw timings (read from
their --json output, the arithmetic done again here; the printed table shows the same figures)."""
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cgnet import CGNet, make_meta, save_checkpoint
from cgnet.common import cpu_has_native_bf16
from cgnet.engine.config import cpu_amp_default
from cgnet.preprocess import make_spec

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # each runs a script in a fresh interpreter (imports, a generated tree, steps)


def run_script(*argv: str, timeout: float = 1800) -> str:  # a hang guard, for a busy machine and a cold cache
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_cityscapes_projection_on_a_generated_tree(tmp_path):
    out = run_script("-m", "benchmarks.cityscapes_projection", "--device", "cpu", "--images", "4", "--size", "64", "128",
                     "--warmup", "1", "--iters", "2", "--json", str(tmp_path / "figures.json"), "--",
                     "--crop", "48", "48", "--batch-size", "2", "--blocks", "2", "2")
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert (figures["crop"], figures["batch"], figures["iters"], figures["warmup_steps"]) == ([48, 48], 2, 2, 1)
    assert len(figures["step_s"]) == 2 and figures["pipeline_s"] > 0 and min(figures["step_s"]) > 0
    # 300 epochs of the 2,975 Cityscapes train images in steps of 2: 1,487 steps, 2,974 images an epoch
    assert (figures["epochs"], figures["train_images"], figures["steps_per_epoch"]) == (300, 2975, 1487)
    rates = {"pipeline (loader + step)": 2 * 2 / figures["pipeline_s"],  # iters x batch over the timed seconds
             "step alone (median)": 2 / statistics.median(figures["step_s"])}
    assert [row["measured"] for row in figures["rows"]] == list(rates)
    lines = out.splitlines()
    for row in figures["rows"]:
        rate = rates[row["measured"]]
        assert row["images_per_s"] == pytest.approx(rate, rel=1e-12)
        assert row["s_per_step"] == pytest.approx(2 / rate, rel=1e-12)
        assert row["projection_hours"] == pytest.approx(300 * 2974 / rate / 3600, rel=1e-12)
        # the printed table shows these figures, rounded
        assert (f"{row['measured']:<34}{row['images_per_s']:>9.1f}{row['s_per_step']:>9.3f}"
                f"{row['projection_hours']:>15.2f}") in lines
    assert (f"device: {figures['device']}; torch {figures['torch']}; step: {figures['step']}; loader: "
            f"{figures['loader']}; crop 48x48, batch 2, amp {figures['amp']}") in lines
    assert "PROJECTION, not a training run: 300 epochs x 1487 steps of 2" in out


def test_gpu_latency_dry_run_ratios(tmp_path):
    out = run_script("-m", "benchmarks.gpu_latency", "--device", "cpu", "--size", "32", "48", "--runs", "3",
                     "--blocks", "2", "2", "--json", str(tmp_path / "figures.json"),
                     "--rows", "fp32", "fp32+channels_last")
    rows = json.loads((tmp_path / "figures.json").read_text())["rows"]
    assert [row["mode"] for row in rows] == ["fp32", "fp32+channels_last"]  # none failed
    base = statistics.median(rows[0]["times_ms"])
    lines = out.splitlines()
    for row in rows:
        times = row["times_ms"]
        assert len(times) == 3 and min(times) > 0
        assert row["min_ms"] == min(times) and row["median_ms"] == statistics.median(times)
        assert row["ratio"] == pytest.approx(base / row["median_ms"], rel=1e-12)  # eager fp32's median over the row's
        assert (f"{row['mode']:<32}{row['min_ms']:>9.2f}{row['median_ms']:>11.2f}{row['ratio']:>8.2f}"
                f"{row['setup_s']:>9.1f}") in lines
    assert rows[0]["ratio"] == 1.0


def test_predict_pace_arithmetic_on_a_tiny_video(tmp_path):
    torch.manual_seed(0)
    model = CGNet(11, m=2, n=2).eval()
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, make_meta(model, preprocess=make_spec("standard"),
                                                                  dataset="camvid"))
    out = run_script("-m", "benchmarks.predict_pace", "--frames", "7", "--size", "40", "56", "--synthetic",
                     "--runs", "4", "--rounds", "2", "--json", str(tmp_path / "figures.json"),
                     "--", "--backend", "torch", "--device", "cpu", "--checkpoint", str(ckpt))
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert (figures["backend"], figures["precision"], figures["frames"]) == ("torch", "fp32", 7)
    lines = out.splitlines()
    for i, row in enumerate(figures["rounds"]):
        # frames/s as cgnet predict printed it on its last line, for the 7 frames of the video
        found = re.fullmatch(r"segmented 0 images and 7 frames from 1 video with torch \(fp32\) -> .*: "
                             r"(\d+\.\d\d) frames/s", row["last_line"])
        assert found and row["frames_per_s"] == float(found[1])
        assert len(row["latency_ms"]) == 4 and min(row["latency_ms"]) > 0
        assert row["median_ms"] == statistics.median(row["latency_ms"])
        assert row["ratio"] == pytest.approx(row["frames_per_s"] * row["median_ms"] / 1000, rel=1e-12)
        assert (f"round {i + 1}: {row['frames_per_s']:.2f} frames/s; median model latency {row['median_ms']:.1f} ms; "
                f"frames/s x model s {row['ratio']:.3f}") in lines
    rate = statistics.median(r["frames_per_s"] for r in figures["rounds"])
    median = statistics.median(t for r in figures["rounds"] for t in r["latency_ms"])  # all 8 calls
    assert (figures["frames_per_s"], figures["median_ms"]) == (rate, median)
    assert figures["ratio"] == pytest.approx(rate * median / 1000, rel=1e-12)
    assert lines[-1] == (f"path torch (fp32): {rate:.2f} frames/s (median of 2 runs) x {median:.1f} ms (median "
                         f"model latency, 8 calls) = {figures['ratio']:.3f} (goal >= 0.9)")


def test_onnxruntime_profile_summary_by_hand():
    from benchmarks.onnxruntime_settings import profile_summary
    def node(op, us):
        return {"cat": "Node", "name": f"n_{op}_kernel_time", "dur": us, "args": {"op_name": op}}

    events = [node("Conv", 3000), node("Conv", 5000), node("Max", 1200), node("ReorderInput", 800),
              {"cat": "Node", "name": "n_fence_before", "dur": 9000, "args": {"op_name": "Conv"}},  # not kernel time
              {"cat": "Session", "name": "model_run", "dur": 99000}]
    table = profile_summary(events, runs=2, top=2)  # 10 ms of kernels over 2 runs
    assert [r["op"] for r in table] == ["Conv", "Max"]
    assert table[0] == {"op": "Conv", "ms_per_run": 4.0, "share": 0.8, "calls_per_run": 1.0}
    assert table[1] == {"op": "Max", "ms_per_run": pytest.approx(0.6), "share": pytest.approx(0.12),
                        "calls_per_run": 0.5}


def test_onnxruntime_settings_ratios_follow_from_the_timings(camvid, tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = CGNet(11, m=2, n=2).eval()
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, make_meta(model, preprocess=make_spec("standard"),
                                                                  dataset="camvid"))
    out = run_script("-m", "benchmarks.onnxruntime_settings", "--checkpoint", str(ckpt), "--size", "32", "48",
                     "--runs", "3", "--rounds", "2", "--presets", "default", "extended", "no-spinning",
                     "--calibration", "4", "--data-root", str(camvid), "--profile-runs", "2", "--top", "4",
                     "--json", str(tmp_path / "figures.json"))
    figures = json.loads((tmp_path / "figures.json").read_text())
    rows = {r["variant"]: r for r in figures["rows"]}
    assert list(rows) == ["eager fp32 (torch)", "fp32 default", "fp32 extended", "fp32 no-spinning",
                          "fp32 PReLU op (default)", "fp32 PReLU as relu-add (default)",
                          "fp32 without XNNPACK rewrites (default)", "int8 default",
                          "int8 extended", "int8 8-bit weights (default)"]
    eager = statistics.median(rows["eager fp32 (torch)"]["times_ms"])
    lines = out.splitlines()
    for name, row in rows.items():
        assert len(row["times_ms"]) == 2 * 3 and row["median_ms"] == statistics.median(row["times_ms"])
        assert row["ratio_to_eager"] == pytest.approx(eager / row["median_ms"], rel=1e-12)
        if name.startswith("fp32"):  # the same function: float32 rounding apart (logits of order 1)
            assert row["max_abs_logit_diff"] < 1e-4
        printed = [line for line in lines if line.startswith(f"{name:<40}")]
        assert len(printed) == 1 and printed[0].endswith("slower than eager") == (row["ratio_to_eager"] < 1)
        assert f"{row['median_ms']:>11.1f}{row['ratio_to_eager']:>9.2f}" in printed[0]
    assert set(figures["profiles"]) == {"fp32", "int8"}
    for table in figures["profiles"].values():
        assert 0 < len(table) <= 4 and sum(r["share"] for r in table) <= 1 + 1e-9
        assert [r["ms_per_run"] for r in table] == sorted((r["ms_per_run"] for r in table), reverse=True)
    assert any(r["op"] == "Conv" for r in figures["profiles"]["fp32"])

def test_train_as_run_on_a_generated_dataset(tmp_path):
    """Two rounds of the eager baseline and two `cgnet train` variants on a small generated
    CamVid: the figures follow from the raw timings, and each variant ran with its options."""
    from helpers.camvid_like import make_camvid_like
    root = make_camvid_like(tmp_path / "CamVid", counts={"train": 24, "val": 2, "test": 1}, size=(64, 80))
    out = run_script("-m", "benchmarks.train_as_run", "--data-root", str(root), "--rounds", "2", "--warmup", "2",
                     "--iters", "8", "--batch-size", "2", "--crop", "64", "64", "--blocks", "2", "2",
                     "--variant", "plain=--loader workers --workers 0 --depthwise-backward aten --prelu-backward aten "
                                "--upsample-backward compiler",
                     "--variant", "fast=--loader memory --workers 1 --depthwise-backward taps --prelu-backward fused",
                     "--json", str(tmp_path / "figures.json"), "--", "--no-compile", "--val-split", "none",
                     timeout=3600)  # four cgnet train runs
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert (figures["batch"], figures["crop"], figures["warmup"], figures["iters"]) == (2, [64, 64], 2, 8)
    assert figures["cpu"]["capability"] and figures["cpu"]["threads"] >= 1
    base_rounds = figures["baseline"]["rounds"]
    assert len(base_rounds) == 2
    for r in base_rounds:
        assert len(r["step_s"]) == 8 and r["images_per_s"] == pytest.approx(2 * 8 / sum(r["step_s"]), rel=1e-12)
    base = statistics.median(r["images_per_s"] for r in base_rounds)
    assert figures["baseline"]["images_per_s_median"] == pytest.approx(base, rel=1e-12)
    plain, fast = figures["variants"]
    assert (plain["name"], fast["name"]) == ("plain", "fast") and "error" not in plain and "error" not in fast
    # amp is not given: the run takes this CPU's default (bf16 where it computes in bf16 with AVX-512 kernels)
    amp = cpu_amp_default(cpu_has_native_bf16(), figures["cpu"]["capability"])[0]
    assert plain["settings"] == {"loader": "workers", "workers": 0, "depthwise_backward": "aten",
                                 "prelu_backward": "aten", "upsample_backward": "compiler",
                                 "channels_last": plain["settings"]["channels_last"],
                                 "compile": False, "amp": amp}
    assert fast["settings"]["amp"] == amp
    assert (fast["settings"]["loader"], fast["settings"]["workers"], fast["settings"]["depthwise_backward"],
            fast["settings"]["prelu_backward"], fast["settings"]["upsample_backward"]) == ("memory", 1, "taps", "fused",
                                                                                       "aten")
    lines = out.splitlines()
    for variant in (plain, fast):
        assert len(variant["rounds"]) == 2
        for r in variant["rounds"]:
            counts = [n for n, _ in r["stamps"]]
            assert counts == sorted(counts) and counts[0] == 0 and max(counts) <= 10  # stopped by --max-iters 10
            drawn = {n: t for n, t in r["stamps"] if 2 <= n <= 10}
            a, b = min(drawn), max(drawn)
            assert (r["from_iter"], r["to_iter"]) == (a, b) and b > a
            assert r["images_per_s"] == pytest.approx(2 * (b - a) / (drawn[b] - drawn[a]), rel=1e-12)
            assert r["setup_s"] == drawn[a]
            assert "--max-iters" in r["command"] and r["command"][r["command"].index("--max-iters") + 1] == "10"
        median = statistics.median(r["images_per_s"] for r in variant["rounds"])
        assert variant["images_per_s_median"] == pytest.approx(median, rel=1e-12)
        assert variant["ratio"] == pytest.approx(median / base, rel=1e-12)
        rates = " ".join(f"{r['images_per_s']:.2f}" for r in variant["rounds"])
        assert any(line.startswith(f"{variant['name']:<28}{rates:<30}{median:>8.2f}{median / base:>9.2f}")
                   for line in lines)
    assert "training loader: memory (decoded once, 1 background thread); backward: depthwise taps, PReLU fused" in out
