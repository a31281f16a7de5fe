"""Units of work and the per-unit plan: probe every input, find its clips, record rejections.

A unit is one movie (or audio-only media file), or up to `speech_unit` utterances of one
speaker. Units are what resume
works on: a unit's shards and its manifest part are committed together, so a rerun redoes an
interrupted unit whole and skips finished ones.

`plan_unit` turns a unit into rows, one per input (clip_no -1) and one per clip; each row is a
plain dict carried through the Ray Data stages in a single object column.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dubforge import storage
from dubforge.ingest.config import IngestConfig
from dubforge.ingest.labels import LabelError, labels_for, parse_labels
from dubforge.ingest.probe import MediaError, ProbeLimits, check, probe, verify_decode
from dubforge.ingest.records import ClipSpec, MediaInput, Rejection
from dubforge.ingest.segment import SegmentConfig, segment
from dubforge.ingest.split import assign_split
from dubforge.ingest.subtitles import DroppedCue, SubtitleError, Subtitles, parse
from dubforge.schema import VIDEO_TASKS

INPUT_CACHE = Path(tempfile.gettempdir()) / "dubforge-inputs"


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
    units = [Unit(i.input_id, (i,)) for i in inputs if i.kind != "speech"]
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


def _row(unit: str, inp: MediaInput, split: str, **kw: Any) -> dict[str, Any]:
    return {
        "unit": unit,
        "input": inp.to_dict(),
        "input_id": inp.input_id,
        "clip_no": -1,
        "row_type": "input",
        "status": "pending",
        "reason": "",
        "detail": "",
        "clip": None,
        "split": split,
        "kind": inp.kind,
        **kw,
    }


def _reject(row: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    return {**row, "status": "rejected", "reason": reason, "detail": detail[:1000]}


def unexpected(row: dict[str, Any], stage: str, e: BaseException) -> dict[str, Any]:
    """The row rejected for an exception nobody expected (a bug or a broken environment, not
    bad media): reason `<stage>_error`, flagged so the job's error budget counts it."""
    for key in ("audio", "speech", "background", "frames"):
        row.pop(key, None)
    out = _reject(row, f"{stage}_error", f"{type(e).__name__}: {e}")
    out["unexpected"] = True
    return out


def _limits(cfg: IngestConfig) -> ProbeLimits:
    t = cfg.timeouts
    return ProbeLimits(
        probe_timeout=t.probe, decode_timeout=t.decode, decode_per_second=t.decode_per_second
    )


def _media(inp: MediaInput, cfg: IngestConfig) -> tuple[Path, Any, str]:
    """(local path, probe info, kind): "unknown" inputs become movie or audio by content; a
    movie without a video stream is audio-only media."""
    try:
        path = storage.localize(inp.uri, INPUT_CACHE)
    except OSError as e:  # includes FileNotFoundError
        raise MediaError(
            "missing_file", f"{inp.uri}: {e} (moved or deleted during the run?)"
        ) from e
    limits = _limits(cfg)
    info = probe(path, timeout=limits.probe_timeout)
    kind = inp.kind
    if kind in ("movie", "unknown"):
        kind = "movie" if info.has_video else "audio"
    check(info, need_video=kind == "movie", limits=limits)
    verify_decode(path, info, limits)
    return path, info, kind


def _read_subtitles(inp: MediaInput) -> Subtitles:
    """Parse the input's subtitles; unreadable files raise SubtitleError too."""
    try:
        filesystem, p = storage.resolve(inp.subtitles or "")
        with filesystem.open_input_stream(p) as f:
            data = f.read()
    except OSError as e:
        raise SubtitleError("subtitles_unreadable", f"{inp.subtitles}: {e}") from e
    return parse(data, inp.subtitles or "")


