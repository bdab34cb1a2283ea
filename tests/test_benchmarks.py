"""The benchmark scripts the GPU sessions run, on the CPU at a tiny size: they must still run
against the engine they import, and print the arithmetic they claim."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*argv: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_cityscapes_projection_on_a_generated_tree():
    out = run_script("benchmarks/cityscapes_projection.py", "--device", "cpu", "--images", "4", "--size", "64", "128",
                     "--warmup", "1", "--iters", "2", "--", "--crop", "48", "48", "--batch-size", "2",
                     "--blocks", "2", "2")
    assert "crop 48x48, batch 2" in out
    rows = re.findall(r"^(pipeline \(loader \+ step\)|step alone \(median\))\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                      out, re.M)
    assert [r[0] for r in rows] == ["pipeline (loader + step)", "step alone (median)"]
    for _, rate, per_step, hours in rows:
        low, high = float(rate) - 0.05, float(rate) + 0.05  # img/s is printed to 1 decimal
        assert 2 / high - 0.0005 <= float(per_step) <= 2 / low + 0.0005
        # 300 epochs of the 2,975 Cityscapes train images in steps of 2 (1,487 steps, 2,974 images)
        assert 300 * 2974 / high / 3600 - 0.005 <= float(hours) <= 300 * 2974 / low / 3600 + 0.005
    assert "PROJECTION, not a training run: 300 epochs x 1487 steps of 2" in out


def test_gpu_latency_dry_run_ratios():
    out = run_script("benchmarks/gpu_latency.py", "--device", "cpu", "--size", "32", "48", "--runs", "3",
                     "--blocks", "2", "2", "--rows", "fp32", "fp32+channels_last")
    rows = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^(fp32(?:\+channels_last)?)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+[\d.]+$", out, re.M)}
    assert set(rows) == {"fp32", "fp32+channels_last"}
    assert rows["fp32"][1] == 1.0
    base = rows["fp32"][0]
    median, ratio = rows["fp32+channels_last"]
    # every figure is printed to 2 decimals: the ratio's own rounding plus what rounding the times moves it
    assert abs(ratio - base / median) <= 0.005 + base / median * (0.005 / base + 0.005 / median) + 1e-9
