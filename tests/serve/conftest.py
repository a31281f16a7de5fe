"""Serve fixtures: a short synthetic clip with a speaking face, and the dubbing service started by
`dubforge serve jobs/serve_debug.yaml --address` on the session's Ray cluster."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch

from tests.conftest import VENV_BIN, RayCluster, _free_ports


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, in the test process (tests/model does the same): more oversubscribe
    the shared 2-core machine; the service runs in its own processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


@pytest.fixture(scope="session")
def clips(tmp_path_factory, repo) -> dict[str, Path]:
    """clip.mp4 (3 s cut of a synthetic movie: a talking face, speech on music), ref.wav (other
    speech of the movie), long.mp4 (past the service's max_clip_seconds), noaudio.mp4."""
    root = tmp_path_factory.mktemp("serve-media")
    corpus = root / "corpus"
    subprocess.run(
        [
            str(VENV_BIN / "dubforge"),
            "synth",
            str(corpus),
            "movies=1",
            "duration=12",
            "scene_seconds=12",
            "speech_utterances=0",
            "workers=1",
        ],
        check=True,
        capture_output=True,
        timeout=600,
        cwd=repo,
    )
    movie = next((corpus / "movies").glob("*.mp4"))
    truth = json.loads(next((corpus / "truth").glob("*/alignment.json")).read_text())
    first = truth["lines"][0]
    start = max(0.0, float(first["start"]) - 0.2)
    out = {"movie": movie}
    out["clip"] = root / "clip.mp4"
    _ffmpeg(
        "-ss",
        f"{start:.2f}",
        "-t",
        "3",
        "-i",
        str(movie),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(out["clip"]),
    )
    out["ref"] = root / "ref.wav"
    _ffmpeg("-ss", "6", "-t", "3", "-i", str(movie), "-vn", "-ac", "1", str(out["ref"]))
    out["long"] = root / "long.mp4"
    _ffmpeg(
        "-stream_loop",
        "1",
        "-i",
        str(movie),
        "-t",
        "20",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(out["long"]),
    )
    out["noaudio"] = root / "noaudio.mp4"
    _ffmpeg("-i", str(out["clip"]), "-an", "-c:v", "copy", str(out["noaudio"]))
    return out


@dataclass
class Service:
    url: str
    token: str
    cluster: RayCluster
    proc: subprocess.Popen
    log: Path

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def driver(self, code: str, timeout: float = 120) -> str:
        """Run `code` in a Python driver connected to the cluster; its stdout."""
        init = f"ray.init(address={self.cluster.address!r}, logging_level='ERROR')"
        script = f"import ray, json\n{init}\n{code}"
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=self.cluster.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout


SERVICE_OVERRIDES = [
    "autoscaling.min_replicas=1",
    "autoscaling.max_replicas=2",
    "autoscaling.target_ongoing_requests=1",
    "autoscaling.upscale_delay_s=1",
    "autoscaling.downscale_delay_s=4",
    "autoscaling.metrics_interval_s=0.5",
    "autoscaling.look_back_period_s=2",
    "batching.max_batch_size=8",
    "batching.batch_wait_timeout_s=0.3",
    "inputs.max_clip_seconds=10",
    "inputs.max_video_bytes=4000000",
    "inputs.max_reference_bytes=4000000",
    "limits.request_timeout_s=120",
    "limits.max_ongoing_requests=8",
    "limits.max_queued_requests=24",
    "limits.max_nfe=16",
    "limits.prepare_concurrency=8",
    "resources.model_cpus=0.5",
    "resources.ingress_cpus=0.5",
]


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory, repo) -> Service:
    """`dubforge serve` of the random-weight tiny dubber with short autoscaling delays, deployed
    on the session cluster; stopped (SIGTERM) at the end of the module."""
    root = tmp_path_factory.mktemp("serve")
    (port,) = _free_ports(1)
    token = secrets.token_urlsafe(24)
    env = {**ray_cluster.env, "DUBFORGE_API_TOKEN": token}
    log = root / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "dubforge"),
                "serve",
                "jobs/serve_debug.yaml",
                f"port={port}",
                f"cache_dir={root / 'cache'}",
                *SERVICE_OVERRIDES,
                "--address",
                ray_cluster.address,
            ],
            cwd=repo,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    svc = Service(url, token, ray_cluster, proc, log)
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dubforge serve exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if (
                    requests.get(f"{url}/v1/models", headers=svc.auth(), timeout=5).status_code
                    == 200
                ):
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not come up:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield svc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
