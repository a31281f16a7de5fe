"""Shared fixtures: the repo, a real local Ray cluster started with `ray start`, a small corpus."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class RayCluster:
    """A running `ray start --head` cluster: GCS address, dashboard (job API) and the environment
    a client process needs (token auth, the venv on PATH)."""

    address: str
    dashboard: str
    env: dict[str, str]
    temp_dir: Path

    def run(self, args: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        env = {**self.env, "RAY_ADDRESS": self.dashboard}
        return subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kw
        )


@pytest.fixture(scope="session")
def ray_cluster():
    """A head node on 127.0.0.1 with non-default ports, its own fresh temp dir and token auth,
    started and stopped by cluster/local.sh (so that script is what the tests exercise)."""
    # short path: Ray's unix sockets live under the temp dir and have a ~107 character limit
    temp_dir = Path(tempfile.mkdtemp(prefix="dfray-", dir="/tmp"))
    gcs, dash, client, nm, om, metrics, rte, agent, agent_grpc = _free_ports(9)
    worker_base = 20000 + secrets.randbelow(400) * 100
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TEMP_DIR": str(temp_dir),
        "RAY_PORT": str(gcs),
        "RAY_DASHBOARD_PORT": str(dash),
        "RAY_NUM_CPUS": "4",  # logical: the ingest pipeline holds 4 (actor pools + tasks)
        "RAY_START_ARGS": " ".join([
            f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
            f"--object-manager-port={om}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={rte}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 99}",
        ]),
    }  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    script = str(REPO / "cluster" / "local.sh")
    started = subprocess.run(
        ["bash", script, "up"], env=env, capture_output=True, text=True, timeout=180
    )
    if started.returncode != 0:
        shutil.rmtree(temp_dir, ignore_errors=True)
        pytest.fail(f"cluster/local.sh up failed:\n{started.stdout}\n{started.stderr}")
    assert f"RAY_ADDRESS=http://127.0.0.1:{dash}" in started.stdout
    cluster = RayCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", env, temp_dir)
    try:
        _wait_for_jobs_api(cluster)
        yield cluster
    finally:
        subprocess.run(["bash", script, "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(cluster: RayCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run([str(VENV_BIN / "ray"), "job", "list"], timeout=30)
        if out.returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"the Ray job API at {cluster.dashboard} did not come up: {out.stderr[-2000:]}")
