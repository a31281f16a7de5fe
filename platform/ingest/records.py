"""Typed records that ingest stages pass along and write: inputs, clips, manifest rows.

Times are seconds from the start of the source media. Records are frozen; change them with
`dataclasses.replace`. Every record carries `SCHEMA_VERSION`, and `from_dict` refuses versions it
does not know, so a reader never silently misreads a newer writer's output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("accepted", "rejected")
SCENE_TYPES = ("dialogue", "monologue", "narration", "unknown")


class Rejection(ValueError):
    """An input or clip that cannot be used: `reason` is its manifest reason, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SchemaError(ValueError):
    """A record written by an unknown schema version, or missing required fields."""


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
    """One discovered input: a movie with its sidecars, or one utterance of a speech corpus."""

    uri: str
    kind: str  # "movie" | "speech"
    size: int
    subtitles: str | None = None
    labels: str | None = None
    stems: dict[str, str] | None = None  # {"speech": uri, "background": uri} when delivered
    transcript: str | None = None  # speech corpora: the utterance's text
    speaker: str | None = None
    schema_version: int = SCHEMA_VERSION

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
    """One row of manifest.parquet: an input (clip_no = -1) or a clip, accepted or rejected."""

    input_uri: str
    input_id: str
    clip_no: int
    status: str
    reason: str = ""
    detail: str = ""
    shard: str = ""
    start: float = 0.0
    end: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.status == "rejected" and not self.reason:
            raise ValueError("a rejected row needs a reason")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestRow:
        return _from_dict(cls, d, "ManifestRow")
