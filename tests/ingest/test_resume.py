"""Killing the ingest job midway and running it again yields exactly an uninterrupted run's
clips: no duplicates, none missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from dubforge.ingest.shards import read_shard
from tests.conftest import REPO, VENV_BIN

pytestmark = pytest.mark.slow


def _ingest(roots: list[str], out: Path, codec: Path, env: dict) -> subprocess.Popen:
    cmd = [str(VENV_BIN / "dubforge"), "ingest", str(REPO / "jobs/ingest.yaml"),
           f"input={','.join(roots)}", f"output={out}", f"codec.name_or_path={codec}",
           "codec.mel=null", "num_cpus=4"]  # as the reference run  # fmt: skip
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _kill_tree(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL the job and every Ray process it started (found by their temp dir)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already
    proc.wait(timeout=30)
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) or marker in str(p.info["environ"]):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _clips(out: Path) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    samples = [s for p in sorted((out / "shards").glob("*/*.tar")) for s in read_shard(p)]
    by_key = {s.key: (s.meta, s.arrays) for s in samples}
    assert len(by_key) == len(samples), "a clip was written twice"
    return by_key


def _manifest(out: Path) -> list[tuple]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return sorted(
        (r["input_uri"], r["row_type"], r["clip_no"], r["status"], r["reason"]) for r in rows
    )


def test_killed_run_resumes_to_the_uninterrupted_result(ingest_inputs, ingested, tmp_path):
    root, roots, codec = ingest_inputs
    out = tmp_path / "out"
    marker = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # AF_UNIX socket paths are short
    env = {**os.environ, "RAY_TMPDIR": marker, "DUBFORGE_WORKSPACE": str(tmp_path / "ws")}
    env.pop("RAY_ADDRESS", None)
    proc = _ingest(roots, out, codec, env)
    deadline = time.monotonic() + 400
    parts = out / "manifest_parts"
    while not (parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 2):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no unit finished in time"
        time.sleep(0.2)
    _kill_tree(proc, marker)
    finished = len(list(parts.glob("*.parquet")))
    assert not (out / "manifest.parquet").exists()  # it really died midway
    assert finished < ingested[2]["inputs"]

    rerun = _ingest(roots, out, codec, env)
    log, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, log
    assert f"({finished} already done" in log

    _kill_tree(rerun, marker)  # a finished run leaves nothing behind; make sure
    shutil.rmtree(marker, ignore_errors=True)
    reference = root / "out"
    assert _manifest(out) == _manifest(reference)
    got, want = _clips(out), _clips(reference)
    assert sorted(got) == sorted(want)
    for key, (meta, arrays) in want.items():
        g_meta, g_arrays = got[key]
        assert g_meta == meta
        assert sorted(g_arrays) == sorted(arrays)
        for name, arr in arrays.items():
            assert g_arrays[name].shape == arr.shape, (key, name)
            if name.endswith("codes"):  # EnCodec in a batch differs from alone in a few frames
                assert (g_arrays[name] == arr).mean() > 0.98, (key, name)
            else:
                np.testing.assert_array_equal(g_arrays[name], arr, err_msg=f"{key} {name}")
