"""Embedded defaults for the services a job uses.

- Ray: `RAY_ADDRESS` set -> join that cluster; unset -> start a local Ray for the job and stop it
  afterwards.
- MLflow: `MLFLOW_TRACKING_URI` set -> use it; unset -> a sqlite store in the workspace
  (`./runs/mlflow.db`; the workspace is `DUBFORGE_WORKSPACE` or `./runs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = "runs"


def workspace() -> Path:
    """The folder for local run state (MLflow store, Ray Train results); created on demand."""
    path = Path(os.environ.get("DUBFORGE_WORKSPACE", DEFAULT_WORKSPACE)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def mlflow_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else a sqlite store in the workspace (the file store is refused by
    MLflow 3 unless forced)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{workspace() / 'mlflow.db'}"


@contextmanager
def ray_session(**init_kwargs: Any) -> Iterator[dict[str, Any]]:
    """Ray for the duration of a job: reuse an initialised Ray, join `RAY_ADDRESS`, or start a
    local one (stopped on exit). Yields `{"address": ..., "local": bool}`."""
    import ray

    if ray.is_initialized():
        yield {"address": ray.get_runtime_context().gcs_address, "local": False}
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": True, **init_kwargs}
    if address:
        kwargs.pop("num_cpus", None)
        kwargs.pop("num_gpus", None)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", **kwargs)  # a new local instance, never a stale one
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "local": not address}
    finally:
        ray.shutdown()
