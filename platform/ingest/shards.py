"""WebDataset shards: size-bounded tar files written by webdataset's own `TarWriter` (the
format's reference writer), each sample's members contiguous, an index per shard (sample keys
and offsets, sample count, byte size, sha256), and a reader that refuses what Ray Data would
silently misread.

Member names are `<key>.<field>` where the key is `<input_id>/<clip_no>` and holds no dot (Ray
Data's reader cuts the key at the first dot: `a.b0` and `a.b1` would merge into one sample) and
fields are `json` or `<name>.npy` (e.g. `speech.codes.npy`). A sample's members are written
back to back: Ray Data silently corrupts rows whose keys are interleaved (ray-project/ray#44068).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from webdataset import TarWriter


class ShardError(ValueError):
    """A shard that breaks the layout contract (interleaved keys, dotted keys, bad members)."""


@dataclass(frozen=True)
class Sample:
    """One record: the clip's JSON metadata and its arrays by field name."""

    key: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def members(self) -> list[tuple[str, bytes]]:
        if "." in self.key:
            raise ShardError(f"sample key {self.key!r} contains a dot")
        out = [(f"{self.key}.json", json.dumps(self.meta, sort_keys=True).encode())]
        for name, arr in self.arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            out.append((f"{self.key}.{name}.npy", buf.getvalue()))
        return out


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes samples to `<folder>/<prefix>-NNNNN.tar`, starting a new shard when the current
    one would pass `max_bytes` or `max_samples`. Shards are written under a `.tmp` name and
    renamed by `close()`, so a crash never leaves a shard that looks finished."""

    def __init__(self, folder: Path, prefix: str, max_bytes: int, max_samples: int) -> None:
        self.folder, self.prefix = folder, prefix
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.done: list[str] = []
        self._tar: TarWriter | None = None
        self._index: list[dict[str, Any]] = []
        self._bytes = 0
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def current(self) -> str:
        return f"{self.prefix}-{len(self.done):05d}.tar"

    def write(self, sample: Sample) -> str:
        """Append a sample; returns the name of the shard it went to."""
        members = sample.members()
        size = sum(512 + -(-len(d) // 512) * 512 for _, d in members)
        full = self._bytes + size > self.max_bytes or len(self._index) >= self.max_samples
        if self._tar is not None and self._index and full:
            self._finish()
        if self._tar is None:
            # fixed mtime and owner: the same input gives the same bytes
            self._tar = TarWriter(
                str(self.folder / (self.current + ".tmp")),
                encoder=False,
                mtime=0,
                mode=0o644,
                user="",
                group="",
            )
        offset = self._tar.tarstream.offset
        fields = {name.removeprefix(sample.key + "."): data for name, data in members}
        self._tar.write({"__key__": sample.key, **fields})
        end = self._tar.tarstream.offset
        self._index.append({"key": sample.key, "offset": offset, "size": end - offset})
        self._bytes += size
        return self.current

    def _finish(self) -> None:
        assert self._tar is not None
        self._tar.close()
        name = self.current
        tmp = self.folder / (name + ".tmp")
        index = {
            "shard": name,
            "samples": self._index,
            "count": len(self._index),
            "bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        }
        (self.folder / (name.removesuffix(".tar") + ".index.json")).write_text(json.dumps(index))
        os.replace(self.folder / (name + ".tmp"), self.folder / name)
        self.done.append(name)
        self._tar, self._index, self._bytes = None, [], 0

    def close(self) -> list[str]:
        """Finish the open shard; returns every shard name written."""
        if self._tar is not None:
            self._finish()
        return list(self.done)


def read_shard(path: str | Path) -> Iterator[Sample]:
    """Samples of a shard in order, checking the layout contract (raises ShardError)."""
    seen: set[str] = set()
    current: str | None = None
    meta: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)
                key_end = base[-1].find(".")
                if key_end <= 0:
                    raise ShardError(f"{path}: member {info.name!r} has no <key>.<field> name")
                prefix = f"{base[0]}/" if len(base) == 2 else ""
                key, field = prefix + base[-1][:key_end], base[-1][key_end + 1 :]
                if key != current:
                    if current is not None:
                        yield _sample(path, current, meta, arrays)
                    if key in seen:
                        raise ShardError(f"{path}: members of {key!r} are not contiguous")
                    seen.add(key)
                    current, meta, arrays = key, None, {}
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if field == "json":
                    meta = json.loads(data)
                elif field.endswith(".npy"):
                    arrays[field.removesuffix(".npy")] = np.load(
                        io.BytesIO(data), allow_pickle=False
                    )
                else:
                    raise ShardError(f"{path}: unexpected member {info.name!r}")
    except tarfile.TarError as e:
        raise ShardError(f"{path}: not a readable tar ({e})") from None
    if current is not None:
        yield _sample(path, current, meta, arrays)


def _sample(path: str | Path, key: str, meta: dict | None, arrays: dict) -> Sample:
    if meta is None:
        raise ShardError(f"{path}: sample {key!r} has no json member")
    return Sample(key, meta, arrays)
