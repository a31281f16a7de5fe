"""Paths that may be URIs: local folders, file://, s3://, gs://, hdfs:// through pyarrow.fs.

Jobs write into a local folder; when their output is remote they write to a staging folder and
upload it when done, so a half-written output never appears at the destination.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from pyarrow import fs as pafs


def is_uri(path: str) -> bool:
    return "://" in path


def is_local(path: str) -> bool:
    """True for plain paths and file:// URIs."""
    return not is_uri(path) or path.startswith("file://")


def local_path(path: str) -> Path:
    """The local filesystem path of a plain path or a file:// URI."""
    if not is_local(path):
        raise ValueError(f"{path} is not a local path")
    if path.startswith("file://"):
        _, p = pafs.FileSystem.from_uri(path)
        return Path(p)
    return Path(path).expanduser().resolve()


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or any URI pyarrow understands."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        raise ValueError(f"cannot open {path}: {e}") from e


def exists(path: str) -> bool:
    filesystem, p = resolve(path)
    return filesystem.get_file_info(p).type != pafs.FileType.NotFound


def read_text(path: str) -> str:
    filesystem, p = resolve(path)
    with filesystem.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def upload(local_dir: Path, dest: str) -> None:
    """Copy a local folder's contents to `dest` (folder or URI)."""
    filesystem, p = resolve(dest)
    filesystem.create_dir(p, recursive=True)
    pafs.copy_files(str(local_dir), p, pafs.LocalFileSystem(), filesystem, use_threads=True)


@contextmanager
def output_dir(dest: str) -> Iterator[Path]:
    """A local folder to write `dest` into: the folder itself when local, else a staging folder
    uploaded to `dest` once the block finishes without an error."""
    if is_local(dest):
        path = local_path(dest)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    staging = Path(tempfile.mkdtemp(prefix="dubforge-stage-"))
    try:
        yield staging
        upload(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def localize(uri: str, cache_dir: Path) -> Path:
    """A local path for `uri`: the file itself when local, else a copy in `cache_dir` (tools like
    ffmpeg read local files only)."""
    if is_local(uri):
        return local_path(uri)
    filesystem, path = resolve(uri)
    dest = cache_dir / path.lstrip("/")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with filesystem.open_input_stream(path) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(dest)
    return dest
