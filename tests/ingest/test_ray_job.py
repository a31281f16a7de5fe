"""The ingest job submitted to a running cluster with `ray job submit`, as users run it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.conftest import VENV_BIN

pytestmark = pytest.mark.slow


def test_ingest_yaml_as_ray_job(repo, ray_cluster, ingest_inputs, tmp_path):
    root, roots, codec = ingest_inputs
    out = tmp_path / "shards"
    result = ray_cluster.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", ".", "--",
         "jobs/ingest_debug.yaml", f"input={roots[1]}", f"output={out}",
         f"codec.name_or_path={codec}"],
        cwd=repo, timeout=600,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "succeeded" in log.lower()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_accepted"] == 4 and summary["inputs"] == 4
    assert "clips_accepted" in log  # the summary table reached the job's log
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    by_type = {t: [r["status"] for r in rows if r["row_type"] == t] for t in ("input", "clip")}
    assert by_type == {"input": ["accepted"] * 4, "clip": ["accepted"] * 4}
    files = [(r["status"], r["reason"]) for r in rows if r["row_type"] == "file"]
    assert files and set(files) == {("accepted", "sidecar")}  # the transcripts
