"""benchmarks/serve_load.py run tiny against a real `cgnet serve` it starts: its figures must be
consistent with each other (the counts, the ordered percentiles, the products it prints)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cgnet.deploy import serve
from cgnet.deploy.runners import MissingBackend

ROOT = Path(__file__).resolve().parents[1]


def run_script(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "benchmarks.serve_load", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_serve_load_figures_add_up(tmp_path):
    try:
        serve.require_serve()
    except MissingBackend as error:
        pytest.skip(str(error))
    out = tmp_path / "figures" / "load.json"
    done = run_script("--clients", "2", "--requests", "3", "--size", "40", "56", "--json", str(out),
                      "--", "--backend", "torch", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["load.json"]  # no temporary file left
    assert result["started_here"] and result["backend"] == "torch" and result["precision"] == "fp32"
    assert result["image"]["width"] == 56 and result["image"]["height"] == 40
    assert result["clients"] == 2 and result["requests_per_client"] == 3 and len(result["rounds"]) == 2
    printed = re.findall(r"^\s+(\d)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                         r"\s+(\d+) MB$", done.stdout, re.M)
    assert [row[0] for row in printed] == ["1", "2"]
    for row, line in zip(result["rounds"], printed):
        assert row["requests"] == row["sent"] == 2 * 3 and row["errors"] == 0
        assert row["requests_per_s"] == pytest.approx(row["requests"] / row["seconds"], rel=1e-12)
        assert row["model_busy"] == pytest.approx(row["requests_per_s"] * row["model_ms_median"] / 1000, rel=1e-12)
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        # a request's latency includes the model's: the slowest cannot be faster than the median model time
        assert lat["max"] >= row["model_ms_median"] > 0
        # the server predicts one image at a time, so the 6 model times add up to less than the round;
        # sorted m1..m6 with median (m3 + m4) / 2, m3 + m4 + m5 + m6 >= 4 x median: rate x median <= 6/4
        assert row["model_busy"] <= 1.5
        # the printed row is the JSON's, rounded
        assert int(line[1]) == row["requests"] and int(line[2]) == row["errors"]
        assert float(line[3]) == pytest.approx(row["requests_per_s"], abs=0.006)
        assert [float(v) for v in line[4:7]] == pytest.approx([lat["p50"], lat["p95"], lat["p99"]], abs=0.06)
        assert float(line[7]) == pytest.approx(row["model_ms_median"], abs=0.006)
        assert float(line[8]) == pytest.approx(row["model_busy"], abs=0.0006)
        assert int(line[9]) == round(row["rss_mb_max"])
    rss = result["rss_mb"]
    assert all(rss[k] > 50 for k in ("before", "during_max", "after", "peak_hwm"))  # a Python with torch loaded
    assert rss["peak_hwm"] >= max(rss["before"], rss["during_max"], rss["after"])
    assert rss["during_max"] == max(row["rss_mb_max"] for row in result["rounds"])
    assert re.search(rf"server RSS: before {rss['before']:.0f} MB, during \(largest sample\) "
                     rf"{rss['during_max']:.0f} MB, after {rss['after']:.0f} MB; peak \(VmHWM\) "
                     rf"{rss['peak_hwm']:.0f} MB", done.stdout)


def test_serve_load_refuses_other_hosts():
    for url in ("http://example.org:8000/", "http://192.168.1.5:8000/", "https://127.0.0.1:8000/",
                "http://127.0.0.1/", "http://localhost.example.org:80/"):
        done = run_script("--url", url)
        assert done.returncode == 2 and done.stderr == (f"serve_load: --url must be http://127.0.0.1:PORT/ "
                                                        f"(or localhost, [::1]) on this machine, got {url!r}\n"), url
