"""Collects finished rows per unit; when a unit is complete, writes its shards and then its
manifest part (the part is the unit's completion marker, written last and renamed into place)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dubforge.ingest.records import SCHEMA_VERSION, ManifestRow, clip_key
from dubforge.ingest.shards import Sample, ShardWriter

ARRAYS = ("speech.codes", "bg.codes", "speech.mel", "bg.mel", "lips", "face")


def parts_dir(out: Path) -> Path:
    return out / "manifest_parts"


def finished_units(out: Path) -> set[str]:
    return {p.name.removesuffix(".parquet") for p in parts_dir(out).glob("*.parquet")}


def clean_unfinished(out: Path) -> int:
    """Remove half-written shards of units that have no manifest part; returns how many."""
    done = finished_units(out)
    removed = 0
    for p in (out / "shards").glob("*"):
        unit = p.name.rsplit("-", 1)[0]
        if p.name.endswith(".tmp") or unit not in done:
            p.unlink()
            removed += 1
    return removed


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """The sample's JSON: what DESIGN.md's clip record promises, flat and self-describing."""
    clip, inp = row["clip"], row["input"]
    return {
        "schema_version": SCHEMA_VERSION,
        "key": clip_key(row["input_id"], clip["clip_no"]),
        "movie_id": row["input_id"],
        "source": inp["uri"],
        "kind": inp["kind"],
        "start": clip["start"],
        "end": clip["end"],
        "text": clip["text"],
        "transcribed": clip["transcribed"],
        "language": "und",
        "fps": 25,
        "codec": row.get("codec"),
        "energy_db": row.get("energy_db"),
        "labels": clip.get("labels") or {},
        "speaker": inp.get("speaker"),
        "face_coverage": row.get("face_coverage"),
        "n_faces": row.get("n_faces"),
        "face_fps": row.get("face_fps"),
    }


class UnitWriter:
    def __init__(self, out: Path, max_bytes: int, max_samples: int, face_fps: int) -> None:
        self.out, self.max_bytes, self.max_samples, self.face_fps = (
            out,
            max_bytes,
            max_samples,
            face_fps,
        )
        self.buffers: dict[str, list[dict[str, Any]]] = {}
        self.rows_written: list[dict[str, Any]] = []
        parts_dir(out).mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> str | None:
        """Buffer a finished row; returns the unit's name when this row completed it."""
        buf = self.buffers.setdefault(row["unit"], [])
        buf.append(row)
        if len(buf) < row["unit_total"]:
            return None
        self._commit(row["unit"], self.buffers.pop(row["unit"]))
        return row["unit"]

    def _commit(self, unit: str, rows: list[dict[str, Any]]) -> None:
        rows.sort(key=lambda r: (r["input"]["uri"], r["clip_no"] if r["clip_no"] >= 0 else -1))
        writer = ShardWriter(self.out / "shards", unit, self.max_bytes, self.max_samples)
        manifest = []
        for row in rows:
            inp, clip = row["input"], row["clip"] or {}
            shard = ""
            if row["status"] == "pending":
                meta = {**_record(row), "face_fps": self.face_fps if "face" in row else None}
                arrays = {k: row[k] for k in ARRAYS if k in row}
                shard = writer.write(Sample(meta["key"], meta, arrays))
                status = "accepted"
            else:
                status = row["status"]
            if row["clip_no"] == -1:  # an input row spans the whole input
                clip = {"start": 0.0, "end": (row.get("media") or {}).get("duration", 0.0)}
            manifest.append(
                ManifestRow(
                    input_uri=inp["uri"], input_id=row["input_id"], clip_no=row["clip_no"],
                    status=status, reason=row["reason"], detail=row["detail"], shard=shard,
                    start=float(clip.get("start", 0.0)), end=float(clip.get("end", 0.0)),
                ).to_dict()
            )  # fmt: skip
        writer.close()
        table = pa.Table.from_pylist(manifest)
        tmp = parts_dir(self.out) / f"{unit}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, parts_dir(self.out) / f"{unit}.parquet")
        self.rows_written.extend(manifest)


class RemoteOutput:
    """Ingest output on a remote filesystem (s3://, gs://, ...). The job works in a local staging
    folder and pushes each unit as soon as it is committed: shards first, then the manifest part,
    so the remote copy carries the same completion markers resume reads, and local disk holds
    only units in flight."""

    def __init__(self, uri: str, staging: Path) -> None:
        from dubforge import storage

        self.uri, self.staging = uri, staging
        self.fs, self.root = storage.resolve(uri)

    def _list(self, sub: str) -> list[str]:
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(f"{self.root}/{sub}", allow_not_found=True)
        return [i.path for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]

    def _get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(remote) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def _put(self, local: Path, remote: str) -> None:
        self.fs.create_dir(remote.rsplit("/", 1)[0], recursive=True)
        with open(local, "rb") as src, self.fs.open_output_stream(remote) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # shards run to hundreds of MB: stream them

    def pull(self) -> set[str]:
        """Fresh staging with the remote's manifest parts; returns the finished units."""
        shutil.rmtree(self.staging, ignore_errors=True)
        for remote in self._list("manifest_parts"):
            if remote.endswith(".parquet"):
                self._get(remote, parts_dir(self.staging) / remote.rsplit("/", 1)[-1])
        return finished_units(self.staging)

    def clean_unfinished(self, done: set[str]) -> int:
        """Delete remote shards of units without a manifest part (an interrupted run's)."""
        stale = [
            p for p in self._list("shards") if p.rsplit("/", 1)[-1].rsplit("-", 1)[0] not in done
        ]
        for p in stale:
            self.fs.delete_file(p)
        return len(stale)

    def push_unit(self, unit: str) -> None:
        """Upload a committed unit (shards and indexes, then its part) and free the local copy."""
        for p in sorted((self.staging / "shards").glob(f"{unit}-*")):
            self._put(p, f"{self.root}/shards/{p.name}")
            p.unlink()
        part = parts_dir(self.staging) / f"{unit}.parquet"
        self._put(part, f"{self.root}/manifest_parts/{part.name}")

    def push_summary(self) -> None:
        for name in ("manifest.parquet", "summary.json"):
            self._put(self.staging / name, f"{self.root}/{name}")
