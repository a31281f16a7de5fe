"""Ingest into a remote URI: units are pushed as they finish, and resume reads the remote."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from dubforge import storage
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.pipeline import run

pytestmark = pytest.mark.slow


def _ls(remote: pafs.FileSystem, path: str) -> list[str]:
    sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sorted(i.path for i in remote.get_file_info(sel) if i.type == pafs.FileType.File)


def test_remote_output_and_resume(ingest_inputs, tmp_path, monkeypatch):
    root, roots, codec = ingest_inputs
    remote = pafs._MockFileSystem()  # an in-memory pyarrow filesystem standing for s3://
    local_resolve = storage.resolve
    monkeypatch.setattr(
        storage, "resolve",
        lambda p: (remote, p.split("://", 1)[1]) if p.startswith("s3://") else local_resolve(p),
    )  # fmt: skip
    monkeypatch.setenv("DUBFORGE_WORKSPACE", str(tmp_path / "ws"))
    cfg = IngestConfig(input=[roots[1]], output="s3://bucket/shards", num_cpus=4,
                       codec={"name_or_path": str(codec)}, speech_unit=2)  # fmt: skip
    first = run(cfg)
    files = _ls(remote, "bucket/shards")
    parts = [f for f in files if "/manifest_parts/" in f]
    assert len(parts) == 2 and first["clips_accepted"] == 4  # 4 utterances, 2 per unit
    assert "bucket/shards/manifest.parquet" in files and "bucket/shards/summary.json" in files
    assert len([f for f in files if f.endswith(".tar")]) == 2
    staging = list((tmp_path / "ws" / "staging").glob("ingest-*/shards/*/*.tar"))
    assert staging == []  # pushed units leave no local copy

    # an interrupted run: one unit's marker is missing and a stray shard is left over
    unit = parts[0].rsplit("/", 1)[1].removesuffix(".parquet")
    remote.delete_file(parts[0])
    with remote.open_output_stream(f"bucket/shards/shards/{unit}-00009.tar") as f:
        f.write(b"half")
    again = run(cfg)
    assert again["this_run"]["inputs"] == 2 and again["clips_accepted"] == 4
    assert _ls(remote, "bucket/shards") == files  # the stray shard is gone, the unit redone
    with remote.open_input_stream("bucket/shards/manifest.parquet") as f:
        rows = pq.read_table(io.BytesIO(f.read())).to_pylist()
    assert sum(r["status"] == "accepted" and r["row_type"] == "clip" for r in rows) == 4


def test_too_few_cpus_for_the_actor_pools_is_a_config_error():
    with pytest.raises(ValueError, match="num_cpus=2 cannot hold the actor pools"):
        IngestConfig(input=["x"], output="y", codec={"name_or_path": "c"}, num_cpus=2)
    cfg = IngestConfig(input=["x"], output="y", codec={"name_or_path": "c"}, num_cpus=3,
                       faces={"enabled": False})  # fmt: skip
    assert cfg.min_cpus() == 3
