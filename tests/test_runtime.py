"""Embedded defaults: a local Ray when RAY_ADDRESS is unset, the cluster when it is set, and a
sqlite MLflow store in the workspace when MLFLOW_TRACKING_URI is unset."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from dubforge.runtime import mlflow_tracking_uri, workspace


def test_mlflow_defaults_to_sqlite_in_workspace(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DUBFORGE_WORKSPACE", str(tmp_path / "ws"))
    uri = mlflow_tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert workspace() == tmp_path / "ws"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("defaults-test")
        with mlflow.start_run() as run:
            mlflow.log_param("seed", 3)
            mlflow.log_metric("loss", 0.5, step=1)
        got = mlflow.get_run(run.info.run_id)
        assert got.data.params["seed"] == "3" and got.data.metrics["loss"] == 0.5
        assert (tmp_path / "ws" / "mlflow.db").stat().st_size > 0
    finally:
        mlflow.set_tracking_uri(None)


def test_mlflow_env_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert mlflow_tracking_uri() == "http://127.0.0.1:5999"


_SESSION = textwrap.dedent(
    """
    import json, ray
    from dubforge.runtime import ray_session
    with ray_session(num_cpus=1) as info:
        nodes = ray.nodes()
        out = {**info, "alive": ray.is_initialized(), "nodes": len(nodes),
               "two": ray.get(ray.remote(lambda: 1 + 1).remote())}
    out["after"] = ray.is_initialized()
    print("RESULT" + json.dumps(out))
    """
)


def _run_session(env: dict) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", _SESSION], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT", 1)[1].splitlines()[0])


@pytest.mark.slow
def test_ray_session_starts_and_stops_a_local_ray(ray_cluster):
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_")}
    # its own short temp dir (Ray's socket paths are length-limited): nothing to join there
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="dfl-", dir="/tmp")
    try:
        got = _run_session(env)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert got["local"] is True and got["alive"] and got["two"] == 2
    assert got["address"].rsplit(":", 1)[1] != ray_cluster.address.rsplit(":", 1)[1]
    assert got["after"] is False


@pytest.mark.slow
def test_ray_session_joins_ray_address(ray_cluster):
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address}
    got = _run_session(env)
    # Ray reports the GCS under the machine's own IP, whatever the node IP; the port identifies it
    assert got["local"] is False and got["two"] == 2
    assert got["address"].rsplit(":", 1)[1] == ray_cluster.address.rsplit(":", 1)[1]
    assert got["after"] is False
