"""Sidecar labels (`X.labels.json`): per-line scene type, speaker, gender, age and emotion.

The file holds {"lines": [{"start", "end", "scene_type", "speaker_id", "gender", "age",
"emotion"}, ...]}; a clip takes the labels of the line it overlaps most. Unknown or missing
values become "unknown", the value the model's label embeddings reserve for it.
"""

from __future__ import annotations

import json
from typing import Any

from dubforge.schema import SCENE_TYPES

FIELDS = ("scene_type", "speaker_id", "gender", "age", "emotion")


class LabelError(ValueError):
    """A labels file that cannot be read; the manifest records it and the input goes on
    without labels."""


def parse_labels(data: bytes, name: str = "labels") -> list[dict[str, Any]]:
    try:
        doc = json.loads(data.decode("utf-8"))
        lines = doc["lines"]
        out = []
        for ln in lines:
            start, end = float(ln["start"]), float(ln["end"])
            row = {k: str(ln.get(k) or "unknown") for k in FIELDS}
            if row["scene_type"] not in SCENE_TYPES:
                row["scene_type"] = "unknown"
            out.append({"start": start, "end": end, **row})
        return out
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LabelError(f"{name}: not a labels file ({type(e).__name__}: {e})") from None


def labels_for(start: float, end: float, lines: list[dict[str, Any]]) -> dict[str, str]:
    """The labels of the line overlapping [start, end] most; all "unknown" when none does."""
    best, best_overlap = None, 0.0
    for ln in lines:
        overlap = min(end, ln["end"]) - max(start, ln["start"])
        if overlap > best_overlap:
            best, best_overlap = ln, overlap
    return {k: (best[k] if best else "unknown") for k in FIELDS}
