"""`cgnet predict --engine ray` on a real two-node Ray cluster on 127.0.0.1 (tests/helpers/ray_cluster.py)
with an S3 endpoint served by moto on 127.0.0.1: the files are the bytes local `cgnet predict` writes
(torch fp32, one thread, as the actors run), a bad image is one line of failures.csv and a non-zero
exit naming the count, a re-run redoes nothing, and a Ray worker killed mid-job costs no output."""
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("ray", reason='the ray extra is not installed (pip install "cgnet[ray]")')
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the local S3 endpoint)")

from helpers.ray_cluster import AUTH_ENV, Cluster  # noqa: E402

pytestmark = pytest.mark.slow
RUN_LIMIT_S = 900  # one job on the loaded 2-core machine (actors start, load the model, segment)
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(folder: Path, images: int = 2) -> Path:
    """Tiny images, a file that is not an image, and a 12-frame video (mp4v)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    (folder / "bad.png").write_bytes(b"not a png")
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(12):
        frame = np.full((48, 64, 3), 20 * i, np.uint8)
        frame[:, 4 * i:4 * i + 8] = 255
        writer.write(frame)
    writer.release()
    return folder


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (its environment, for the cluster and the commands)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        server.stop()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def run_env(s3: dict) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, **s3, **AUTH_ENV, "CGNET_NO_REEXEC": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def cluster(s3):
    cluster = Cluster(free_port(), run_env(s3))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def cgnet(*args, env: dict, wait: bool = True):
    cmd = [sys.executable, "-m", "cgnet", "predict", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_LIMIT_S)


def local_reference(inputs: list[str], out: Path, ckpt, env: dict) -> None:
    """Local `cgnet predict`, torch fp32, one thread (as each one-CPU actor runs: Ray sets
    OMP_NUM_THREADS to an actor's CPUs)."""
    done = cgnet(*inputs, "--out", str(out), "--checkpoint", str(ckpt), "--backend", "torch", "--precision", "fp32",
                 "--no-progress", env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def download(bucket: str, prefix: str, target: Path) -> Path:
    import boto3
    client = boto3.client("s3")
    for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        if item["Key"].endswith("/"):  # a folder marker (pyarrow's create_dir writes them), not a file
            continue
        path = target / item["Key"][len(prefix):].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    return target


def test_s3_in_s3_out_same_files_as_local_predict_failures_and_rerun(cluster, s3, tmp_path, randomized_ckpt):
    import boto3
    inputs = make_inputs(tmp_path / "in")
    client = boto3.client("s3")
    client.create_bucket(Bucket="cgnet-in")
    client.create_bucket(Bucket="cgnet-out")
    for p in inputs.iterdir():
        client.put_object(Bucket="cgnet-in", Key=f"frames/{p.name}", Body=p.read_bytes())
    env = run_env(s3)
    args = ["s3://cgnet-in/frames", "s3://cgnet-in/frames/clip.mp4", "--engine", "ray", "--address", cluster.address,
            "--out", "s3://cgnet-out/run", "--checkpoint", str(randomized_ckpt), "--backend", "torch",
            "--precision", "fp32", "--chunk-frames", "5", "--batch-size", "1", "--no-progress"]
    first = cgnet(*args, env=env)
    assert first.returncode == 2, first.stdout + first.stderr
    assert first.stderr.strip().splitlines()[-1] == \
        "cgnet predict: error: 1 input failed; see s3://cgnet-out/run/failures.csv"
    summary = next(line for line in first.stdout.splitlines() if line.startswith("ray (2 nodes)"))
    assert "segmented 14 frames (2 images, 12 video frames written)" in summary and "1 failure" in summary
    assert " frames/s" in summary

    got = download("cgnet-out", "run", tmp_path / "got")
    rows = list(csv.reader(io.StringIO((got / "failures.csv").read_text())))
    assert rows == [["input", "error"], ["s3://cgnet-in/frames/bad.png",
                                         "s3://cgnet-in/frames/bad.png: cannot decode the image (corrupt, "
                                         "truncated or not an image)"]]
    local_reference([str(inputs / "img0.png"), str(inputs / "img1.png"), str(inputs / "clip.mp4")],
                    tmp_path / "local", randomized_ckpt, env)
    want = files(tmp_path / "local")
    assert sorted(want) == sorted(k for k in files(got) if k != "failures.csv")
    assert {k: v for k, v in files(got).items() if k != "failures.csv"} == want  # byte for byte, the video too

    again = cgnet(*args, env=env)  # a re-run: everything written is left alone, the bad image fails again
    assert again.returncode == 2
    summary = next(line for line in again.stdout.splitlines() if line.startswith("ray (2 nodes)"))
    assert "segmented 0 frames" in summary and "3 complete outputs and 0 video ranges skipped" in summary


def test_a_ray_worker_killed_mid_job_costs_no_output(cluster, s3, tmp_path, randomized_ckpt):
    inputs = make_inputs(tmp_path / "in", images=8)
    (inputs / "bad.png").unlink()
    env = run_env(s3)
    out = tmp_path / "out"
    # what a writer killed mid-write leaves (the kill below lands inside one only by chance)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = out / "masks" / f".img2.png.{int(gone.stdout)}.0badc0de.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    args = [str(inputs), str(inputs / "clip.mp4"), "--engine", "ray", "--address", cluster.address, "--out", str(out),
            "--checkpoint", str(randomized_ckpt), "--backend", "torch", "--precision", "fp32", "--chunk-frames", "3",
            "--batch-size", "1", "--actors", "2", "--no-progress"]
    job = cgnet(*args, env=env, wait=False)
    deadline = time.monotonic() + RUN_LIMIT_S
    killed = None
    try:
        while time.monotonic() < deadline and killed is None and job.poll() is None:
            written = len(list((out / "masks").glob("*.png"))) if (out / "masks").is_dir() else 0
            workers = cluster.workers()
            if written >= 1 and workers:
                killed = workers[0]
                os.kill(killed, 9)
            time.sleep(0.2)
        text, _ = job.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate(timeout=60)
    assert killed is not None, "the job ended before a worker could be killed: " + text[-2000:]
    if job.returncode != 0:  # the job did not survive: a re-run finishes it and redoes nothing written
        complete = len(list((out / "overlay").glob("*.jpg"))) + (out / "clip_overlay.mp4").exists()
        again = cgnet(*args, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{complete} complete output" in again.stdout
        text += again.stdout
    assert "note: removed" in text and f"masks/{leftover.name}" in text
    local_reference([str(inputs), str(inputs / "clip.mp4")], tmp_path / "local", randomized_ckpt, env)
    assert files(out) == files(tmp_path / "local")  # every output, byte for byte; no part or temporary file left
    shutil.rmtree(out)
