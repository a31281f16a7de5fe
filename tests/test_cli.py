"""The `dubforge` command: help everywhere, the installed entry point, the doctor report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dubforge.cli import app
from tests.conftest import VENV_BIN

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_commands_are_the_landed_ones():
    assert COMMANDS == [
        "doctor",
        "evaluate",
        "ingest",
        "params",
        "random-codec",
        "run",
        "serve",
        "synth",
        "train",
    ]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_installed_entry_point(repo):
    exe = VENV_BIN / "dubforge"
    assert exe.exists()
    top = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, cwd=repo)
    assert top.returncode == 0 and "synth" in top.stdout
    sub = subprocess.run(
        [str(exe), "synth", "--help"], capture_output=True, text=True, timeout=60, cwd=repo
    )
    assert sub.returncode == 0 and "--movies" in sub.stdout and "--seed" in sub.stdout


def test_doctor_reports_pinned_stack(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DUBFORGE_WORKSPACE", str(tmp_path))
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # DeepSpeed's import chatter goes to stderr
    assert report["packages"]["torch"].startswith("2.13.0")
    assert report["packages"]["ray"] == "2.60.0"
    assert all(report["tools"].values()), report["tools"]
    assert report["mlflow_tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert {"fused_adam", "cpu_adam"} <= set(report["deepspeed_ops"])


def test_params_lists_every_preset():
    result = CliRunner().invoke(app, ["params"])
    assert result.exit_code == 0, result.output
    for preset in ("tiny", "small", "base"):
        assert preset in result.output


def test_random_codec_is_flagged_in_what_it_tokenizes(tmp_path):
    from dubforge.ingest.tokenize import CodecTokenizer

    result = CliRunner().invoke(app, ["random-codec", str(tmp_path / "c")])
    assert result.exit_code == 0 and "not for real data" in result.output
    tok = CodecTokenizer(str(tmp_path / "c"), bandwidth=6.0)
    assert tok.random_weights and tok.frame_rate == 75.0 and tok.n_q == 8
    codes = tok.encode(np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1)
    assert codes.shape == (8, 75) and codes.dtype == np.int16
    bad = CliRunner().invoke(app, ["random-codec", str(tmp_path / "d"), "--kind", "wavtokenizer"])
    assert bad.exit_code == 2 and "choose one of" in bad.output


def test_evaluate_without_a_checkpoint_exits_2(tmp_path):
    job = str(Path(__file__).resolve().parents[1] / "jobs" / "evaluate.yaml")
    args = ["evaluate", job, f"checkpoint={tmp_path / 'none'}", f"shards={tmp_path}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "none" in result.output
    args = ["evaluate", job, f"checkpoint={tmp_path}", f"shards={tmp_path}", "split=train"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "split" in result.output  # never scored on train
