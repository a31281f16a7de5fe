"""Subtitle cues -> utterance clips: drop what lies outside the media, merge short neighbours,
split long cues, pad the edges without running into the next clip."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dubforge.ingest.records import ClipSpec, Cue


@dataclass(frozen=True)
class SegmentConfig:
    min_duration: float = 1.0  # shorter clips (after merging) are rejected
    max_duration: float = 12.0  # longer cues are split
    merge_gap: float = 0.4  # neighbours closer than this merge while the clip is too short
    pad: float = 0.15  # seconds added on each side, never past a neighbour's midpoint
    fps: int = 25  # clip edges snap to video frames, so codec/mel frames are whole multiples


@dataclass(frozen=True)
class Rejected:
    """A span that did not become a clip, with its manifest reason."""

    start: float
    end: float
    text: str
    reason: str
    cues: tuple[int, ...]


def _merge(cues: list[Cue], cfg: SegmentConfig) -> list[list[Cue]]:
    groups: list[list[Cue]] = []
    for cue in cues:
        if groups:
            g = groups[-1]
            short = g[-1].end - g[0].start < cfg.min_duration
            close = cue.start - g[-1].end <= cfg.merge_gap
            fits = cue.end - g[0].start <= cfg.max_duration
            if short and close and fits:
                g.append(cue)
                continue
        groups.append([cue])
    return groups


def _split(
    start: float, end: float, text: str, max_duration: float
) -> list[tuple[float, float, str]]:
    """Cut [start, end] into equal parts no longer than max_duration; words go to the part where
    their character position falls (speech rate assumed even within a cue)."""
    n = math.ceil((end - start) / max_duration - 1e-9)
    if n <= 1:
        return [(start, end, text)]
    words = text.split()
    total = max(sum(len(w) + 1 for w in words), 1)
    parts: list[list[str]] = [[] for _ in range(n)]
    pos = 0
    for w in words:
        parts[min(n - 1, int(n * (pos + len(w) / 2) / total))].append(w)
        pos += len(w) + 1
    step = (end - start) / n
    return [(start + k * step, start + (k + 1) * step, " ".join(parts[k])) for k in range(n)]


def segment(
    input_id: str,
    cues: list[Cue] | tuple[Cue, ...],
    duration: float,
    cfg: SegmentConfig,
    transcribed: bool = True,
) -> tuple[list[ClipSpec], list[Rejected]]:
    """Clips (numbered from 0 in time order) and rejected spans for one input; `transcribed`
    is False for cues from voice activity, which carry no text."""
    rejected: list[Rejected] = []
    kept: list[Cue] = []
    for cue in sorted(cues, key=lambda c: (c.start, c.end)):
        if cue.start >= duration:
            rejected.append(
                Rejected(cue.start, cue.end, cue.text, "cue_beyond_media", (cue.index,))
            )
        else:
            kept.append(replace(cue, end=min(cue.end, duration)))
    spans: list[tuple[float, float, str, tuple[int, ...]]] = []
    for g in _merge(kept, cfg):
        text = " ".join(c.text for c in g)
        ids = tuple(c.index for c in g)
        for a, b, t in _split(g[0].start, g[-1].end, text, cfg.max_duration):
            if b - a < cfg.min_duration:
                rejected.append(Rejected(a, b, t, "clip_too_short", ids))
            else:
                spans.append((a, b, t, ids))
    clips = []
    for k, (a, b, t, ids) in enumerate(spans):
        lo = 0.0 if k == 0 else max((spans[k - 1][1] + a) / 2, spans[k - 1][1])
        hi = duration if k == len(spans) - 1 else min((b + spans[k + 1][0]) / 2, spans[k + 1][0])
        start = max(lo, min(a, a - cfg.pad))
        end = min(hi, max(b, b + cfg.pad))
        # the same rounding on both sides of a shared boundary keeps neighbours from overlapping
        start = round(start * cfg.fps) / cfg.fps
        end = min(round(end * cfg.fps), math.floor(duration * cfg.fps + 1e-9)) / cfg.fps
        clips.append(ClipSpec(input_id, k, round(start, 3), round(end, 3), t, transcribed, ids))
    return clips, rejected
