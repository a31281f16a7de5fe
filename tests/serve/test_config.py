"""The serve job's config: the Serve config file `--build` writes passes Ray's own schema and
names code that exists; the token rules; what the validators refuse."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from dubforge.config import ConfigError, load_job
from dubforge.serve.app import read_token
from dubforge.serve.config import ServeConfig
from dubforge.serve.run import local_token
from tests.conftest import VENV_BIN

SECRET = "a-secret-that-must-stay-out-of-files"


def test_build_writes_a_serve_config_that_ray_accepts(tmp_path, repo):
    out = tmp_path / "serve_config.yaml"
    done = subprocess.run(
        [str(VENV_BIN / "dubforge"), "serve", "jobs/serve.yaml", "port=8100",
         "autoscaling.max_replicas=4", "--build", str(out)],
        cwd=repo, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DUBFORGE_API_TOKEN": SECRET},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    # what `serve deploy` does with the file: call the builder as Serve calls it
    bound = call_user_app_builder_with_args_if_necessary(builder, app.args)
    assert isinstance(bound, Application)
    cfg = ServeConfig.model_validate(app.args["config"])
    assert cfg.port == 8100 == data["http_options"]["port"]
    assert data["http_options"]["host"] == "127.0.0.1"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"DubberModel", "DubbingAPI"}
    assert deployments["DubberModel"].autoscaling_config["max_replicas"] == 4
    assert SECRET not in out.read_text()  # the token never goes into the file


def test_a_tokenless_service_may_only_listen_on_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        load_job("jobs/serve.yaml", ["auth.mode=none", "host=0.0.0.0"])
    assert load_job("jobs/serve.yaml", ["auth.mode=none"]).auth.mode == "none"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inputs.faces.face_fps=7", "face_fps"),
        ("resources.num_gpus=1", "device=cuda"),
        ("autoscaling.max_replicas=0", "max_replicas"),
        ("limits.max_nfe=1000", "max_nfe"),
        ("route_prefix=api", "route_prefix"),
        ("inputs.containers=[avi]", "containers"),
    ],
)
def test_bad_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_job("jobs/serve.yaml", [override])


def test_the_service_refuses_to_start_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("DUBFORGE_API_TOKEN", raising=False)
    cfg = load_job("jobs/serve_debug.yaml")
    with pytest.raises(RuntimeError, match="no API token"):
        read_token(cfg)
    monkeypatch.setenv("DUBFORGE_API_TOKEN", "short")
    with pytest.raises(RuntimeError, match="16 characters"):
        read_token(cfg)
    monkeypatch.delenv("DUBFORGE_API_TOKEN")
    secret = tmp_path / "token"
    secret.write_text("s" * 32 + "\n")
    with_file = load_job("jobs/serve_debug.yaml", [f"auth.token_file={secret}"])
    assert read_token(with_file) == "s" * 32
    assert read_token(load_job("jobs/serve_debug.yaml", ["auth.mode=none"])) is None


def test_a_local_run_generates_a_private_token_file_once(tmp_path, monkeypatch):
    monkeypatch.delenv("DUBFORGE_API_TOKEN", raising=False)
    cfg = load_job("jobs/serve_debug.yaml", [f"cache_dir={tmp_path / 'serve' / 'cache'}"])
    first, hint = local_token(cfg)
    path = tmp_path / "serve" / "token"
    assert first.auth.token_file == str(path) and str(path) in hint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = read_token(first)
    assert token is not None and len(token) >= 32
    again, _ = local_token(cfg)
    assert read_token(again) == token
