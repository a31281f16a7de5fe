"""Typed records that ingest stages pass along and write: inputs, clips, manifest rows.

Times are seconds from the start of the source media. Records are frozen; change them with
`dataclasses.replace`. Every record carries `SCHEMA_VERSION`, and `from_dict` refuses versions it
does not know, so a reader never silently misreads a newer writer's output. The clip record that
leaves ingest (the shard JSON) is `dubforge.schema.ClipRecord`; these are ingest's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dubforge.schema import SCHEMA_VERSION, SPLITS, SchemaError

STATUSES = ("accepted", "rejected")
# what a manifest row stands for: a file that is no input (sidecar, orphan, not media), an
# input (one row per media file), a clip, or a subtitle cue that made no clip
ROW_TYPES = ("file", "input", "clip", "cue")
INPUT_KINDS = ("movie", "audio", "speech", "unknown")


class Rejection(ValueError):
    """An input or clip that cannot be used: `reason` is its manifest reason, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _check_version(d: dict[str, Any], kind: str) -> None:
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{kind} has schema_version {version!r}; this dubforge reads version {SCHEMA_VERSION} "
            "(re-run ingest with this version, or upgrade dubforge)"
        )


def _from_dict(cls: type, d: dict[str, Any], kind: str) -> Any:
    _check_version(d, kind)
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in d
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SchemaError(f"{kind} lacks required fields {missing}")
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class MediaInput:
    """One discovered input: a movie with its sidecars, audio-only media with subtitles or a
    transcript, one utterance of a speech corpus, or a file of unknown type that the probe
    classifies (`kind` "unknown" until then)."""

    uri: str
    kind: str  # INPUT_KINDS
    size: int
    subtitles: str | None = None
    labels: str | None = None
    stems: dict[str, str] | None = None  # {"speech": uri, "background": uri} when delivered
    transcript: str | None = None  # speech corpora: the utterance's text
    speaker: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, not {self.kind!r}")

    @property
    def split_id(self) -> str:
        """What the split is decided by: the speaker of a speech-corpus utterance (no speaker's
        voice in two splits), else the movie (every clip of a movie in one split)."""
        if self.kind == "speech":
            return f"speaker:{self.speaker or 'unknown'}"
        return f"movie:{self.input_id}"

    @property
    def input_id(self) -> str:
        """A stable id from the file name: `<parent>__<stem>` with no dots (see `clip_key`)."""
        parts = self.uri.rstrip("/").split("/")
        stem = parts[-1].rsplit(".", 1)[0]
        parent = parts[-2] if len(parts) > 1 else ""
        raw = f"{parent}__{stem}" if self.kind == "speech" else stem
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MediaInput:
        return _from_dict(cls, d, "MediaInput")


@dataclass(frozen=True)
class Cue:
    """A subtitle cue, markup stripped; `index` is its position in the file (from 0)."""

    start: float
    end: float
    text: str
    index: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class ClipSpec:
    """A clip to cut from an input: its span (padding included) and what is known about it."""

    input_id: str
    clip_no: int
    start: float
    end: float
    text: str
    transcribed: bool = True
    cues: tuple[int, ...] = ()  # the subtitle cues it was made from
    labels: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> str:
        return clip_key(self.input_id, self.clip_no)

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cues"] = list(self.cues)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipSpec:
        return _from_dict(cls, {**d, "cues": tuple(d.get("cues", ()))}, "ClipSpec")


def clip_key(input_id: str, clip_no: int) -> str:
    """The WebDataset key `<input_id>/<clip_no>`; no dots, since a dot in a key splits a sample
    into several when Ray Data reads the shard."""
    if "." in input_id:
        raise ValueError(f"input id {input_id!r} contains a dot; WebDataset keys must not")
    return f"{input_id}/{clip_no:05d}"


@dataclass(frozen=True)
class ManifestRow:
    """One row of manifest.parquet. `row_type` "file" and "input" rows stand for one file each
    (`input_uri`), so every file under an input root has exactly one such row; "clip" rows
    (clip_no >= 0) and "cue" rows (subtitle cues that made no clip, clip_no = -1) belong to an
    input. Input rows span the whole input (start 0, end = its duration)."""

    row_type: str
    input_uri: str
    input_id: str
    clip_no: int
    status: str
    reason: str = ""
    detail: str = ""
    shard: str = ""
    start: float = 0.0
    end: float = 0.0
    split: str = ""
    kind: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.row_type not in ROW_TYPES:
            raise ValueError(f"row_type must be one of {ROW_TYPES}, not {self.row_type!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status == "rejected" and not self.reason:
            raise ValueError("a rejected row needs a reason")
        if self.split and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {self.split!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestRow:
        return _from_dict(cls, d, "ManifestRow")