def _clips(
    inp: MediaInput, kind: str, path: Path, info: Any, cfg: IngestConfig
) -> tuple[list[ClipSpec], list, tuple[DroppedCue, ...], str]:
    """Clips from the subtitles (movies fall back to voice activity when there are none or
    they are broken), the spans that made no clip, the dropped cues, and a note."""
    seg = SegmentConfig(**cfg.segment.model_dump())
    note = ""
    if inp.subtitles:
        try:
            subs = _read_subtitles(inp)
            return (*segment(inp.input_id, subs.cues, info.duration, seg), subs.dropped_cues, note)
        except SubtitleError as e:
            if kind == "audio":
                raise
            note = f"{e.reason}: {e.detail}; segmented by voice activity"
    elif kind == "audio":
        raise MediaError(
            "no_transcript", "audio-only media needs subtitles or a transcript (.txt/.csv)"
        )
    from dubforge.ingest.vad import VoiceActivity

    cues = VoiceActivity().cues(path, info.duration, timeout=cfg.timeouts.decode)
    clips, rejected = segment(inp.input_id, cues, info.duration, seg, transcribed=False)
    return clips, rejected, (), note


def _labels(inp: MediaInput) -> tuple[list[dict], str]:
    if not inp.labels:
        return [], ""
    try:
        filesystem, p = storage.resolve(inp.labels)
        with filesystem.open_input_stream(p) as f:
            return parse_labels(f.read(), inp.labels), ""
    except (LabelError, OSError, ValueError) as e:
        return [], f"labels ignored: {e}"


def _input_rows(base: dict[str, Any], inp: MediaInput, cfg: IngestConfig) -> list[dict[str, Any]]:
    """The input's row and its clip and cue rows; MediaError/SubtitleError reject the input."""
    path, info, kind = _media(inp, cfg)
    media = {**asdict(info), "path": str(path)}
    base = {**base, "kind": kind, "media": media}
    if kind == "speech":
        if not inp.transcript:
            raise MediaError("no_transcript", "no .txt or metadata.csv row")
        # the whole file, cut to whole video frames: codes are then exactly 3 per frame
        end = math.floor(info.duration * cfg.segment.fps + 1e-9) / cfg.segment.fps
        clips, rejected, dropped, note = (
            [ClipSpec(inp.input_id, 0, 0.0, end, inp.transcript)],
            [],
            (),
            "",
        )
    else:
        clips, rejected, dropped, note = _clips(inp, kind, path, info, cfg)
    labels, label_note = _labels(inp)
    notes = [note, label_note]
    if kind != "movie":
        absent = sorted(VIDEO_TASKS)
        notes.append(f"audio only: no video, so the video tasks {absent} are absent")
    tasks = cfg.movie_tasks if kind == "movie" else cfg.speech_tasks
    rows = [{**base, "status": "accepted", "detail": "; ".join(n for n in notes if n)}]
    for c in clips:
        spec = replace(c, labels=labels_for(c.start, c.end, labels))
        rows.append(
            {
                **base,
                "row_type": "clip",
                "clip_no": c.clip_no,
                "clip": spec.to_dict(),
                "tasks": tuple(tasks),
            }
        )
    cue = {**base, "row_type": "cue", "status": "rejected"}
    for r in rejected:
        rows.append(
            {
                **cue,
                "clip": {"start": r.start, "end": r.end, "text": r.text},
                "reason": r.reason,
                "detail": f"cues {list(r.cues)}",
            }
        )
    for d in dropped:
        rows.append(
            {
                **cue,
                "clip": {"start": d.start, "end": d.end, "text": d.text},
                "reason": d.reason,
                "detail": f"cue {d.index}: {d.text[:200]}",
            }
        )
    return rows


def plan_unit(unit: dict[str, Any], cfg: IngestConfig) -> list[dict[str, Any]]:
    """Rows for one unit; every row carries `unit_total` so the writer knows when it is done.
    Nothing raised while planning one input escapes: it becomes that input's rejection."""
    u = Unit.from_dict(unit)
    rows: list[dict[str, Any]] = []
    for inp in u.inputs:
        split = assign_split(
            inp.split_id,
            fractions=cfg.split.fractions,
            pinned=cfg.split.pinned,
            salt=cfg.split.salt,
        )
        base = _row(u.name, inp, split)
        try:
            rows += _input_rows(base, inp, cfg)
        except Rejection as e:
            rows.append(_reject(base, e.reason, e.detail))
        except Exception as e:  # noqa: BLE001 - one input must not end the run
            rows.append(unexpected(base, "plan", e))
    for row in rows:
        row["unit_total"] = len(rows)
    return rows
