"""`dubforge serve JOB`: run the dubbing service on local Ray (or a cluster at `--address`) until
Ctrl-C / SIGTERM; `--build FILE` writes the Serve config file that `serve deploy`, `serve run`
and a KubeRay RayService's `serveConfigV2` take unchanged."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from dubforge.serve.config import ServeConfig

IMPORT_PATH = "dubforge.serve.app:build_app"
READY_TIMEOUT_S = 600.0


def serve_config(cfg: ServeConfig) -> dict[str, Any]:
    """The Serve config file for `cfg` (ServeDeploySchema): one application built by
    `build_app` from the whole job config, with both deployments' options spelled out so an
    operator can tune them in the file."""
    from dubforge.serve.app import deployment_options

    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [
            {
                "name": cfg.name,
                "route_prefix": cfg.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"config": cfg.model_dump(mode="json")},
                "deployments": [
                    {"name": name, **opts} for name, opts in deployment_options(cfg).items()
                ],
            }
        ],
    }


def write_serve_config(cfg: ServeConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Ray Serve config written by `dubforge serve --build`: serve deploy / serve run / " \
        "KubeRay serveConfigV2\n" + yaml.safe_dump(serve_config(cfg), sort_keys=False)  # fmt: skip
    path.write_text(text)
    return path


def local_token(cfg: ServeConfig) -> tuple[ServeConfig, str]:
    """(config, how a client gets the token). Without a token in the environment or a file, one
    is generated into a 0600 file beside the cache and the config points at it."""
    if cfg.auth.mode == "none":
        return cfg, "no token (auth.mode=none, loopback only)"
    if os.environ.get(cfg.auth.token_env, "").strip():
        return cfg, f"the token is ${cfg.auth.token_env}"
    if cfg.auth.token_file:
        return cfg, f"export {cfg.auth.token_env}=$(cat {cfg.auth.token_file})"
    path = (Path(cfg.cache_dir).parent / "token").resolve()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    auth = cfg.auth.model_copy(update={"token_file": str(path)})
    return cfg.model_copy(update={"auth": auth}), f"export {cfg.auth.token_env}=$(cat {path})"


def _ray_quiet() -> None:
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def start(cfg: ServeConfig, address: str | None = None) -> str:
    """Deploy `cfg` on Ray (started here when `address` is None) and wait until it answers;
    returns the base URL."""
    import ray
    from ray import serve

    from dubforge.serve.app import bind_app

    _ray_quiet()
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False if address is None else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    serve.start(
        http_options={"host": cfg.host, "port": cfg.port},
        logging_config={"log_level": "WARNING"},
    )
    token = os.environ.get(cfg.auth.token_env, "").strip()
    env = {cfg.auth.token_env: token} if cfg.auth.mode == "token" and token else None
    serve.run(
        bind_app(cfg, env),
        name=cfg.name,
        route_prefix=cfg.route_prefix,
        blocking=False,
    )
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def stop(cfg: ServeConfig, own_cluster: bool) -> None:
    import ray
    from ray import serve

    try:
        serve.delete(cfg.name)
        if own_cluster:
            serve.shutdown()
    finally:
        ray.shutdown()


def run(cfg: ServeConfig, address: str | None = None) -> int:
    """Serve until SIGINT/SIGTERM; prints the URL, the docs and how to get the token."""
    cfg, token_hint = local_token(cfg)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    t0 = time.monotonic()
    url = start(cfg, address)
    print(f"dubforge serve: {cfg.name} ({cfg.model}) at {url} after {time.monotonic() - t0:.0f} s")
    print(f"  docs   {url}/docs   health {url}/v1/health")
    print(f"  token  {token_hint}")
    print(f"  try    dubforge client dub {url} --video clip.mp4 --text 'New line.' --out dub.wav")
    print("  Ctrl-C stops it", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        print("dubforge serve: stopping", flush=True)
        stop(cfg, own_cluster=address is None)
    return 0


def main(cfg: ServeConfig) -> int:
    """Job entry (`dubforge run jobs/serve.yaml`): serve on local Ray."""
    return run(cfg, os.environ.get("DUBFORGE_RAY_ADDRESS") or None)
