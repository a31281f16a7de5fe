"""The papers' evaluation protocol: which reference voice prompts each held-out target clip.

    setting 2 (default; DeepDubber-V1, MM-MovieDubber, V2C): the reference is ANOTHER clip of
        the target's speaker; the whole target clip is generated from its script, lips, face and
        labels, with the reference as the in-context prompt before it (F5-TTS infill).
    setting 1: the reference is the target's own audio.

A prompted record is the reference's speech (cut to whole video frames) followed by the
target's: the prompt frames are given, the target frames are generated, the text is the
reference's script then the target's (as F5-TTS prompts), the lips are the reference's (or
still frames for a speech-corpus reference) then the target's, and the labels and face are the
target's. Only the generated target part is scored, against the target's speech and script.

Shape key: m = mel bins, q = codebooks, t = array frames, f = video frames.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dubforge.schema import FPS, ClipRecord

Protocol = Literal["setting1", "setting2"]


@dataclass(frozen=True)
class Pair:
    """A target clip and the clip whose speech prompts it."""

    target: ClipRecord
    target_arrays: Mapping[str, np.ndarray]
    ref: ClipRecord
    ref_arrays: Mapping[str, np.ndarray]


def pair_references(
    pool: Sequence[tuple[ClipRecord, Mapping[str, np.ndarray]]],
    targets: Sequence[tuple[ClipRecord, Mapping[str, np.ndarray]]],
    protocol: Protocol,
    speech_key: str,
) -> tuple[list[Pair], list[dict[str, str]]]:
    """A reference for each target (setting 2: the longest other clip of the same speaker in
    `pool`, which holds speech in `speech_key`), and the targets skipped, with why."""
    by_speaker: dict[str, list[tuple[ClipRecord, Mapping[str, np.ndarray]]]] = {}
    for rec, arrays in pool:
        if rec.speaker and speech_key in arrays:
            by_speaker.setdefault(rec.speaker, []).append((rec, arrays))
    pairs, skipped = [], []
    for rec, arrays in targets:
        if protocol == "setting1":
            pairs.append(Pair(rec, arrays, rec, arrays))
            continue
        others = [(r, a) for r, a in by_speaker.get(rec.speaker or "", []) if r.key != rec.key]
        if not others:
            who = rec.speaker or "an unknown speaker"
            skipped.append({"key": rec.key, "reason": f"no other clip of {who} for setting 2"})
            continue
        ref, ref_arrays = max(others, key=lambda ra: (ra[0].duration, ra[0].key))
        pairs.append(Pair(rec, arrays, ref, ref_arrays))
    return pairs, skipped


def prompted(
    pair: Pair, speech_key: str, bg_key: str, frame_rate: float
) -> tuple[ClipRecord, dict[str, np.ndarray], float]:
    """(record, arrays, prompt seconds) of the reference followed by the target, for a space
    that reads `speech_key` / `bg_key` arrays at `frame_rate`. The prompt is cut to whole video
    frames so that lips and latents change clips at the same instant."""
    ref, tgt = pair.ref, pair.target
    prompt_frames = math.floor(ref.duration * FPS + 1e-6)
    seconds = prompt_frames / FPS
    pad = round(seconds * frame_rate)
    arrays: dict[str, np.ndarray] = {}
    if speech_key in pair.target_arrays and speech_key in pair.ref_arrays:
        head = np.asarray(pair.ref_arrays[speech_key])[..., :pad]  # head: [m or q, t]
        arrays[speech_key] = np.concatenate([head, pair.target_arrays[speech_key]], axis=-1)
    if bg_key in pair.target_arrays:  # generated whole; under the prompt, the quietest value
        value = np.asarray(pair.target_arrays[bg_key])
        fill = value.min() if bg_key.endswith(".mel") else 0
        head = np.full((*value.shape[:-1], pad), fill, dtype=value.dtype)
        arrays[bg_key] = np.concatenate([head, value], axis=-1)
    if "lips" in pair.target_arrays:
        lips = np.asarray(pair.target_arrays["lips"])  # lips: [f, 96, 96]
        ref_lips = pair.ref_arrays.get("lips")
        if ref_lips is not None and len(ref_lips) >= prompt_frames:
            head = np.asarray(ref_lips)[:prompt_frames]
        else:  # a speech-corpus reference has no face: still frames of the target's mouth
            head = np.repeat(lips[:1], prompt_frames, axis=0)
        arrays["lips"] = np.concatenate([head, lips])
        if "face" in pair.target_arrays:
            arrays["face"] = np.asarray(pair.target_arrays["face"])
    record = dataclasses.replace(
        tgt, text=f"{ref.text} {tgt.text}".strip(), start=max(0.0, tgt.start - seconds)
    )
    return record, arrays, seconds
