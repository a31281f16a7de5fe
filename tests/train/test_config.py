"""The curriculum config: shipped jobs validate, bad fields are named before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dubforge.config import ConfigError, build, load_job
from dubforge.train.config import CurriculumConfig
from tests.train.conftest import DEBUG_JOB, REPO, debug_dict

DUBFORGE = str(Path(sys.executable).parent / "dubforge")


@pytest.mark.parametrize("job", ["curriculum.yaml", "curriculum_debug.yaml"])
def test_shipped_curricula_validate(job):
    cfg = load_job(REPO / "jobs" / job)
    assert isinstance(cfg, CurriculumConfig)
    assert [s.name for s in cfg.stages] == ["tts", "v2a", "v2a_tts", "v2st"]
    assert cfg.stages[0].tasks == {"tts": 1.0}
    assert cfg.stages[-1].tasks.keys() == {"v2st", "v2s"}
    assert cfg.stages[1].freeze == ("text_encoder",)
    assert [src.replay for src in cfg.stages[2].data] == [None, "tts"]


def test_full_curriculum_follows_dualdub_lr_ranges():
    cfg = load_job(REPO / "jobs" / "curriculum.yaml")
    assert cfg.stages[0].lr == (2e-6, 2e-4)
    assert cfg.stages[-1].lr == (2e-7, 2e-5)
    assert cfg.deepspeed.betas == (0.9, 0.98) and cfg.deepspeed.eps == 1e-9


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": [1e-3, 1e-4]}, "stages.1.lr"),
        ({"freeze": ["acoustic"]}, "stages.1.freeze"),
        ({"tasks": {"sing": 1}}, "stages.1.tasks"),
        ({"warmup_steps": 50}, "stages.1"),
        ({"steps": 0}, "stages.1.steps"),
        ({"data": [{"shards": "a/*.tar", "replay": "tts"}]}, "stages.1.data.0"),
    ],
)
def test_bad_stage_field_is_named(change, field):
    data = debug_dict()
    data["stages"][1].update(change)
    with pytest.raises(ConfigError) as e:
        build(CurriculumConfig, data)
    assert f"  - {field}" in str(e.value)


def test_replay_must_name_an_earlier_stage():
    data = debug_dict()
    data["stages"][0]["data"] = [{"replay": "v2st"}]
    with pytest.raises(ConfigError, match="replays 'v2st', which is not an earlier stage"):
        build(CurriculumConfig, data)


def test_run_stages_and_tasks_are_cross_checked():
    with pytest.raises(ConfigError, match="run_stages: 'nope' is not a stage"):
        build(CurriculumConfig, debug_dict(run_stages=["nope"]))
    with pytest.raises(ConfigError, match=r"trains tasks \['v2a'\] that model.tasks"):
        build(CurriculumConfig, debug_dict(model={"preset": "tiny", "tasks": ["tts", "v2s"]}))


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DUBFORGE_WORKSPACE": str(tmp_path / "ws")}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([DUBFORGE, "run", str(DEBUG_JOB), *overrides], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_rejects_bad_field_before_starting(tmp_path):
    out = _cli(tmp_path, "deepspeed.zero_stage=4", "shards=/nonexistent")
    assert out.returncode == 2, out.stderr
    assert "deepspeed.zero_stage" in out.stderr
    assert not (tmp_path / "ws" / "mlflow.db").exists()


def test_cli_rejects_missing_shards_before_ray_starts(tmp_path, train_shards):
    out = _cli(tmp_path, f"shards={tmp_path / 'nothing'}")
    assert out.returncode == 2, out.stderr
    assert "stages.0.data.0.shards" in out.stderr and "matches no .tar shard" in out.stderr
    # checked before MLflow and Ray: no tracking store, no Ray session
    assert not (tmp_path / "ws" / "mlflow.db").exists()
    assert "curriculum debug" not in out.stdout
