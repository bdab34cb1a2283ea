"""The benchmark scripts the GPU sessions run, on the CPU at a tiny size: they must still run
against the engine they import, and their figures must follow from their raw timings (read from
their --json output, the arithmetic done again here; the printed table shows the same figures)."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # each runs a script in a fresh interpreter (imports, a generated tree, steps)


def run_script(*argv: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
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
