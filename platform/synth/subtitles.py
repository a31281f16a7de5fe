"""SubRip and WebVTT writers in the shape real subtitle files have: wrapped lines, italics for
voice-over."""

from __future__ import annotations

import textwrap
from pathlib import Path

# A cue: (start seconds, end seconds, text, italic)
Cue = tuple[float, float, str, bool]
_MAX_CHARS = 42  # the usual broadcast limit per subtitle row


def timestamp(seconds: float, sep: str) -> str:
    """`HH:MM:SS<sep>mmm`, rounded to the millisecond (sep is "," for SRT, "." for VTT)."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _body(text: str, italic: bool) -> str:
    rows = textwrap.wrap(text, _MAX_CHARS) or [text]
    body = "\n".join(rows)
    return f"<i>{body}</i>" if italic else body


def write_srt(path: Path, cues: list[Cue]) -> None:
    blocks = [
        f"{i}\n{timestamp(a, ',')} --> {timestamp(b, ',')}\n{_body(t, it)}\n"
        for i, (a, b, t, it) in enumerate(cues, start=1)
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")


def write_vtt(path: Path, cues: list[Cue]) -> None:
    blocks = [
        f"{timestamp(a, '.')} --> {timestamp(b, '.')}\n{_body(t, it)}\n" for a, b, t, it in cues
    ]
    path.write_text("WEBVTT\n\n" + "\n".join(blocks), encoding="utf-8")
