"""Every job YAML loads into its typed config; overrides and errors behave as documented."""

from __future__ import annotations

import os
import stat

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from dubforge.cli import app
from dubforge.config import ConfigError, JobConfig, job_names, load_job, merge, parse_overrides
from dubforge.synth.config import SynthConfig
from tests.conftest import REPO

JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))


def test_there_are_jobs():
    assert {p.name for p in JOB_FILES} >= {
        "synth.yaml", "synth_debug.yaml", "ingest.yaml", "ingest_debug.yaml",
    }  # fmt: skip


def test_ingest_input_list_and_nested_overrides():
    cfg = load_job(
        REPO / "jobs/ingest.yaml", ["input=/a,/b", "faces.lip_size=88", "codec.mel=hifigan_22k"]
    )
    assert cfg.input == ["/a", "/b"] and cfg.faces.lip_size == 88 and cfg.codec.mel == "hifigan_22k"
    with pytest.raises(ConfigError, match="tasks must be"):
        load_job(REPO / "jobs/ingest.yaml", ["movie_tasks=[karaoke]"])
    with pytest.raises(ConfigError, match="faces.lip_sise: unknown field; did you mean `lip_size`"):
        load_job(REPO / "jobs/ingest.yaml", ["faces.lip_sise=88"])


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_yaml_loads(path):
    cfg = load_job(path)
    assert isinstance(cfg, JobConfig)
    assert cfg.job in job_names()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.job = "other"  # type: ignore[misc]


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_yaml_is_runnable(path):
    # `ray job submit -- jobs/x.yaml` executes the file: it needs the shebang and the x bit
    assert path.read_text().startswith("#!/usr/bin/env -S dubforge run\n")
    assert os.stat(path).st_mode & stat.S_IXUSR


def test_overrides_apply_and_parse_types():
    cfg = load_job(REPO / "jobs/synth.yaml", ["movies=3", "seed=42", "output=s3://b/c", "crf=18"])
    assert isinstance(cfg, SynthConfig)
    assert (cfg.movies, cfg.seed, cfg.output, cfg.crf) == (3, 42, "s3://b/c", 18)
    assert cfg.duration == 30.0  # untouched fields keep the YAML's values


def test_parse_overrides_nested_and_typed():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]", "f=true", "g="]) == {
        "a": {"b": {"c": 1, "d": "x"}},
        "e": [1, 2],
        "f": True,
        "g": "",
    }
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["movies=0"], "movies: Input should be greater than or equal to 1"),
        (["movie=3"], "movie: unknown field; did you mean `movies`?"),
        (["seed=abc"], "seed: Input should be a valid integer"),
        (["duration=-1"], "duration:"),
        (["job=nope"], "is not a known job"),
        (["novalue"], "is not key=value"),
    ],
)
def test_bad_fields_name_the_field_and_fix(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_job(REPO / "jobs/synth.yaml", overrides)
    assert needle in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: synth\nmovies: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_job(listy)


def test_cli_bad_field_exits_2_before_doing_anything(tmp_path):
    out_dir = tmp_path / "never"
    result = CliRunner().invoke(
        app, ["run", str(REPO / "jobs/synth.yaml"), f"output={out_dir}", "movies=-2"]
    )
    assert result.exit_code == 2
    assert "movies" in result.output and "greater than or equal to 1" in result.output
    assert not out_dir.exists()
    result = CliRunner().invoke(app, ["synth", str(out_dir), "--movies", "0"])
    assert result.exit_code == 2 and not out_dir.exists()


def test_cli_dry_run_prints_resolved_config():
    result = CliRunner().invoke(
        app, ["run", str(REPO / "jobs/synth.yaml"), "movies=7", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert '"movies": 7' in result.output
