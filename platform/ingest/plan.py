"""Units of work and the per-unit plan: probe every input, find its clips, record rejections.

A unit is one movie, or up to `speech_unit` utterances of one speaker. Units are what resume
works on: a unit's shards and its manifest part are committed together, so a rerun redoes an
interrupted unit whole and skips finished ones.

`plan_unit` turns a unit into rows, one per input (clip_no -1) and one per clip; each row is a
plain dict carried through the Ray Data stages in a single object column.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dubforge import storage
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.labels import LabelError, labels_for, parse_labels
from dubforge.ingest.probe import MediaError, ProbeLimits, check, probe, verify_decode
from dubforge.ingest.records import ClipSpec, MediaInput
from dubforge.ingest.segment import SegmentConfig, segment
from dubforge.ingest.subtitles import SubtitleError, parse

_CACHE = Path(tempfile.gettempdir()) / "dubforge-inputs"


@dataclass(frozen=True)
class Unit:
    name: str
    inputs: tuple[MediaInput, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inputs": [i.to_dict() for i in self.inputs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        return cls(d["name"], tuple(MediaInput.from_dict(i) for i in d["inputs"]))


def make_units(inputs: list[MediaInput], speech_unit: int) -> list[Unit]:
    """Movies one per unit; speech utterances grouped by speaker in chunks of `speech_unit`."""
    units = [Unit(i.input_id, (i,)) for i in inputs if i.kind == "movie"]
    by_speaker: dict[str, list[MediaInput]] = {}
    for i in inputs:
        if i.kind == "speech":
            by_speaker.setdefault(i.speaker or "unknown", []).append(i)
    for speaker, items in sorted(by_speaker.items()):
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", speaker)
        for k in range(0, len(items), speech_unit):
            units.append(
                Unit(f"speech-{safe}-{k // speech_unit:04d}", tuple(items[k : k + speech_unit]))
            )
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two inputs share the id(s) {dup}: rename one (ids come from file names)")
    return units


def _row(unit: str, inp: MediaInput, **kw: Any) -> dict[str, Any]:
    return {"unit": unit, "input": inp.to_dict(), "input_id": inp.input_id, "clip_no": -1,
            "status": "pending",
            "reason": "", "detail": "", "clip": None, **kw}  # fmt: skip


def _reject(row: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    return {**row, "status": "rejected", "reason": reason, "detail": detail}


def _media(inp: MediaInput, cfg: IngestConfig) -> tuple[Path, Any]:
    try:
        path = storage.localize(inp.uri, _CACHE)
    except OSError as e:  # includes FileNotFoundError
        raise MediaError(
            "missing_file", f"{inp.uri}: {e} (moved or deleted during the run?)"
        ) from e
    info = probe(path)
    check(info, need_video=inp.kind == "movie", limits=ProbeLimits())
    verify_decode(path, info, ProbeLimits())
    return path, info


def _movie_clips(inp: MediaInput, info: Any, cfg: IngestConfig) -> tuple[list[ClipSpec], list, str]:
    """Clips from the subtitles, or from voice activity when there are none or they are broken;
    also returns a note for the manifest."""
    seg = SegmentConfig(**cfg.segment.model_dump())
    note = ""
    if inp.subtitles:
        try:
            filesystem, p = storage.resolve(inp.subtitles)
            with filesystem.open_input_stream(p) as f:
                subs = parse(f.read(), inp.subtitles)
            return (*segment(inp.input_id, subs.cues, info.duration, seg), note)
        except SubtitleError as e:
            note = f"{e.reason}: {e.detail}; segmented by voice activity"
    from dubforge.ingest.vad import VoiceActivity

    cues = VoiceActivity().cues(storage.localize(inp.uri, _CACHE), info.duration)
    return (*segment(inp.input_id, cues, info.duration, seg, transcribed=False), note)


def _labels(inp: MediaInput) -> tuple[list[dict], str]:
    if not inp.labels:
        return [], ""
    try:
        filesystem, p = storage.resolve(inp.labels)
        with filesystem.open_input_stream(p) as f:
            return parse_labels(f.read(), inp.labels), ""
    except (LabelError, OSError) as e:
        return [], f"labels ignored: {e}"


def plan_unit(unit: dict[str, Any], cfg: IngestConfig) -> list[dict[str, Any]]:
    """Rows for one unit; every row carries `unit_total` so the writer knows when it is done."""
    u = Unit.from_dict(unit)
    rows: list[dict[str, Any]] = []
    for inp in u.inputs:
        base = _row(u.name, inp)
        try:
            path, info = _media(inp, cfg)
        except MediaError as e:
            rows.append(_reject(base, e.reason, e.detail))
            continue
        media = {**asdict(info), "path": str(path)}
        if inp.kind == "speech":
            if not inp.transcript:
                rows.append(_reject(base, "no_transcript", "no .txt or metadata.csv row"))
                continue
            # the whole file, cut to whole video frames: codes are then exactly 3 per frame
            end = math.floor(info.duration * cfg.segment.fps + 1e-9) / cfg.segment.fps
            clips, rejected, note = [ClipSpec(inp.input_id, 0, 0.0, end, inp.transcript)], [], ""
        else:
            clips, rejected, note = _movie_clips(inp, info, cfg)
        labels, label_note = _labels(inp)
        detail = "; ".join(n for n in (note, label_note) if n)
        rows.append({**base, "status": "accepted", "detail": detail, "media": media})
        for c in clips:
            spec = ClipSpec(
                **{
                    **c.to_dict(),
                    "cues": tuple(c.cues),
                    "labels": labels_for(c.start, c.end, labels),
                }
            )
            rows.append({**base, "clip_no": c.clip_no, "clip": spec.to_dict(), "media": media})
        for r in rejected:
            rows.append(
                _reject({**base, "clip_no": -2, "media": media,
                         "clip": {"start": r.start, "end": r.end, "text": r.text}},
                        r.reason, f"cues {list(r.cues)}")
            )  # fmt: skip
    for row in rows:
        row["unit_total"] = len(rows)
    return rows
