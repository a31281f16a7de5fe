"""Paths and URIs through pyarrow filesystems; remote outputs are staged then uploaded."""

from __future__ import annotations

import pytest
from pyarrow import fs as pafs

from dubforge import storage


def test_local_paths_and_file_uris(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    for path in (str(tmp_path / "a.txt"), f"file://{tmp_path}/a.txt"):
        assert storage.is_local(path)
        assert storage.exists(path)
        assert storage.read_text(path) == "hello"
    assert storage.local_path(f"file://{tmp_path}/a.txt") == tmp_path / "a.txt"
    assert not storage.exists(str(tmp_path / "missing"))
    assert not storage.is_local("s3://bucket/x") and storage.is_uri("gs://b/x")


def test_output_dir_local_writes_in_place(tmp_path):
    with storage.output_dir(f"file://{tmp_path}/out") as root:
        (root / "x.txt").write_text("1")
    assert (tmp_path / "out" / "x.txt").read_text() == "1"


def test_output_dir_remote_uploads_only_on_success(monkeypatch):
    remote = pafs._MockFileSystem()  # an in-memory pyarrow filesystem standing for s3://
    monkeypatch.setattr(storage, "resolve", lambda path: (remote, path.split("://", 1)[1]))
    with storage.output_dir("s3://bucket/corpus") as root:
        (root / "sub").mkdir()
        (root / "sub" / "a.bin").write_bytes(b"abc")
        staging = root
    assert not staging.exists()
    with remote.open_input_stream("bucket/corpus/sub/a.bin") as f:
        assert f.read() == b"abc"
    with pytest.raises(RuntimeError):
        with storage.output_dir("s3://bucket/failed") as root:
            (root / "half.bin").write_bytes(b"x")
            raise RuntimeError("job failed")
    assert remote.get_file_info("bucket/failed/half.bin").type == pafs.FileType.NotFound


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot open nosuch://x"):
        storage.resolve("nosuch://x")
