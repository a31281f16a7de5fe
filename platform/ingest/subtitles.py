"""Read SubRip (.srt) and WebVTT (.vtt) subtitles as real files come: any common encoding, CRLF,
markup, sound descriptions, empty and malformed cues."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from dubforge.ingest.records import Cue, Rejection

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_TAG = re.compile(r"<[^>]*>")  # <i>, </b>, <font ...>, <c.yellow>, <v Bob>, <00:01.000>
_ASS = re.compile(r"\{\\[^}]*\}")  # {\an8}, {\i1}
_SOUND = re.compile(r"\[[^\]]*\]|♪|♫")  # [door slams], music notes: not speech
_DASH = re.compile(r"^\s*-\s*")  # "- Who?" speaker-turn dashes


class SubtitleError(Rejection):
    """Subtitles that yield no usable cue."""


@dataclass(frozen=True)
class DroppedCue:
    """A cue block that made no cue: its position in the file, why, and what is known of it."""

    index: int
    reason: str
    start: float = 0.0
    end: float = 0.0
    text: str = ""


@dataclass(frozen=True)
class Subtitles:
    cues: tuple[Cue, ...]
    encoding: str
    dropped_cues: tuple[DroppedCue, ...] = ()

    @property
    def dropped(self) -> dict[str, int]:
        """reason -> count of cues dropped."""
        out: dict[str, int] = {}
        for d in self.dropped_cues:
            out[d.reason] = out.get(d.reason, 0) + 1
        return out


def decode_text(data: bytes) -> tuple[str, str]:
    """Bytes -> (text, encoding): BOMs first, then UTF-8, then Windows-1252 (which, like every
    8-bit code page, decodes anything; latin-1 covers its five undefined bytes)."""
    for bom, enc in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(enc), enc
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def clean_text(lines: list[str]) -> str:
    """Cue text without markup, sound descriptions, turn dashes or entity escapes, on one line."""
    out = []
    for line in lines:
        line = _ASS.sub("", _TAG.sub("", line))
        line = _DASH.sub("", html.unescape(_SOUND.sub("", line)))
        if line.strip():
            out.append(line.strip())
    return re.sub(r"\s+", " ", " ".join(out)).strip()


def parse(data: bytes, name: str = "subtitles") -> Subtitles:
    """Parse SRT or WebVTT bytes (the format is recognised from the content, not the name)."""
    text, encoding = decode_text(data)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SubtitleError("subtitles_empty", f"{name} is empty")
    cues: list[Cue] = []
    dropped: list[DroppedCue] = []
    n_blocks = 0
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.split("\n")
        timing = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timing is None:
            continue  # WEBVTT header, NOTE/STYLE/REGION blocks, stray text
        n_blocks += 1
        m = _TIMING.match(lines[timing])
        if m is None:
            dropped.append(DroppedCue(n_blocks - 1, "bad_timing", text=lines[timing][:200]))
            continue
        g = m.groups()
        start, end = _seconds(*g[:4]), _seconds(*g[4:])
        body = clean_text(lines[timing + 1 :])
        reason = "empty_text" if not body else "end_before_start" if end <= start else None
        if reason:
            dropped.append(DroppedCue(n_blocks - 1, reason, round(start, 3), round(end, 3), body))
            continue
        cues.append(Cue(round(start, 3), round(end, 3), body, index=n_blocks - 1))
    if not cues:
        what = f"none of its {n_blocks} cues is usable" if n_blocks else "it has no cue timings"
        raise SubtitleError("subtitles_unusable", f"{name}: {what}")
    cues.sort(key=lambda c: (c.start, c.end))
    return Subtitles(tuple(cues), encoding, tuple(dropped))
