"""Collects finished rows per unit; when a unit is complete, writes its shards and then its
manifest part (the part is the unit's completion marker, written last and renamed into place).

Shards go to `shards/<split>/<unit>-NNNNN.tar`, so a glob selects a split. Every clip is
built into a `ClipRecord` and checked with its arrays before it is written; a clip that fails
the contract, or whose write fails, is a rejected manifest row, not a crash.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dubforge.ingest.records import ManifestRow, clip_key
from dubforge.ingest.shards import Sample, ShardWriter
from dubforge.schema import (
    ARRAY_SPECS,
    SPLITS,
    ClipRecord,
    CodecInfo,
    SchemaError,
    tasks_for_arrays,
)

MANIFEST_SCHEMA = pa.schema(
    [
        (f.name, {"int": pa.int64(), "float": pa.float64()}.get(f.type, pa.string()))
        for f in dataclasses.fields(ManifestRow)
    ]
)


def parts_dir(out: Path) -> Path:
    return out / "manifest_parts"


def finished_units(out: Path) -> set[str]:
    return {p.name.removesuffix(".parquet") for p in parts_dir(out).glob("*.parquet")}


def unit_of_shard(name: str) -> str:
    """The unit a shard file belongs to: `<unit>-NNNNN.tar` or its `.index.json`/`.tmp`."""
    return name.removesuffix(".tmp").rsplit("-", 1)[0]


def clean_unfinished(out: Path) -> int:
    """Remove half-written shards of units that have no manifest part; returns how many."""
    done = finished_units(out)
    removed = 0
    for p in (out / "shards").glob("**/*"):
        if p.is_file() and (p.name.endswith(".tmp") or unit_of_shard(p.name) not in done):
            p.unlink()
            removed += 1
    return removed


def _speaker(row: dict[str, Any]) -> str | None:
    """Who speaks: a speech corpus's speaker; in a movie, the labels' speaker id scoped to the
    movie (evaluation's setting 2 takes the reference voice from another clip of them)."""
    if row["kind"] == "speech":
        return row["input"].get("speaker")
    speaker_id = (row["clip"].get("labels") or {}).get("speaker_id", "unknown")
    return None if speaker_id == "unknown" else f"{row['input_id']}:{speaker_id}"


def clip_record(row: dict[str, Any]) -> ClipRecord:
    """The clip's record from its finished row (DESIGN.md "Contracts between stages")."""
    clip, inp = row["clip"], row["input"]
    # every task the stored arrays serve (a faceless movie clip still serves tts and v2a);
    # the configured movie/speech tasks chose which stems the energy filter required
    tasks = tasks_for_arrays([k for k in ARRAY_SPECS if k in row])
    return ClipRecord(
        key=clip_key(row["input_id"], clip["clip_no"]),
        movie_id=row["input_id"],
        split=row["split"],
        source=inp["uri"],
        kind=row["kind"],
        start=float(clip["start"]),
        end=float(clip["end"]),
        text=clip["text"],
        transcribed=bool(clip["transcribed"]),
        codec=CodecInfo(**row["codec"]),
        tasks=tuple(tasks),
        mel_profile=row.get("mel_profile"),
        energy_db=dict(row.get("energy_db") or {}),
        labels=dict(clip.get("labels") or {}),
        speaker=_speaker(row),
        face_coverage=row.get("face_coverage"),
        n_faces=row.get("n_faces"),
        face_fps=row.get("face_fps") if "face" in row else None,
    )


def _manifest_row(row: dict[str, Any], status: str, reason: str, detail: str, shard: str) -> dict:
    clip = row["clip"] or {}
    if row["row_type"] == "input":  # an input row spans the whole input
        clip = {"start": 0.0, "end": (row.get("media") or {}).get("duration", 0.0)}
    return ManifestRow(
        row_type=row["row_type"],
        input_uri=row["input"]["uri"],
        input_id=row["input_id"],
        clip_no=row["clip_no"],
        status=status,
        reason=reason,
        detail=detail,
        shard=shard,
        start=float(clip.get("start") or 0.0),
        end=float(clip.get("end") or 0.0),
        split=row["split"],
        kind=row["kind"],
    ).to_dict()


class UnitWriter:
    def __init__(self, out: Path, max_bytes: int, max_samples: int, face_fps: int) -> None:
        self.out, self.max_bytes, self.max_samples = out, max_bytes, max_samples
        self.face_fps = face_fps
        self.buffers: dict[str, list[dict[str, Any]]] = {}
        self.rows_written: list[dict[str, Any]] = []
        self.unexpected_units: set[str] = set()
        parts_dir(out).mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> str | None:
        """Buffer a finished row; returns the unit's name when this row completed it."""
        buf = self.buffers.setdefault(row["unit"], [])
        buf.append(row)
        if len(buf) < row["unit_total"]:
            return None
        self._commit(row["unit"], self.buffers.pop(row["unit"]))
        return row["unit"]

    def _write_clip(self, writers: dict[str, ShardWriter], row: dict[str, Any]) -> tuple:
        """(status, reason, detail, shard) of a pending clip row after writing it."""
        if "face" in row:
            row["face_fps"] = self.face_fps
        try:
            record = clip_record(row)
            arrays = {k: row[k] for k in ARRAY_SPECS if k in row}
            record.check_arrays(arrays)
        except (SchemaError, KeyError, TypeError, ValueError) as e:
            return "rejected", "invalid_record", f"{type(e).__name__}: {e}", ""
        if not record.tasks:
            return "rejected", "no_task", "its arrays serve no task", ""
        writer = writers.get(record.split)
        if writer is None:
            folder = self.out / "shards" / record.split
            writer = writers[record.split] = ShardWriter(
                folder, row["unit"], self.max_bytes, self.max_samples
            )
        shard = writer.write(Sample(record.key, record.to_dict(), arrays))
        return "accepted", "", "", f"{record.split}/{shard}"

    def _commit(self, unit: str, rows: list[dict[str, Any]]) -> None:
        order = {"input": 0, "clip": 1, "cue": 2}
        rows.sort(key=lambda r: (r["input"]["uri"], order[r["row_type"]], r["clip_no"]))
        writers: dict[str, ShardWriter] = {}
        manifest = []
        for row in rows:
            if row.get("unexpected"):
                self.unexpected_units.add(unit)
            if row["status"] == "pending" and row["row_type"] == "clip":
                try:
                    status, reason, detail, shard = self._write_clip(writers, row)
                except Exception as e:  # noqa: BLE001 - a failed write is the clip's record
                    self.unexpected_units.add(unit)
                    status, reason, detail, shard = (
                        "rejected",
                        "write_error",
                        f"{type(e).__name__}: {e}",
                        "",
                    )
            else:
                status = "accepted" if row["status"] == "pending" else row["status"]
                reason, detail, shard = row["reason"], row["detail"], ""
            manifest.append(_manifest_row(row, status, reason, detail, shard))
        for writer in writers.values():
            writer.close()
        table = pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA)
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

        sel = pafs.FileSelector(f"{self.root}/{sub}", allow_not_found=True, recursive=True)
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
        stale = [p for p in self._list("shards") if unit_of_shard(p.rsplit("/", 1)[-1]) not in done]
        for p in stale:
            self.fs.delete_file(p)
        return len(stale)

    def push_unit(self, unit: str) -> None:
        """Upload a committed unit (shards and indexes, then its part) and free the local copy."""
        for split in SPLITS:
            for p in sorted((self.staging / "shards" / split).glob(f"{unit}-*")):
                self._put(p, f"{self.root}/shards/{split}/{p.name}")
                p.unlink()
        part = parts_dir(self.staging) / f"{unit}.parquet"
        self._put(part, f"{self.root}/manifest_parts/{part.name}")

    def push_summary(self) -> None:
        for name in ("manifest.parquet", "summary.json"):
            self._put(self.staging / name, f"{self.root}/{name}")
